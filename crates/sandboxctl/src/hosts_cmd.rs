//! `sandboxctl hosts`, `inspect host|stale`, `reap-stale`.
use std::time::{Duration, Instant};

use sandboxctl::api::{CreateSandbox, Host, Placement, SandboxState, StaleReport};
use sandboxctl::Client;

use crate::args::{Command, InspectCommand};
use crate::output::{emit, emit_json, CliError};
use crate::table::Table;

fn hosts_table(hosts: &[Host]) -> String {
    let mut t = Table::new(&["ID", "ADDRESS", "USER", "ENGINE", "REACHABLE", "WORKDIR"]);
    for h in hosts {
        t.row(vec![
            h.id.clone(),
            format!("{}:{}", h.address, h.port),
            h.user.clone(),
            h.telemetry
                .engine
                .clone()
                .unwrap_or_else(|| h.engine.clone()),
            match h.telemetry.reachable {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "-".into(),
            },
            h.workdir.clone(),
        ]);
    }
    t.render()
}

fn stale_table(r: &StaleReport) -> String {
    let mut t = Table::new(&["KIND", "NAME", "SANDBOX"]);
    for i in &r.items {
        t.row(vec![i.kind.clone(), i.name.clone(), i.sandbox_id.clone()]);
    }
    let mut out = t.render();
    let verb = if r.applied {
        "removed"
    } else {
        "stale (dry run; --apply to remove)"
    };
    out.push_str(&format!("{} {verb} on {}\n", r.items.len(), r.host));
    for e in &r.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}

fn out<T: serde::Serialize>(
    json: bool,
    v: &T,
    human: impl FnOnce() -> String,
) -> Result<(), CliError> {
    if json {
        emit_json(v)
    } else {
        emit(&human());
        Ok(())
    }
}

/// Run one of the host commands.
pub async fn run(client: &Client, command: Command, json: bool) -> Result<(), CliError> {
    match command {
        Command::Hosts { id: None } => {
            let page = client.hosts().await?;
            out(json, &page.items, || hosts_table(&page.items))
        }
        Command::Hosts { id: Some(id) } => {
            let h = client.host(&id).await?;
            out(json, &h, || hosts_table(std::slice::from_ref(&h)))
        }
        Command::Inspect(InspectCommand::Host { id }) => {
            let i = client.inspect_host(&id).await?;
            out(json, &i, || {
                let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
                format!(
                    "host:        {}\nengine:      {} {} ({})\nload:        {:?}\nmemory:      {} available of {}\ndisk:        {} available of {}\ncontainers:  {} labelled, {} running\nworkspaces:  {}\n",
                    i.host,
                    i.engine,
                    i.engine_version,
                    i.compose,
                    i.load,
                    gib(i.memory_available_bytes),
                    gib(i.memory_total_bytes),
                    gib(i.disk_available_bytes),
                    gib(i.disk_total_bytes),
                    i.labelled_containers,
                    i.running_containers,
                    i.workspaces
                )
            })
        }
        Command::Inspect(InspectCommand::Stale { id }) => {
            let r = client.stale(&id).await?;
            out(json, &r, || stale_table(&r))
        }
        Command::Canary {
            host,
            repo,
            timeout,
        } => canary(client, host, repo, timeout, json).await,
        Command::ReapStale { id, apply } => {
            let r = client.reap_stale(&id, apply).await?;
            out(json, &r, || stale_table(&r))
        }
        _ => unreachable!("hosts_cmd::run is only called with host commands"),
    }
}

/// What `sandboxctl canary` measured.
#[derive(Debug, serde::Serialize)]
struct CanaryReport {
    host: String,
    sandbox_id: String,
    state: SandboxState,
    ready_seconds: f64,
    destroy_seconds: Option<f64>,
    failure: Option<String>,
}

/// `--repo` as the daemon must see it: a relative path is resolved here,
/// against sandboxctl's working directory (the daemon's is not the
/// operator's), canonical when it exists on this machine.
fn absolute_repo(repo: &str) -> Result<String, CliError> {
    let path = std::path::Path::new(repo);
    if path.is_absolute() {
        return Ok(repo.to_owned());
    }
    let full = std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .map_err(|e| CliError::Usage(format!("--repo {repo}: {e}")))?;
    full.into_os_string()
        .into_string()
        .map_err(|_| CliError::Usage(format!("--repo {repo}: the path is not UTF-8")))
}

async fn canary(
    client: &Client,
    host: String,
    repo: String,
    timeout: Duration,
    json: bool,
) -> Result<(), CliError> {
    let repo = absolute_repo(&repo)?;
    let req = CreateSandbox {
        profile: "profile.sandbox-canary".into(),
        inputs: [("repo".to_owned(), repo)].into_iter().collect(),
        placement: Some(Placement {
            host: Some(host.clone()),
        }),
        ..CreateSandbox::default()
    };
    let started = Instant::now();
    let (_, sbx) = client.create(&req, Some(timeout), None).await?;
    let ready_seconds = started.elapsed().as_secs_f64();
    let mut report = CanaryReport {
        host,
        sandbox_id: sbx.id.clone(),
        state: sbx.state,
        ready_seconds,
        destroy_seconds: None,
        failure: sbx
            .failure
            .as_ref()
            .map(|f| format!("{}: {}", f.code, f.message)),
    };
    // Whatever happened, leave nothing behind.
    let destroying = Instant::now();
    let (_, gone) = client.destroy(&sbx.id, Some(timeout)).await?;
    if gone.state == SandboxState::Destroyed {
        report.destroy_seconds = Some(destroying.elapsed().as_secs_f64());
    }
    out(json, &report, || {
        format!(
            "{} on {}: {} after {:.2}s; destroy {}\n",
            report.sandbox_id,
            report.host,
            report.state,
            report.ready_seconds,
            report
                .destroy_seconds
                .map(|s| format!("took {s:.2}s"))
                .unwrap_or_else(|| format!("not finished ({})", gone.state)),
        )
    })?;
    if report.state != SandboxState::Ready || report.destroy_seconds.is_none() {
        return Err(CliError::Failed(format!(
            "canary on {} failed: {}",
            report.host,
            report
                .failure
                .clone()
                .unwrap_or_else(|| format!("ended {}", report.state))
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::absolute_repo;

    #[test]
    fn a_relative_repo_is_resolved_against_the_callers_directory() {
        let here = std::env::current_dir().expect("cwd");
        let got = absolute_repo("no/such/dir").expect("resolved");
        assert_eq!(got, here.join("no/such/dir").to_str().expect("utf-8"));
        // One that exists is canonical (no `.` or `..` left).
        let got = absolute_repo("./src/../src").expect("resolved");
        assert_eq!(
            got,
            std::fs::canonicalize("src")
                .expect("src")
                .to_str()
                .expect("utf-8")
        );
        assert_eq!(absolute_repo("/srv/canary").expect("as is"), "/srv/canary");
    }
}
