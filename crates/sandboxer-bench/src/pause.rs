//! Pause and resume latency on ext.local: `POST …/pause` and `POST
//! …/resume` through HTTP on a sandbox running a busy background process,
//! each timed from the request to the answer (the freeze is confirmed by
//! the kernel before the answer).
use std::collections::BTreeMap;

use sandboxer_api::{Command, StartProcess};

use super::*;

pub(crate) async fn pause_section(plan: &Plan, daemon: &Daemon) -> anyhow::Result<Section> {
    let client = &daemon.client;
    let (_, sbx) = client
        .create(&create_request("pause"), Some(WAIT), None)
        .await?;
    ensure!(
        sbx.state == SandboxState::Ready,
        "the sandbox is {:?}",
        sbx.state
    );
    client
        .start_process(
            &sbx.id,
            &StartProcess {
                cmd: Command::Shell("while :; do :; done".into()),
                cwd: None,
                env: BTreeMap::new(),
                tag: None,
                service: None,
            },
        )
        .await?;
    let http = load::client()?;
    let url = |what: &str| format!("{}/v1/sandboxes/{}/{what}", daemon.url, sbx.id);
    let cycles = if plan.creates < 50 { 10 } else { 100 };
    let (mut pauses, mut resumes) = (Vec::new(), Vec::new());
    for _ in 0..cycles {
        for (what, into) in [("pause", &mut pauses), ("resume", &mut resumes)] {
            let started = Instant::now();
            let r = http.post(url(what)).send().await?;
            ensure!(r.status().is_success(), "{what}: {}", r.status());
            into.push(started.elapsed());
        }
    }
    let _ = client.destroy(&sbx.id, Some(WAIT)).await;
    let (pauses, resumes) = (Samples::new(pauses), Samples::new(resumes));
    Ok(Section {
        title: "9. Pause and resume on ext.local".into(),
        note: format!(
            "{cycles} pause/resume cycles through HTTP of one sandbox whose background \
             process spins a CPU, each timed from request to answer. The pause freezes the \
             sandbox's cgroup with the kernel's freezer (as root here) and answers once the \
             kernel reports every task frozen; the state is recorded in the same request."
        ),
        rows: vec![
            Row::judged(
                "pause, p50 / p95 / p99",
                pauses.triple(),
                "p50 ≤ 20 ms",
                pauses.p50() <= Duration::from_millis(20),
            ),
            Row::judged(
                "resume, p50 / p95 / p99",
                resumes.triple(),
                "p50 ≤ 20 ms",
                resumes.p50() <= Duration::from_millis(20),
            ),
        ],
    })
}
