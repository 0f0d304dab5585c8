//! RFC 9457 problem details, the body of every error answer, and the
//! [`ProblemCode`] enum of every stable code the daemon answers.
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An error answer (`application/problem+json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` or a docs link).
    #[serde(rename = "type", default = "about_blank")]
    pub kind: String,
    /// Short human summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, naming the field where a field was wrong.
    pub detail: String,
    /// Stable machine-readable code, e.g. `profile_not_found`.
    // Kept as the string the server sent, so a code newer than this client
    // still decodes; `Problem::problem_code` reads it as a `ProblemCode`.
    #[cfg_attr(feature = "openapi", schema(value_type = ProblemCode))]
    pub code: String,
    /// The request field at fault, when there is one (`ttl`, `inputs.repo`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

fn about_blank() -> String {
    "about:blank".to_owned()
}

impl Problem {
    /// The problem's code as a [`ProblemCode`] ([`ProblemCode::Unknown`]
    /// for a code this build does not know).
    pub fn problem_code(&self) -> ProblemCode {
        ProblemCode::parse(&self.code)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.title, self.code, self.detail)
    }
}

impl std::error::Error for Problem {}

/// Declares [`ProblemCode`] from one list of `Variant = "code"`, so the
/// variants, their wire strings and [`ProblemCode::ALL`] cannot drift.
macro_rules! problem_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, )*) => {
        /// Every stable code the daemon answers: the `code` of a problem,
        /// and the `failure.code` of a sandbox or snapshot (a backend's
        /// failure is also answered as a problem by the host routes).
        /// Serialized as its snake_case string; `docs/errors.md` says when
        /// each happens and with which HTTP status (a test keeps the two
        /// lists equal).
        ///
        /// A daemon newer than this build may answer codes it does not
        /// know: they read as [`ProblemCode::Unknown`], never as an error.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ProblemCode {
            $( $(#[$doc])* $variant, )*
            /// A code this build does not know (from a newer daemon); the
            /// problem's `code` string still holds it.
            Unknown,
        }

        impl ProblemCode {
            /// Every code the daemon answers (not [`ProblemCode::Unknown`]).
            pub const ALL: &'static [ProblemCode] = &[$( ProblemCode::$variant, )*];

            /// The wire string, e.g. `sandbox_not_found`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( ProblemCode::$variant => $code, )*
                    ProblemCode::Unknown => "unknown",
                }
            }

            /// The code of a wire string; [`ProblemCode::Unknown`] for one
            /// this build does not know.
            pub fn parse(code: &str) -> ProblemCode {
                match code {
                    $( $code => ProblemCode::$variant, )*
                    _ => ProblemCode::Unknown,
                }
            }
        }
    };
}

problem_codes! {
    // The request as HTTP: malformed, unauthenticated, too big, too many.
    BadRequest = "bad_request",
    InvalidJson = "invalid_json",
    InvalidBody = "invalid_body",
    InvalidQuery = "invalid_query",
    UnknownParameter = "unknown_parameter",
    InvalidCursor = "invalid_cursor",
    InvalidHeader = "invalid_header",
    Unauthorized = "unauthorized",
    Forbidden = "forbidden",
    NotFound = "not_found",
    MethodNotAllowed = "method_not_allowed",
    PayloadTooLarge = "payload_too_large",
    UnsupportedMediaType = "unsupported_media_type",
    RateLimited = "rate_limited",
    TooManyConnections = "too_many_connections",
    Timeout = "timeout",
    Internal = "internal",
    StorageUnavailable = "storage_unavailable",
    // What a request names that does not exist.
    SandboxNotFound = "sandbox_not_found",
    ProfileNotFound = "profile_not_found",
    ProfileRejected = "profile_rejected",
    ExtensionNotFound = "extension_not_found",
    SnapshotNotFound = "snapshot_not_found",
    HostNotFound = "host_not_found",
    ProjectNotFound = "project_not_found",
    TemplateNotFound = "template_not_found",
    // Fields of a request the daemon refuses.
    InvalidDuration = "invalid_duration",
    TtlExceedsMax = "ttl_exceeds_max",
    MissingProfile = "missing_profile",
    UnknownInput = "unknown_input",
    MissingInput = "missing_input",
    InvalidInput = "invalid_input",
    InvalidLabel = "invalid_label",
    InvalidName = "invalid_name",
    InvalidConsumer = "invalid_consumer",
    UnknownHost = "unknown_host",
    InvalidAmount = "invalid_amount",
    InvalidReason = "invalid_reason",
    InvalidTime = "invalid_time",
    // A request that does not fit the state of things.
    IdempotencyConflict = "idempotency_conflict",
    NameTaken = "name_taken",
    InvalidState = "invalid_state",
    InsufficientCredits = "insufficient_credits",
    TooManySandboxes = "too_many_sandboxes",
    ExtensionUnavailable = "extension_unavailable",
    NoExtensionAvailable = "no_extension_available",
    // Snapshots, restore and fork.
    SnapshotUnsupported = "snapshot_unsupported",
    SnapshotIncompatible = "snapshot_incompatible",
    // Templates (ext.docker images built from a Dockerfile).
    InvalidTemplate = "invalid_template",
    TemplateBuildFailed = "template_build_failed",
    SnapshotQuotaExceeded = "snapshot_quota_exceeded",
    SnapshotCorrupt = "snapshot_corrupt",
    SnapshotUnavailable = "snapshot_unavailable",
    SnapshotTooLarge = "snapshot_too_large",
    SnapshotFailed = "snapshot_failed",
    SnapshotCancelled = "snapshot_cancelled",
    RestoreFailed = "restore_failed",
    // Backends: why a sandbox failed (or its teardown is retried).
    BackendUnavailable = "backend_unavailable",
    BackendLost = "backend_lost",
    SandboxExited = "sandbox_exited",
    ProvisionFailed = "provision_failed",
    NotReadyInTime = "not_ready_in_time",
    Interrupted = "interrupted",
    SecretUnavailable = "secret_unavailable",
    TeardownFailed = "teardown_failed",
    InvalidSandboxId = "invalid_sandbox_id",
    // Hosts reached over SSH (`ext.compose-ssh`).
    HostUnreachable = "host_unreachable",
    HostTimeout = "host_timeout",
    HostKeyMismatch = "host_key_mismatch",
    HostAuthFailed = "host_auth_failed",
    HostMisconfigured = "host_misconfigured",
    HostConnectionLost = "host_connection_lost",
    HostError = "host_error",
    HostFull = "host_full",
    EngineNotFound = "engine_not_found",
    UploadFailed = "upload_failed",
    ComposeNotAllowed = "compose_not_allowed",
    ComposeUpFailed = "compose_up_failed",
    ServiceExited = "service_exited",
    ReadyTimeout = "ready_timeout",
    // Reaching into a sandbox: exec, processes, files, ports, SSH keys.
    Unsupported = "unsupported",
    UnknownService = "unknown_service",
    InvalidCommand = "invalid_command",
    CommandNotFound = "command_not_found",
    ExecFailed = "exec_failed",
    InvalidCwd = "invalid_cwd",
    InvalidEnv = "invalid_env",
    InvalidSignal = "invalid_signal",
    InvalidTag = "invalid_tag",
    InvalidPath = "invalid_path",
    InvalidMode = "invalid_mode",
    InvalidDepth = "invalid_depth",
    InvalidPort = "invalid_port",
    UnsafePath = "unsafe_path",
    InvalidArchive = "invalid_archive",
    UnpackFailed = "unpack_failed",
    FileNotFound = "file_not_found",
    ProcessNotFound = "process_not_found",
    IsADirectory = "is_a_directory",
    NotADirectory = "not_a_directory",
    NotAFile = "not_a_file",
    PermissionDenied = "permission_denied",
    DiskFull = "disk_full",
    FileError = "file_error",
    BodyIncomplete = "body_incomplete",
    BodyUnreadable = "body_unreadable",
    TooManyExecs = "too_many_execs",
    TooManyProcesses = "too_many_processes",
    PortClosed = "port_closed",
    UpstreamError = "upstream_error",
    AgentUnreachable = "agent_unreachable",
    AgentError = "agent_error",
    InvalidSshKey = "invalid_ssh_key",
    TooManySshKeys = "too_many_ssh_keys",
    SshKeyNotFound = "ssh_key_not_found",
}

impl std::fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ProblemCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProblemCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Ok(ProblemCode::parse(&code))
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ProblemCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "Stable snake_case code; see docs/errors.md. A newer daemon may add codes: \
                 treat one you do not know as a generic error of its HTTP status.",
            ))
            .enum_values(Some(ProblemCode::ALL.iter().map(|c| c.as_str())))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ProblemCode {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_still_decode() {
        for code in ProblemCode::ALL {
            assert_eq!(ProblemCode::parse(code.as_str()), *code);
            let json = serde_json::to_string(code).expect("encode");
            assert_eq!(json, format!("\"{code}\""));
            let back: ProblemCode = serde_json::from_str(&json).expect("decode");
            assert_eq!(back, *code);
            let s = code.as_str();
            assert!(
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s} is not snake_case"
            );
        }
        let newer: ProblemCode = serde_json::from_str("\"from_the_future\"").expect("decode");
        assert_eq!(newer, ProblemCode::Unknown);
        let problem: Problem = serde_json::from_str(
            r#"{"title":"Teapot","status":418,"detail":"d","code":"from_the_future"}"#,
        )
        .expect("a problem with an unknown code decodes");
        assert_eq!(problem.code, "from_the_future");
        assert_eq!(problem.problem_code(), ProblemCode::Unknown);
    }

    /// The table under `## Codes` in `docs/errors.md` lists every code, one
    /// row each, and nothing that is not a code.
    #[test]
    fn docs_errors_lists_every_code() {
        let doc = include_str!("../../../docs/errors.md");
        let mut listed = Vec::new();
        let mut in_codes = false;
        for line in doc.lines() {
            if line.starts_with("## ") {
                in_codes = line == "## Codes";
            }
            // Rows of the code table: "| `code` | status | when |".
            if let Some(rest) = line.strip_prefix("| `").filter(|_| in_codes) {
                if let Some((code, _)) = rest.split_once('`') {
                    listed.push(code.to_owned());
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for code in &listed {
            assert!(seen.insert(code), "docs/errors.md lists `{code}` twice");
            assert_ne!(
                ProblemCode::parse(code),
                ProblemCode::Unknown,
                "docs/errors.md lists `{code}`, which is not a ProblemCode"
            );
        }
        for code in ProblemCode::ALL {
            assert!(
                seen.contains(&code.as_str().to_owned()),
                "ProblemCode::{code:?} (`{code}`) is missing from docs/errors.md"
            );
        }
    }
}
