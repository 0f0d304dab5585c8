//! Reaching into a sandbox (API v1.1): exec, background processes, files
//! and ports. The same types travel between the daemon and the in-sandbox
//! agent, so the three never drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What to run: an argv, or a shell string run by `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Command {
    /// Run as given: the first element is the program (looked up in `PATH`).
    Argv(Vec<String>),
    /// Run by `/bin/sh -c`.
    Shell(String),
}

impl Command {
    /// The argv to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Argv(v) => v.clone(),
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        }
    }

    /// Whether there is nothing to run.
    pub fn is_empty(&self) -> bool {
        match self {
            Command::Argv(v) => v.first().is_none_or(|p| p.is_empty()),
            Command::Shell(s) => s.trim().is_empty(),
        }
    }
}

/// Body of `POST /v1/sandboxes/{id}/exec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub cmd: Command,
    /// Working directory inside the sandbox (default `/workspace`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Added to the sandbox's environment (the profile's `setup.env` and secrets).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Written to the command's standard input, which is then closed
    /// (without it, standard input is empty).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Kill the command and its whole process tree after this long
    /// (humantime, default `60s`, at most the daemon's `[access] exec_timeout_max`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// compose-ssh: the compose service to run in.
    #[serde(default)]
    pub service: Option<String>,
}

/// How an exec ended (the final `exit` event of a streamed exec).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecExit {
    /// The exit status; `null` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended it (`KILL`, `TERM`, ...), else `null`.
    pub signal: Option<String>,
    /// It outlived `timeout` and was killed with its process tree.
    pub timed_out: bool,
    /// Output beyond the cap was dropped (the command kept running).
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    pub duration_ms: u64,
    /// The kernel killed it at the sandbox's memory limit (`signal` is `KILL`).
    #[serde(default)]
    pub oom_killed: bool,
}

/// Answer of `POST /v1/sandboxes/{id}/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecResult {
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub timed_out: bool,
    /// Standard output as UTF-8 (invalid bytes replaced), at most the cap.
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
    /// The kernel killed it at the sandbox's memory limit (`signal` is `KILL`).
    #[serde(default)]
    pub oom_killed: bool,
}

/// Body of `POST /v1/sandboxes/{id}/processes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StartProcess {
    pub cmd: Command,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A label of the caller's, returned with the process.
    #[serde(default)]
    pub tag: Option<String>,
    /// compose-ssh: the compose service to run in.
    #[serde(default)]
    pub service: Option<String>,
}

/// Whether a background process still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Running,
    Exited,
}

/// A background process in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessInfo {
    /// `proc_…`
    pub id: String,
    /// Its pid inside the sandbox.
    pub pid: i32,
    pub cmd: Vec<String>,
    pub tag: Option<String>,
    pub state: ProcessState,
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    pub ended_at: Option<String>,
    /// Bytes of combined output written so far (the `offset` to follow from).
    pub output_bytes: u64,
}

/// Answer of `GET /v1/sandboxes/{id}/processes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessList {
    pub items: Vec<ProcessInfo>,
}

/// A signal a process can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SignalName {
    #[serde(rename = "KILL")]
    Kill,
    #[serde(rename = "TERM")]
    Term,
    #[serde(rename = "INT")]
    Int,
    #[serde(rename = "HUP")]
    Hup,
}

impl SignalName {
    /// The Linux signal number.
    pub fn number(self) -> i32 {
        match self {
            SignalName::Kill => 9,
            SignalName::Term => 15,
            SignalName::Int => 2,
            SignalName::Hup => 1,
        }
    }

    /// Parses `KILL`, `SIGKILL`, `kill`, `9` and the like.
    pub fn parse(s: &str) -> Option<Self> {
        let up = s.trim().to_ascii_uppercase();
        let name = up.strip_prefix("SIG").unwrap_or(&up);
        Some(match name {
            "KILL" | "9" => SignalName::Kill,
            "TERM" | "15" => SignalName::Term,
            "INT" | "2" => SignalName::Int,
            "HUP" | "1" => SignalName::Hup,
            _ => return None,
        })
    }
}

/// Linux signal numbers and their names (without `SIG`), as `signal`
/// fields carry them.
const SIGNALS: &[(i32, &str)] = &[
    (1, "HUP"),
    (2, "INT"),
    (3, "QUIT"),
    (4, "ILL"),
    (5, "TRAP"),
    (6, "ABRT"),
    (7, "BUS"),
    (8, "FPE"),
    (9, "KILL"),
    (10, "USR1"),
    (11, "SEGV"),
    (12, "USR2"),
    (13, "PIPE"),
    (14, "ALRM"),
    (15, "TERM"),
    (17, "CHLD"),
    (24, "XCPU"),
    (25, "XFSZ"),
    (31, "SYS"),
];

/// The name (without `SIG`) of Linux signal `n`, for `signal` fields
/// (`SIG<n>` for one not in the table).
pub fn signal_name(n: i32) -> String {
    match SIGNALS.iter().find(|(num, _)| *num == n) {
        Some((_, name)) => name.to_string(),
        None => format!("SIG{n}"),
    }
}

/// The number of the signal a `signal` field names (the inverse of [`signal_name`]).
pub fn signal_number(name: &str) -> Option<i32> {
    SIGNALS
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(num, _)| *num)
}

/// Body of `POST …/processes/{proc}/signal`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SendSignal {
    /// `KILL`, `TERM`, `INT` or `HUP`.
    pub signal: String,
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    /// A socket, fifo or device node.
    Other,
}

/// One entry of `GET /v1/sandboxes/{id}/files/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileEntry {
    pub name: String,
    /// Its path inside the sandbox.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: FileType,
    pub size: u64,
    /// Permission bits, e.g. `0644`.
    pub mode: String,
    /// RFC 3339.
    pub modified_at: Option<String>,
    /// Where a symlink points (not followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Answer of `GET /v1/sandboxes/{id}/files/list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileList {
    pub items: Vec<FileEntry>,
    /// More entries exist than the daemon lists at once (`[access] list_max_entries`).
    #[serde(default)]
    pub truncated: bool,
}

/// Answer of `PUT …/files` and `POST …/files/upload`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Written {
    /// Bytes written (file contents; for an upload, of every file unpacked).
    pub written: u64,
    /// Entries unpacked (uploads) or 1.
    #[serde(default)]
    pub entries: u64,
}

/// A TCP port listening inside a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PortInfo {
    pub port: u16,
    /// The address it listens on inside (`0.0.0.0`, `127.0.0.1`, `::`, ...).
    pub address: String,
}

/// Answer of `GET /v1/sandboxes/{id}/ports`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PortList {
    pub items: Vec<PortInfo>,
}

/// Body of `POST /v1/sandboxes/{id}/ssh-keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddSshKey {
    /// An OpenSSH public key line: `ssh-ed25519 AAAA… comment`
    /// (ed25519, ECDSA, or RSA of at least 2048 bits).
    pub public_key: String,
}

/// A public key that may open SSH sessions into a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SshKey {
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The key, without its comment.
    pub public_key: String,
    pub comment: String,
    /// RFC 3339.
    pub created_at: String,
}

/// Answer of `GET /v1/sandboxes/{id}/ssh-keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SshKeyList {
    pub items: Vec<SshKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_and_numbers_round_trip() {
        for &(n, name) in SIGNALS {
            assert_eq!(
                (signal_name(n), signal_number(name)),
                (name.to_string(), Some(n))
            );
        }
        assert_eq!(signal_name(40), "SIG40");
        assert_eq!(signal_number("SIG40"), None);
    }
}

/// One decision of a sandbox's egress proxy (`network: {mode: egress}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkDecision {
    /// When it was decided (RFC 3339, UTC).
    pub at: String,
    /// `allowed` or `denied`.
    pub decision: NetworkVerdict,
    /// How the destination was asked for: `CONNECT` (a tunnel, e.g. HTTPS),
    /// an HTTP method (`GET`, ... through the proxy), or `TLS` when a
    /// tunnel's TLS server name was what got refused.
    pub method: String,
    /// The name or address asked for.
    pub host: String,
    pub port: u16,
    /// The address connected to (or refused), when one was resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Why: the rule that allowed it, or what refused it.
    pub reason: String,
}

/// `allowed` or `denied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NetworkVerdict {
    Allowed,
    Denied,
}

/// `GET /v1/sandboxes/{id}/network-log`: the egress proxy's decisions for
/// one sandbox, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkLog {
    /// The newest decisions kept (at most `[egress] log_entries`), oldest first.
    pub items: Vec<NetworkDecision>,
    /// Decisions made but no longer kept (the oldest go first).
    pub dropped: u64,
    /// Decisions so far, by verdict (kept or not).
    pub allowed: u64,
    pub denied: u64,
}
