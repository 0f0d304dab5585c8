//! The egress proxy's cost: a 10 MB download from a loopback origin, by
//! curl inside an `egress` sandbox (through the agent's relay and the
//! daemon's proxy, plain HTTP and a CONNECT tunnel) against the same curl
//! on the host straight to the origin. curl's own `time_total` is what is
//! compared, so starting a command in the sandbox is not counted.
use std::collections::BTreeMap;

use sandboxer_api::{Command, ExecRequest};
use sandboxer_testkit::origin::{Origin, BIG};

use super::*;

/// How many downloads each way, in alternating rounds.
fn rounds(plan: &Plan) -> (usize, usize) {
    if plan.creates < 50 {
        (1, 3)
    } else {
        (8, 5)
    }
}

/// A bash loop of `n` curls of `url` (with `extra` flags), one `time_total`
/// per line.
fn curls(n: usize, flags: &str, url: &str) -> String {
    format!(
        "for i in $(seq {n}); do curl -sS -m 60 {flags} -o /dev/null -w '%{{time_total}}\\n' {url} || exit 1; done"
    )
}

fn parse_times(out: &str) -> anyhow::Result<Vec<Duration>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let secs: f64 = l
                .trim()
                .replace(',', ".")
                .parse()
                .with_context(|| format!("curl's time_total `{l}`"))?;
            Ok(Duration::from_secs_f64(secs))
        })
        .collect()
}

pub(crate) async fn egress_section(
    plan: &Plan,
    repo: &Path,
    bin: &DaemonBin,
    scratch: &Path,
) -> anyhow::Result<Section> {
    let dir = scratch.join("egress");
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles)?;
    let text = std::fs::read_to_string(repo.join("profiles/local-shell.yaml"))?;
    ensure!(
        text.contains("network:\n  mode: none\n"),
        "profiles/local-shell.yaml changed: cannot derive the egress profile"
    );
    std::fs::write(
        profiles.join("egress.yaml"),
        text.replace("profile.local-shell", "profile.bench-egress")
            .replace(
                "network:\n  mode: none\n",
                "network:\n  mode: egress\n  allow: [origin.test]\n",
            ),
    )?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[egress.resolve]\n\"origin.test\" = \"127.0.0.1\"\n",
    )?;
    let daemon = Daemon::builder(bin.clone())
        .repo(repo)
        .profiles(&profiles)
        .args(["--config".as_ref(), config.as_os_str()])
        .log_file(dir.join("sandboxerd.log"))
        .try_start(&dir.join("data"))?;
    let origin = Origin::start().await;
    let result = measure_egress(plan, &daemon, origin.port).await;
    let stopped = daemon.stop(Duration::from_secs(20));
    let section = result?;
    stopped?;
    Ok(section)
}

async fn measure_egress(plan: &Plan, daemon: &Daemon, port: u16) -> anyhow::Result<Section> {
    let client = &daemon.client;
    let req = CreateSandbox {
        profile: "profile.bench-egress".into(),
        ..CreateSandbox::default()
    };
    let (_, sbx) = client.create(&req, Some(WAIT), None).await?;
    ensure!(
        sbx.state == SandboxState::Ready,
        "the egress sandbox is {:?}",
        sbx.state
    );
    let inside = |script: String| {
        let client = client.clone();
        let id = sbx.id.clone();
        async move {
            let r = client
                .exec(
                    &id,
                    &ExecRequest {
                        cmd: Command::Argv(vec!["bash".into(), "-c".into(), script]),
                        cwd: None,
                        env: BTreeMap::new(),
                        stdin: None,
                        timeout: Some("10m".into()),
                        service: None,
                    },
                )
                .await?;
            ensure!(r.exit_code == Some(0), "curl in the sandbox: {}", r.stderr);
            parse_times(&r.stdout)
        }
    };
    let host = |script: String| async move {
        let out = tokio::process::Command::new("bash")
            .args(["-c", &script])
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "curl on the host: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_times(&String::from_utf8_lossy(&out.stdout))
    };
    let (rounds, per) = rounds(plan);
    let (mut direct, mut plain, mut tunnel) = (Vec::new(), Vec::new(), Vec::new());
    // Warm-up: page cache, the origin's buffer, the proxy's first connection.
    host(curls(1, "", &format!("http://127.0.0.1:{port}/big"))).await?;
    inside(curls(1, "", &format!("http://origin.test:{port}/big"))).await?;
    for _ in 0..rounds {
        direct.extend(host(curls(per, "", &format!("http://127.0.0.1:{port}/big"))).await?);
        plain.extend(inside(curls(per, "", &format!("http://origin.test:{port}/big"))).await?);
        tunnel.extend(inside(curls(per, "-p", &format!("http://origin.test:{port}/big"))).await?);
    }
    let _ = client.destroy(&sbx.id, Some(WAIT)).await;
    let (direct, plain, tunnel) = (
        Samples::new(direct),
        Samples::new(plain),
        Samples::new(tunnel),
    );
    let overhead = |s: &Samples| {
        let base = direct.p50().as_secs_f64().max(1e-9);
        (s.p50().as_secs_f64() / base - 1.0) * 100.0
    };
    let (op, ot) = (overhead(&plain), overhead(&tunnel));
    let mbps = |s: &Samples| (BIG as f64 / 1e6) / s.p50().as_secs_f64().max(1e-9);
    Ok(Section {
        title: "8. Egress proxy overhead".into(),
        note: format!(
            "A {mb} MB download from an HTTP server on loopback, {n} times each way in {rounds} \
             alternating rounds: curl on the host straight to the server, and curl inside a \
             `network: {{mode: egress}}` sandbox through the agent's relay and the daemon's proxy \
             (plain HTTP, and a CONNECT tunnel as HTTPS uses). curl's own `time_total` is \
             compared (median), so starting the command in the sandbox is not counted. \
             Loopback is the worst case for a proxy: on a real network the transfer itself \
             dominates.",
            mb = BIG / 1_000_000,
            n = rounds * per,
        ),
        rows: vec![
            Row::info(
                "direct, host → origin (p50 / p95 / p99)",
                format!("{} ({:.0} MB/s)", direct.triple(), mbps(&direct)),
            ),
            Row::info(
                "through the proxy, plain HTTP (p50 / p95 / p99)",
                format!("{} ({:.0} MB/s)", plain.triple(), mbps(&plain)),
            ),
            Row::info(
                "through the proxy, CONNECT tunnel (p50 / p95 / p99)",
                format!("{} ({:.0} MB/s)", tunnel.triple(), mbps(&tunnel)),
            ),
            Row::judged(
                "overhead, plain HTTP (p50)",
                format!("{op:+.1}%"),
                "≤ 10%",
                op <= 10.0,
            ),
            Row::judged(
                "overhead, CONNECT tunnel (p50)",
                format!("{ot:+.1}%"),
                "≤ 10%",
                ot <= 10.0,
            ),
        ],
    })
}
