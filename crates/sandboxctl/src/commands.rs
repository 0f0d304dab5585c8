//! What each subcommand does: call the client, then print JSON or human output.
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use chrono::Utc;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sandboxctl::api::{CreateSandbox, Placement, Sandbox, SandboxState, SnapshotState};
use sandboxctl::{Client, ListQuery, SnapshotQuery, UsageQuery};
use serde::Serialize;

use crate::args::{to_map, Command, CreateArgs, CreditsCommand, ListArgs, SnapshotCommand};
pub use crate::output::{emit, emit_json, note, CliError};
use crate::render;

/// How long `create` asks the server to hold the first request.
const CREATE_WAIT: Duration = Duration::from_secs(60);
/// How long each long-poll for readiness asks the server to hold.
const POLL_WAIT: Duration = Duration::from_secs(30);
/// How long `destroy` asks the server to wait for teardown.
const DESTROY_WAIT: Duration = Duration::from_secs(60);

/// Runs one subcommand against `client`. `completions` is handled by the caller.
pub async fn run(client: &Client, command: Command, json: bool) -> Result<(), CliError> {
    let now = Utc::now;
    match command {
        Command::Create(args) => create(client, args, json).await,
        Command::Get { id } => {
            let s = client.get(&id, None).await?;
            emit_or(json, &s, || render::sandbox_details(&s, true, now()))
        }
        Command::List(args) => list(client, args, json).await,
        Command::Destroy { id, no_wait } => {
            let wait = (!no_wait).then_some(DESTROY_WAIT);
            let (_, s) = client.destroy(&id, wait).await?;
            emit_or(json, &s, || {
                let mut out = format!("{} {}\n", s.id, s.state);
                if s.state != SandboxState::Destroyed {
                    out.push_str(&format!(
                        "teardown continues in the background; check with `sandboxctl get {}`\n",
                        s.id
                    ));
                }
                out
            })
        }
        Command::Recreate {
            id,
            ttl,
            no_wait,
            timeout,
        } => {
            let mut s = client.recreate(&id, ttl).await?;
            if !no_wait {
                // Like `create`: back once it is ready, so `reachability`
                // (and with it `enter`) is there.
                let spinner = Spinner::new();
                s = wait_until_ready(client, s, Instant::now() + timeout, timeout, &spinner)
                    .await?;
            }
            emit_or(json, &s, || render::sandbox_details(&s, false, now()))?;
            failed_outcome(&s)
        }
        Command::ExtendTtl { id, duration } => {
            let ext = client.extend_ttl(&id, &duration).await?;
            emit_or(json, &ext, || {
                let s = &ext.sandbox;
                let mut out = format!(
                    "{} now expires at {} ({})\n",
                    s.id,
                    render::timestamp(s.expires_at),
                    render::relative(s.expires_at, now())
                );
                if ext.ttl_capped {
                    out.push_str(
                        "capped at the profile's ttl.max: it cannot be extended further\n",
                    );
                }
                out
            })
        }
        Command::Pause { id } => {
            let s = client.pause(&id).await?;
            emit_or(json, &s, || format!("{} {}\n", s.id, s.state))
        }
        Command::Resume { id } => {
            let s = client.resume(&id).await?;
            emit_or(json, &s, || format!("{} {}\n", s.id, s.state))
        }
        Command::Touch { id } => {
            let s = client.touch(&id).await?;
            emit_or(json, &s, || {
                format!(
                    "{} {} (last activity {}, expires {})\n",
                    s.id,
                    s.state,
                    render::timestamp(s.last_activity_at),
                    render::relative(s.expires_at, now())
                )
            })
        }
        Command::Snapshot(cmd) => snapshot(client, cmd, json).await,
        Command::Restore { sandbox, snapshot } => {
            let spinner = Spinner::new();
            spinner.show(format!("restoring {sandbox} from {snapshot}"));
            let s = client.restore(&sandbox, &snapshot).await?;
            drop(spinner);
            emit_or(json, &s, || {
                format!("{} restored from {snapshot} ({})\n", s.id, s.state)
            })
        }
        Command::Events { id } => {
            let page = client.events(&id).await?;
            emit_or(json, &page.items, || render::events_table(&page.items))
        }
        Command::NetworkLog { id, denied } => {
            let mut log = client.network_log(&id).await?;
            if denied {
                log.items
                    .retain(|d| d.decision == sandboxer_api::NetworkVerdict::Denied);
            }
            emit_or(json, &log, || render::network_log(&log))
        }
        Command::Profiles { id: Some(id) } => {
            let p = client.profile(&id).await?;
            emit_or(json, &p, || render::profile_details(&p))
        }
        Command::Profiles { id: None } => {
            let page = client.profiles().await?;
            emit_or(json, &page.items, || render::profiles_table(&page.items))
        }
        Command::Extensions { id: Some(id) } => {
            let e = client.extension(&id).await?;
            emit_or(json, &e, || render::extension_details(&e))
        }
        cmd @ (Command::Exec { .. }
        | Command::Start { .. }
        | Command::Ps { .. }
        | Command::Logs { .. }
        | Command::Kill { .. }
        | Command::Cp { .. }
        | Command::LsFiles { .. }
        | Command::Ports { .. }
        | Command::Open { .. }
        | Command::SshKey(_)
        | Command::Shell { .. }) => crate::access_cmd::run(client, cmd, json).await,
        cmd @ (Command::Hosts { .. }
        | Command::Inspect(_)
        | Command::ReapStale { .. }
        | Command::Canary { .. }) => crate::hosts_cmd::run(client, cmd, json).await,
        Command::Extensions { id: None } => {
            let page = client.extensions().await?;
            emit_or(json, &page.items, || render::extensions_table(&page.items))
        }
        Command::Expire { apply } => {
            let report = client.expire(apply).await?;
            emit_or(json, &report, || {
                let verb = if report.applied {
                    "expired"
                } else {
                    "due (dry run; --apply to expire)"
                };
                format!(
                    "{} sandbox(es) {verb}\n{}",
                    report.items.len(),
                    if report.items.is_empty() {
                        String::new()
                    } else {
                        render::sandboxes_table(&report.items, now())
                    }
                )
            })
        }
        Command::Audit {
            project,
            sandbox,
            limit,
        } => {
            let page = client
                .audit(project.as_deref(), sandbox.as_deref(), limit)
                .await?;
            emit_or(json, &page.items, || render::audit_table(&page.items))
        }
        Command::Credits(cmd) => credits(client, cmd, json).await,
        Command::Template(cmd) => crate::template_cmd::run(client, cmd, json).await,
        Command::Estimate { profile, ttl } => {
            let e = client.estimate(&profile, ttl.as_deref()).await?;
            emit_or(json, &e, || render::estimate_details(&e))
        }
        Command::Usage {
            project,
            from,
            to,
            csv,
        } => {
            let q = UsageQuery { project, from, to };
            if csv {
                emit(&client.usage_csv(&q).await?);
                return Ok(());
            }
            let report = client.usage(&q).await?;
            emit_or(json, &report, || render::usage_table(&report))
        }
        Command::Completions { .. } | Command::Token(_) => Ok(()),
    }
}

/// `create`: ask, then (unless `--no-wait`) long-poll until ready, failed or the timeout.
async fn create(client: &Client, args: CreateArgs, json: bool) -> Result<(), CliError> {
    let profile = match args.profile.as_deref() {
        Some(p) => Some(profile_id(client, p).await?),
        None => None,
    };
    let req = CreateSandbox {
        profile: profile.clone().unwrap_or_default(),
        inputs: to_map(&args.inputs, "input").map_err(CliError::Usage)?,
        ttl: args.ttl,
        labels: to_map(&args.labels, "label").map_err(CliError::Usage)?,
        consumer: None,
        placement: args.host.map(|host| Placement { host: Some(host) }),
        from_snapshot: args.from_snapshot.clone(),
        ssh_keys: args
            .ssh_keys
            .iter()
            .map(|k| match std::fs::read_to_string(k) {
                Ok(text) if std::path::Path::new(k).is_file() => Ok(text.trim().to_owned()),
                Ok(_) | Err(_) if k.starts_with("ssh-") || k.starts_with("ecdsa-") => Ok(k.clone()),
                Ok(_) => Err(CliError::Usage(format!(
                    "--ssh-key {k}: not a key file or key line"
                ))),
                Err(e) => Err(CliError::Usage(format!("--ssh-key {k}: {e}"))),
            })
            .collect::<Result<_, _>>()?,
        name: args.name.clone(),
        if_exists: args.reuse.then_some(sandboxer_api::IfExists::Return),
    };
    let spinner = Spinner::new();
    spinner.show(match (&profile, &args.from_snapshot) {
        (_, Some(snap)) => format!("creating a sandbox from {snap}"),
        (Some(profile), None) => format!("creating a sandbox of {profile}"),
        (None, None) => "creating a sandbox".to_owned(),
    });
    let deadline = Instant::now() + args.timeout;
    let first_wait = (!args.no_wait).then(|| CREATE_WAIT.min(args.timeout));
    let (_, mut s) = client
        .create(&req, first_wait, args.idempotency_key.as_deref())
        .await?;
    if !args.no_wait {
        s = wait_until_ready(client, s, deadline, args.timeout, &spinner).await?;
    }
    drop(spinner);
    emit_or(json, &s, || render::sandbox_details(&s, false, Utc::now()))?;
    failed_outcome(&s)
}

/// The profile id `given` stands for: as given when the catalog has it,
/// else `profile.` + it (`local-shell`); a name the catalog does not know
/// is a usage error suggesting the closest ids.
async fn profile_id(client: &Client, given: &str) -> Result<String, CliError> {
    let Ok(page) = client.profiles().await else {
        // Unknown now: let the create say what is wrong.
        return Ok(given.to_owned());
    };
    let ids: Vec<&str> = page.items.iter().map(|p| p.id.as_str()).collect();
    if ids.contains(&given) {
        return Ok(given.to_owned());
    }
    let prefixed = format!("profile.{given}");
    if ids.contains(&prefixed.as_str()) {
        return Ok(prefixed);
    }
    let mut close: Vec<(usize, &str)> = ids
        .iter()
        .map(|id| {
            (
                edit_distance(given, id).min(edit_distance(&prefixed, id)),
                *id,
            )
        })
        .filter(|(d, _)| *d <= 3)
        .collect();
    close.sort();
    let hint = match close.first() {
        Some((_, id)) => format!("did you mean `{id}`?"),
        None => format!("the profiles are: {}", ids.join(", ")),
    };
    Err(CliError::Usage(format!(
        "no profile `{given}` in the catalog; {hint}"
    )))
}

/// Levenshtein distance (small strings).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(row[j + 1])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// An error when `s` ended `failed` (after it was shown).
fn failed_outcome(s: &Sandbox) -> Result<(), CliError> {
    match &s.failure {
        Some(f) if s.state == SandboxState::Failed => Err(CliError::Failed(format!(
            "sandbox {} failed: {} ({})",
            s.id, f.message, f.code
        ))),
        None if s.state == SandboxState::Failed => {
            Err(CliError::Failed(format!("sandbox {} failed", s.id)))
        }
        _ => Ok(()),
    }
}

/// Long-polls `GET /v1/sandboxes/{id}?wait_for=ready` until the sandbox is
/// live or failed; any other end, or the deadline, is an error.
async fn wait_until_ready(
    client: &Client,
    mut s: Sandbox,
    deadline: Instant,
    timeout: Duration,
    spinner: &Spinner,
) -> Result<Sandbox, CliError> {
    loop {
        spinner.show(format!("{} {}", s.id, s.state));
        match s.state {
            SandboxState::Ready
            | SandboxState::Active
            | SandboxState::Paused
            | SandboxState::Failed => return Ok(s),
            SandboxState::Destroying | SandboxState::Destroyed | SandboxState::Expired => {
                return Err(CliError::Failed(format!(
                    "sandbox {} became {} while waiting for it to be ready",
                    s.id, s.state
                )));
            }
            SandboxState::Requested | SandboxState::Provisioning => {}
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(CliError::Failed(format!(
                "sandbox {} is still {} after {}; follow it with `sandboxctl get {}` \
                 or remove it with `sandboxctl destroy {}`",
                s.id,
                s.state,
                humantime::format_duration(timeout),
                s.id,
                s.id
            )));
        }
        // Whole seconds keep the server's wait parameter simple; never below 1s.
        let wait = Duration::from_secs(POLL_WAIT.min(remaining).as_secs().max(1));
        let asked = Instant::now();
        s = client.get(&s.id, Some(wait)).await?;
        // A server that answers a long-poll at once must not make us spin.
        if asked.elapsed() < Duration::from_secs(1) && !s.state.is_live() && !s.state.is_settled() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(Duration::from_secs(1).min(remaining)).await;
        }
    }
}

/// `snapshot create|list|get|delete`.
async fn snapshot(client: &Client, cmd: SnapshotCommand, json: bool) -> Result<(), CliError> {
    let now = Utc::now;
    match cmd {
        SnapshotCommand::Create {
            sandbox,
            label,
            no_wait,
            timeout,
        } => {
            let spinner = Spinner::new();
            spinner.show(format!("snapshotting {sandbox}"));
            let wait = (!no_wait).then(|| timeout.min(Duration::from_secs(600)));
            let (_, snap) = client.create_snapshot(&sandbox, label, wait).await?;
            drop(spinner);
            emit_or(json, &snap, || render::snapshot_details(&snap, now()))?;
            match (&snap.state, &snap.failure) {
                (SnapshotState::Failed, Some(f)) => Err(CliError::Failed(format!(
                    "snapshot {} failed: {} ({})",
                    snap.id, f.message, f.code
                ))),
                (SnapshotState::Failed, None) => {
                    Err(CliError::Failed(format!("snapshot {} failed", snap.id)))
                }
                (SnapshotState::Creating, _) if !no_wait => Err(CliError::Failed(format!(
                    "snapshot {} is still being captured after {}; follow it with `sandboxctl snapshot get {}`",
                    snap.id,
                    humantime::format_duration(timeout),
                    snap.id
                ))),
                _ => Ok(()),
            }
        }
        SnapshotCommand::List {
            sandbox,
            state,
            all,
            limit,
        } => {
            let q = SnapshotQuery {
                sandbox,
                state: state.map(|s| s.as_str().to_owned()),
                include_all: all,
                limit,
                ..SnapshotQuery::default()
            };
            let (items, more) = if limit.is_some() {
                let page = client.list_snapshots(&q).await?;
                (page.items, page.next_cursor.is_some())
            } else {
                (client.list_all_snapshots(&q).await?, false)
            };
            if json {
                return emit_json(&items);
            }
            if items.is_empty() {
                note("no snapshots found");
                return Ok(());
            }
            emit(&render::snapshots_table(&items, now()));
            if more {
                note("more snapshots match; raise --limit or leave it out to see them all");
            }
            Ok(())
        }
        SnapshotCommand::Get { id } => {
            let snap = client.get_snapshot(&id).await?;
            emit_or(json, &snap, || render::snapshot_details(&snap, now()))
        }
        SnapshotCommand::Delete { id } => {
            let snap = client.delete_snapshot(&id).await?;
            emit_or(json, &snap, || format!("{} {}\n", snap.id, snap.state))
        }
    }
}

/// `credits balance|grant|ledger`.
async fn credits(client: &Client, cmd: CreditsCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        CreditsCommand::Balance { project } => {
            let b = client.balance(&project).await?;
            emit_or(json, &b, || render::balance_details(&b))
        }
        CreditsCommand::Grant {
            project,
            amount,
            reason,
            idempotency_key,
        } => {
            let (status, entry) = client
                .grant(&project, amount, &reason, idempotency_key.as_deref())
                .await?;
            emit_or(json, &entry, || {
                let again = if status == 200 {
                    " (already granted with this idempotency key)"
                } else {
                    ""
                };
                format!(
                    "granted {} credits to {} ({}){again}\n",
                    entry.amount, entry.project, entry.id
                )
            })
        }
        CreditsCommand::Ledger {
            project,
            sandbox,
            limit,
        } => {
            let (items, more) = match limit {
                Some(limit) => {
                    let page = client
                        .ledger(&project, sandbox.as_deref(), Some(limit), None)
                        .await?;
                    (page.items, page.next_cursor.is_some())
                }
                None => (
                    client.ledger_all(&project, sandbox.as_deref()).await?,
                    false,
                ),
            };
            if json {
                return emit_json(&items);
            }
            if items.is_empty() {
                note("no ledger entries");
                return Ok(());
            }
            emit(&render::ledger_table(&items));
            if more {
                note("more entries; raise --limit or leave it out to see them all");
            }
            Ok(())
        }
    }
}

/// `list`: one page with `--limit`, else every page.
async fn list(client: &Client, args: ListArgs, json: bool) -> Result<(), CliError> {
    let q = ListQuery {
        state: args.state.map(|s| s.as_str().to_owned()),
        profile: args.profile,
        extension: args.extension,
        host: args.host,
        project: args.project,
        name: args.name,
        labels: args.labels,
        include_all: args.all,
        limit: args.limit,
        cursor: None,
    };
    let (items, more) = if args.limit.is_some() {
        let page = client.list(&q).await?;
        (page.items, page.next_cursor.is_some())
    } else {
        (client.list_all(&q).await?, false)
    };
    if json {
        return emit_json(&items);
    }
    if items.is_empty() {
        note("no sandboxes found");
        return Ok(());
    }
    emit(&render::sandboxes_table(&items, Utc::now()));
    if more {
        note("more sandboxes match; raise --limit or leave it out to see them all");
    }
    Ok(())
}

/// Prints `value` as pretty JSON with `--json`, else the human text.
fn emit_or<T: Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce() -> String,
) -> Result<(), CliError> {
    if json {
        emit_json(value)
    } else {
        emit(&human());
        Ok(())
    }
}

/// A spinner on stderr showing what we wait for, drawn only when stderr is
/// a terminal; cleared when dropped so errors print on a clean line.
struct Spinner(Option<ProgressBar>);

impl Spinner {
    fn new() -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Spinner(Some(bar))
    }

    fn show(&self, msg: String) {
        if let Some(bar) = &self.0 {
            bar.set_message(render::clean(&msg).into_owned());
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
