//! Dynamic shell completion: sandbox, snapshot and profile ids asked of the
//! daemon while the shell completes (clap_complete's `COMPLETE=<shell>`
//! protocol). `sandboxctl completions <shell>` prints the registration a
//! shell sources; the shell then calls `sandboxctl` back with `COMPLETE`
//! set for every completion, and [`clap_complete::CompleteEnv`] answers
//! before any argument is parsed.
//!
//! The daemon is found as the command itself finds it, from
//! `SANDBOXER_URL` and `SANDBOXER_TOKEN` (flags on the line being typed are
//! not seen). Each lookup gives up after [`BUDGET`]: a daemon that is down
//! or slow leaves ids uncompleted, never a shell that hangs.
use std::ffi::OsString;
use std::time::Duration;

use clap_complete::engine::CompletionCandidate;
use sandboxctl::client::{ListQuery, SnapshotQuery};
use sandboxctl::Client;

/// The longest one lookup may take.
const BUDGET: Duration = Duration::from_millis(1500);

/// The most ids offered.
const LIMIT: u32 = 200;

/// Runs `f` against the daemon on a runtime of its own (completion runs
/// before `main` starts one), within [`BUDGET`]; nothing on any failure.
fn ask<F, Fut>(f: F) -> Vec<CompletionCandidate>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Vec<CompletionCandidate>>,
{
    let url = std::env::var("SANDBOXER_URL").unwrap_or_else(|_| "http://127.0.0.1:7443".into());
    let token = std::env::var("SANDBOXER_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let Ok(client) = Client::new(&url, token) else {
        return Vec::new();
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let found = rt
        .block_on(async { tokio::time::timeout(BUDGET, f(client)).await })
        .unwrap_or_default();
    // A name lookup still blocked in its thread is not waited for.
    rt.shutdown_background();
    found
}

fn candidate(id: String, help: String) -> CompletionCandidate {
    CompletionCandidate::new(OsString::from(id)).help(Some(help.into()))
}

/// Live sandboxes (newest first), with their state and profile.
pub fn sandboxes() -> Vec<CompletionCandidate> {
    ask(|c| async move {
        let q = ListQuery {
            limit: Some(LIMIT),
            ..ListQuery::default()
        };
        match c.list(&q).await {
            Ok(page) => page
                .items
                .into_iter()
                .map(|s| {
                    let help = match &s.name {
                        Some(name) => format!("{} {} {name}", s.state, s.profile),
                        None => format!("{} {}", s.state, s.profile),
                    };
                    candidate(s.id, help)
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    })
}

/// Profiles of the catalog, with their description.
pub fn profiles() -> Vec<CompletionCandidate> {
    ask(|c| async move {
        match c.profiles().await {
            Ok(page) => page
                .items
                .into_iter()
                .map(|p| candidate(p.id, p.description))
                .collect(),
            Err(_) => Vec::new(),
        }
    })
}

/// Snapshots that are not deleted, with their sandbox and state.
pub fn snapshots() -> Vec<CompletionCandidate> {
    ask(|c| async move {
        let q = SnapshotQuery {
            limit: Some(LIMIT),
            ..SnapshotQuery::default()
        };
        match c.list_snapshots(&q).await {
            Ok(page) => page
                .items
                .into_iter()
                .map(|s| {
                    let help = format!("{:?} of {}", s.state, s.sandbox_id).to_lowercase();
                    candidate(s.id, help)
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    })
}

/// The registration script of `shell`: what `source <(sandboxctl
/// completions bash)` loads.
pub fn registration(shell: clap_complete::Shell) -> Result<String, String> {
    let name = shell.to_string();
    let shells = clap_complete::env::Shells::builtins();
    let Some(completer) = shells.completer(&name) else {
        return Err(format!("no dynamic completion for {name}"));
    };
    let mut buf = Vec::new();
    completer
        .write_registration(
            "COMPLETE",
            "sandboxctl",
            "sandboxctl",
            "sandboxctl",
            &mut buf,
        )
        .map_err(|e| e.to_string())?;
    String::from_utf8(buf).map_err(|e| e.to_string())
}
