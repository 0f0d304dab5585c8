//! The command line: global options, subcommands, and the parsers of their values.
use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use clap_complete::engine::ArgValueCandidates;
use sandboxer_api::{SandboxState, SnapshotState};

/// Drive a sand-boxer daemon: create, inspect, extend and destroy sandboxes.
#[derive(Debug, Parser)]
#[command(name = "sandboxctl", version, propagate_version = true)]
pub struct Cli {
    /// Base URL of the daemon.
    #[arg(
        long,
        global = true,
        env = "SANDBOXER_URL",
        default_value = "http://127.0.0.1:7443"
    )]
    pub url: String,
    /// Bearer token (not needed for a loopback daemon without tokens).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "SANDBOXER_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the JSON the API answers instead of human output.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a sandbox and (by default) wait until it is ready.
    Create(CreateArgs),
    /// Show one sandbox.
    Get {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
    },
    /// List sandboxes.
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Destroy a sandbox and (by default) wait until it is gone.
    #[command(visible_alias = "rm")]
    Destroy {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
        /// Return as soon as teardown has started.
        #[arg(long)]
        no_wait: bool,
    },
    /// Tear a sandbox down and provision it again: same id, fresh TTL.
    Recreate {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
        /// Fresh lifetime (`30m`, `4h`); defaults to the profile's.
        #[arg(long)]
        ttl: Option<String>,
        /// Return as soon as the recreate is accepted (`provisioning`).
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the sandbox to become ready again.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Move a sandbox's expiry forward (never past its profile's ttl.max).
    ExtendTtl {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
        /// How far to move it (`30m`, `2h`).
        duration: String,
    },
    /// Snapshots of sandbox workspaces: create, list, show, delete.
    #[command(subcommand, visible_alias = "snap")]
    Snapshot(SnapshotCommand),
    /// ext.docker templates: images built from a Dockerfile (operators build and remove).
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Roll a sandbox's workspace back to a snapshot, in place.
    Restore {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        sandbox: String,
        /// Snapshot id (`snap_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::snapshots))]
        snapshot: String,
    },
    /// Mark activity on a sandbox, so the idle reaper leaves it alone.
    Touch {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
    },
    /// Freeze every process of a sandbox, keeping its memory (its TTL keeps running).
    Pause {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
    },
    /// Let a paused sandbox's processes run again.
    Resume {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
    },
    /// Run a command inside a sandbox; its output streams as it is written
    /// and its exit code is sandboxctl's (124 on a timeout, 128+N for signal N).
    /// One argument runs with /bin/sh -c; several are an argv.
    Exec {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
        /// Working directory inside (default /workspace).
        #[arg(long)]
        cwd: Option<String>,
        /// KEY=VALUE added to the environment (repeatable).
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// Kill it and its tree after this long (`30s`, `10m`; default 60s).
        #[arg(long)]
        timeout: Option<String>,
        /// Text for its standard input: a file, or `-` for this standard input.
        #[arg(long)]
        stdin: Option<String>,
        /// Wait for the end and print the output at once.
        #[arg(long)]
        no_stream: bool,
        /// The command (after `--`).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Start a background process in a sandbox; prints its id (`proc_…`).
    Start {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
        /// Working directory inside (default /workspace).
        #[arg(long)]
        cwd: Option<String>,
        /// KEY=VALUE added to the environment (repeatable).
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// A label to recognise it by.
        #[arg(long)]
        tag: Option<String>,
        /// The command (after `--`).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// List a sandbox's background processes.
    Ps {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
    },
    /// A background process's output; `-f` follows it until it ends.
    Logs {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
        /// Process id (`proc_…`).
        process: String,
        /// Keep printing as it writes, until it ends.
        #[arg(short, long)]
        follow: bool,
        /// Start at this byte of its output.
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Signal a background process (its process group).
    Kill {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
        /// Process id (`proc_…`).
        process: String,
        /// TERM, KILL, INT or HUP.
        #[arg(short, long, default_value = "TERM")]
        signal: String,
    },
    /// Copy between this machine and a sandbox: `cp ./src sbx_…:/workspace/src`
    /// or `cp sbx_…:/workspace/out.txt .` (directories go as tar; `-` as the
    /// local target writes a file to stdout).
    Cp {
        /// Source: a local path or `sbx_…:PATH`.
        src: String,
        /// Target: a local path or `sbx_…:PATH`.
        dst: String,
        /// Mode of a file written into the sandbox (default: the local file's).
        #[arg(long)]
        mode: Option<String>,
    },
    /// List files in a sandbox (symlinks are shown, never followed).
    LsFiles {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
        /// Directory inside.
        #[arg(default_value = "/workspace")]
        path: String,
        /// Levels to descend (1 to 16).
        #[arg(long, default_value_t = 1)]
        depth: u32,
    },
    /// TCP ports listening inside a sandbox, with their URLs through the daemon.
    Ports {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
    },
    /// Print the URL of a port inside a sandbox, through the daemon's proxy.
    Open {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
        /// Port inside.
        port: u16,
        /// Path on the server inside.
        #[arg(default_value = "/")]
        path: String,
    },
    /// SSH keys that may open sessions into a sandbox (the daemon's SSH gateway).
    #[command(subcommand)]
    SshKey(SshKeyCommand),
    /// A shell in a sandbox over the daemon's SSH gateway (OpenSSH's `ssh`,
    /// with a key made for this session and removed after it).
    Shell {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
        /// Run this instead of a login shell (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Show the lifecycle transitions of a sandbox.
    Events {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
    },
    /// Show the egress proxy's allow/deny decisions for a sandbox with
    /// `network: {mode: egress}`, oldest first.
    NetworkLog {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
        /// Only the refusals.
        #[arg(long)]
        denied: bool,
    },
    /// List the profiles, or show one.
    Profiles {
        /// A profile id (`profile.…`).
        id: Option<String>,
    },
    /// List the extensions with their availability, or show one.
    Extensions {
        /// An extension id (`ext.…`).
        id: Option<String>,
    },
    /// List the placement hosts with what was last seen of them, or show one.
    Hosts {
        /// A host id.
        id: Option<String>,
    },
    /// Operator: live facts from a host, or what it holds that no sandbox owns.
    #[command(subcommand)]
    Inspect(InspectCommand),
    /// Prove a host end to end: create a `profile.sandbox-canary` sandbox on
    /// it, wait until ready, destroy it, and report the timings.
    Canary {
        /// Host id.
        host: String,
        /// The canary stack (`tests/fixtures/compose-canary`): a path on the
        /// daemon's machine; a relative one is taken from the directory
        /// sandboxctl runs in and sent as an absolute path.
        #[arg(long)]
        repo: String,
        /// How long each of ready and destroyed may take.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Operator: remove what no live sandbox owns on a host (a dry run unless `--apply`).
    ReapStale {
        /// Host id.
        id: String,
        /// Remove them (default: a dry run that only lists).
        #[arg(long)]
        apply: bool,
    },
    /// Operator: list the sandboxes past their expiry; with `--apply`, expire and destroy them now.
    Expire {
        /// Expire them (default: a dry run that only lists).
        #[arg(long)]
        apply: bool,
    },
    /// Operator: the audit trail of mutating requests, newest first.
    Audit {
        /// Only this project's requests.
        #[arg(long)]
        project: Option<String>,
        /// Only requests about this sandbox.
        #[arg(long)]
        sandbox: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Credits of a project: balance, grants (operator), ledger.
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// What a sandbox of a profile would cost, and where it would run now.
    Estimate {
        /// Profile id (`profile.…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::profiles))]
        profile: String,
        /// Lifetime to price (`30m`, `4h`); defaults to the profile's.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Per-sandbox usage for billing (a consumer sees its own project).
    Usage {
        /// Only this project (operators; default: every project).
        #[arg(long)]
        project: Option<String>,
        /// RFC 3339: count debits at or after this time.
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339: count debits before this time.
        #[arg(long)]
        to: Option<String>,
        /// Print CSV (a header row, then one row per sandbox).
        #[arg(long, conflicts_with = "json")]
        csv: bool,
    },
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a shell completion script.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

/// The `ssh-key` subcommands.
#[derive(Debug, Subcommand)]
pub enum SshKeyCommand {
    /// Register a public key (a `.pub` file or the key line itself).
    Add {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
        /// `~/.ssh/id_ed25519.pub`, or `ssh-ed25519 AAAA…`.
        key: String,
    },
    /// The keys registered for a sandbox.
    List {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
    },
    /// Remove a key by its `SHA256:…` fingerprint.
    Rm {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        id: String,
        /// `SHA256:…`
        fingerprint: String,
    },
}

/// The `template` subcommands.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Build a template, printing the build's output as it comes; the same
    /// inputs are not built twice.
    Build {
        /// Template id (lower-case letters, digits, `.`, `_`, `-`).
        id: String,
        /// The Dockerfile (alone: no other file is sent).
        #[arg(
            short = 'f',
            long,
            conflicts_with = "context",
            required_unless_present = "context"
        )]
        file: Option<std::path::PathBuf>,
        /// A directory to send as the build context (its `Dockerfile` at the top).
        #[arg(long)]
        context: Option<std::path::PathBuf>,
    },
    /// The templates and their current builds.
    List,
    /// Remove a template's builds (refused while a sandbox runs one).
    Rm {
        /// Template id.
        id: String,
    },
}

/// The `snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a sandbox's workspace and (by default) wait until it is ready.
    Create {
        /// Sandbox id (`sbx_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::sandboxes))]
        sandbox: String,
        /// Free text to recognise the snapshot by.
        #[arg(long)]
        label: Option<String>,
        /// Return as soon as the capture has started.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the capture.
        #[arg(long, default_value = "300s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// List snapshots (of one sandbox with `--sandbox`).
    #[command(visible_alias = "ls")]
    List {
        /// Only snapshots of this sandbox.
        #[arg(long)]
        sandbox: Option<String>,
        /// Only snapshots in this state.
        #[arg(long)]
        state: Option<SnapshotState>,
        /// Include deleted snapshots.
        #[arg(long)]
        all: bool,
        /// Fetch one page of at most this many (default: every page).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// Show one snapshot.
    Get {
        /// Snapshot id (`snap_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::snapshots))]
        id: String,
    },
    /// Delete a snapshot (and its archive, unless another snapshot shares it).
    #[command(visible_alias = "rm")]
    Delete {
        /// Snapshot id (`snap_…`).
        #[arg(add = ArgValueCandidates::new(crate::complete::snapshots))]
        id: String,
    },
}

/// The `credits` subcommands.
#[derive(Debug, Subcommand)]
pub enum CreditsCommand {
    /// Balance, reserved and available credits of a project.
    Balance {
        /// Project name.
        project: String,
    },
    /// Operator: add credits to a project.
    Grant {
        /// Project name.
        project: String,
        /// Whole credits to add (1 or more).
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        amount: i64,
        /// Why (an invoice, a trial, ...).
        #[arg(long)]
        reason: String,
        /// Retrying with the same key grants once.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// A project's ledger entries, newest first.
    Ledger {
        /// Project name.
        project: String,
        /// Only entries about this sandbox.
        #[arg(long)]
        sandbox: Option<String>,
        /// Fetch one page of at most this many (default: every page).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
}

/// Arguments of `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Profile id (`profile.…`); with `--from-snapshot`, defaults to the snapshot's.
    #[arg(required_unless_present = "from_snapshot", add = ArgValueCandidates::new(crate::complete::profiles))]
    pub profile: Option<String>,
    /// Fork: start the workspace from this snapshot (`snap_…`).
    #[arg(long, value_name = "SNAPSHOT", add = ArgValueCandidates::new(crate::complete::snapshots))]
    pub from_snapshot: Option<String>,
    /// Lifetime (`30m`, `2h`); defaults to the profile's.
    #[arg(long)]
    pub ttl: Option<String>,
    /// A label `key=value`; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// An SSH public key (a `.pub` file or the key line) that may open
    /// sessions into the sandbox through the daemon's SSH gateway; repeatable.
    #[arg(long = "ssh-key", value_name = "KEY")]
    pub ssh_keys: Vec<String>,
    /// A profile input `name=value`; repeatable.
    #[arg(long = "input", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub inputs: Vec<(String, String)>,
    /// Place the sandbox on this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Return as soon as the sandbox is requested.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the sandbox to become ready.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Retrying with the same key and request returns the same sandbox.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// A name unique among the project's live sandboxes.
    #[arg(long)]
    pub name: Option<String>,
    /// With `--name`: when a live sandbox already has the name, use it
    /// instead of failing (get-or-create).
    #[arg(long, requires = "name")]
    pub reuse: bool,
}

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sandboxes in this state.
    #[arg(long)]
    pub state: Option<SandboxState>,
    /// Only sandboxes of this profile.
    #[arg(long, add = ArgValueCandidates::new(crate::complete::profiles))]
    pub profile: Option<String>,
    /// Only sandboxes on this extension.
    #[arg(long)]
    pub extension: Option<String>,
    /// Only sandboxes on this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only sandboxes of this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Only the sandbox of this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only sandboxes with this label `key=value`; repeatable (all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// Include destroyed sandboxes.
    #[arg(long)]
    pub all: bool,
    /// Fetch one page of at most this many (default: every page).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
}

/// Parses `key=value` (split at the first `=`; the value may be empty or hold `=`).
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("expected KEY=VALUE, got `{s}`"));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("the key is empty in `{s}`"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("the key `{key}` contains whitespace"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Parses a humantime duration (`90s`, `2m`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 90s or 2m: {e}"))
}

/// Collects `key=value` pairs into a map; a key given twice is an error
/// (`what` names the option in the message).
pub fn to_map(pairs: &[(String, String)], what: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if map.insert(k.clone(), v.clone()).is_some() {
            return Err(format!("--{what} `{k}` is given more than once"));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn key_value_pairs() {
        assert_eq!(parse_key_value("team=x"), Ok(("team".into(), "x".into())));
        assert_eq!(parse_key_value("url=a=b"), Ok(("url".into(), "a=b".into())));
        assert_eq!(
            parse_key_value("empty="),
            Ok(("empty".into(), String::new()))
        );
        assert!(parse_key_value("novalue")
            .unwrap_err()
            .contains("KEY=VALUE"));
        assert!(parse_key_value("=v").unwrap_err().contains("empty"));
        assert!(parse_key_value("a b=v").unwrap_err().contains("whitespace"));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let pairs = vec![
            ("a".to_owned(), "1".to_owned()),
            ("a".to_owned(), "2".to_owned()),
        ];
        assert!(to_map(&pairs, "label").unwrap_err().contains("--label `a`"));
        let pairs = vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ];
        assert_eq!(to_map(&pairs, "label").map(|m| m.len()), Ok(2));
    }

    #[test]
    fn create_parses_repeated_options() {
        let cli = Cli::try_parse_from([
            "sandboxctl",
            "create",
            "profile.local-shell",
            "--label",
            "a=1",
            "--label",
            "b=2",
            "--input",
            "repo=/src",
            "--timeout",
            "5m",
            "--json",
        ])
        .expect("valid command line");
        let Command::Create(args) = cli.command else {
            panic!("not create")
        };
        assert_eq!(
            args.labels,
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(args.inputs, [("repo".into(), "/src".into())]);
        assert_eq!(args.timeout, Duration::from_secs(300));
        assert!(cli.json);
    }

    #[test]
    fn snapshot_commands_and_forks_parse() {
        let cli = Cli::try_parse_from([
            "sandboxctl",
            "snapshot",
            "create",
            "sbx_1",
            "--label",
            "before migration",
        ])
        .expect("valid command line");
        let Command::Snapshot(SnapshotCommand::Create { sandbox, label, .. }) = cli.command else {
            panic!("not snapshot create")
        };
        assert_eq!(
            (sandbox.as_str(), label.as_deref()),
            ("sbx_1", Some("before migration"))
        );
        let cli = Cli::try_parse_from(["sandboxctl", "snap", "ls", "--state", "ready"])
            .expect("valid command line");
        assert!(matches!(
            cli.command,
            Command::Snapshot(SnapshotCommand::List {
                state: Some(SnapshotState::Ready),
                ..
            })
        ));
        let cli = Cli::try_parse_from(["sandboxctl", "restore", "sbx_1", "snap_2"])
            .expect("valid command line");
        assert!(matches!(cli.command, Command::Restore { .. }));
        let cli = Cli::try_parse_from(["sandboxctl", "create", "--from-snapshot", "snap_2"])
            .expect("a fork needs no profile");
        let Command::Create(args) = cli.command else {
            panic!("not create")
        };
        assert_eq!(
            (args.profile, args.from_snapshot.as_deref()),
            (None, Some("snap_2"))
        );
        let err = Cli::try_parse_from(["sandboxctl", "create"]).expect_err("no profile");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn credits_estimate_and_usage_parse() {
        let cli = Cli::try_parse_from([
            "sandboxctl",
            "credits",
            "grant",
            "demo",
            "500",
            "--reason",
            "trial",
        ])
        .expect("valid command line");
        let Command::Credits(CreditsCommand::Grant {
            project,
            amount,
            reason,
            ..
        }) = cli.command
        else {
            panic!("not credits grant")
        };
        assert_eq!(
            (project.as_str(), amount, reason.as_str()),
            ("demo", 500, "trial")
        );
        let err = Cli::try_parse_from([
            "sandboxctl",
            "credits",
            "grant",
            "demo",
            "0",
            "--reason",
            "x",
        ])
        .expect_err("zero credits");
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        let cli = Cli::try_parse_from([
            "sandboxctl",
            "estimate",
            "profile.local-shell",
            "--ttl",
            "2h",
        ])
        .expect("valid command line");
        assert!(matches!(
            cli.command,
            Command::Estimate { ttl: Some(_), .. }
        ));
        let cli = Cli::try_parse_from(["sandboxctl", "usage", "--csv", "--project", "demo"])
            .expect("valid command line");
        assert!(matches!(cli.command, Command::Usage { csv: true, .. }));
        let err = Cli::try_parse_from(["sandboxctl", "usage", "--csv", "--json"])
            .expect_err("csv or json");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for argv in [
            &["sandboxctl", "create", "p", "--label", "nokey"][..],
            &["sandboxctl", "create", "p", "--timeout", "soon"],
            &["sandboxctl", "list", "--state", "sleeping"],
            &["sandboxctl", "list", "--limit", "0"],
        ] {
            let err = Cli::try_parse_from(argv).expect_err("should be refused");
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{argv:?}");
            assert_eq!(err.exit_code(), 2);
        }
    }
}

/// The `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a fresh random token and print it with the `[[tokens]]` block
    /// (hash only) to paste into sandboxerd's configuration.
    New {
        /// `adm` (a person), `agt` (an agent) or `atm` (an automation).
        #[arg(long, default_value = "agt", value_parser = ["adm", "agt", "atm"])]
        actor_type: String,
        /// Who the token is for, e.g. `glas-harness`.
        #[arg(long)]
        actor: String,
        /// The project its sandboxes belong to.
        #[arg(long)]
        project: String,
        /// `consumer` (its own project only) or `operator` (everything).
        #[arg(long, default_value = "consumer", value_parser = ["consumer", "operator"])]
        role: String,
    },
}

/// The `inspect` subcommands (operator).
#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// Live facts from a host: engine, load, memory, disk, labelled containers.
    Host {
        /// Host id.
        id: String,
    },
    /// What sand-boxer left on a host that no live sandbox owns.
    Stale {
        /// Host id.
        id: String,
    },
}
