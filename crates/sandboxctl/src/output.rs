//! How `sandboxctl` ends and what it prints: the error type with its exit
//! codes and one-line message, and the writers to stdout and stderr that
//! every command shares.
use std::io::Write;

use sandboxctl::api::ProblemCode;
use sandboxctl::ClientError;
use serde::Serialize;

use crate::render;

/// Why a command did not succeed; [`CliError::exit_code`] says how the process ends.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API call failed (boxed: a problem body is large next to the other variants).
    #[error(transparent)]
    Client(Box<ClientError>),
    /// The call worked but the outcome is a failure (a sandbox that failed or
    /// did not become ready in time).
    #[error("{0}")]
    Failed(String),
    /// The command line is valid for clap but not for us (a key given twice).
    #[error("{0}")]
    Usage(String),
    /// End with this code, saying nothing (a command run in a sandbox ended so).
    #[error("exit {0}")]
    Exit(u8),
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        CliError::Client(Box::new(e))
    }
}

impl CliError {
    /// 1 for API errors and failed outcomes, 2 for usage errors, 3 when the
    /// daemon could not be reached.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(e) if matches!(**e, ClientError::Transport(_)) => 3,
            CliError::Client(e) if matches!(**e, ClientError::Invalid(_)) => 2,
            CliError::Usage(_) => 2,
            CliError::Exit(code) => *code,
            CliError::Client(_) | CliError::Failed(_) => 1,
        }
    }

    /// The error as problem+json: the daemon's problem as it sent it, or
    /// one made here (`code` `unreachable`, `usage`, `failed` or
    /// `invalid`) for errors of this side.
    pub fn problem_json(&self) -> serde_json::Value {
        let (code, status) = match self {
            CliError::Client(e) => match &**e {
                ClientError::Api { problem, .. } => {
                    return serde_json::to_value(problem).unwrap_or_default()
                }
                ClientError::Transport(_) => ("unreachable", None),
                ClientError::Invalid(_) => ("usage", None),
                _ => ("invalid", None),
            },
            CliError::Usage(_) => ("usage", None::<u16>),
            CliError::Failed(_) | CliError::Exit(_) => ("failed", None),
        };
        serde_json::json!({
            "type": "about:blank",
            "title": code,
            "status": status,
            "code": code,
            "detail": self.to_string(),
        })
    }

    /// The one line printed to stderr.
    pub fn message(&self) -> String {
        let client_error = match self {
            CliError::Client(e) => Some(&**e),
            _ => None,
        };
        match client_error {
            Some(ClientError::Api { problem, .. }) => {
                let detail = render::clean(&problem.detail);
                let code = render::clean(&problem.code);
                let line = match &problem.field {
                    Some(field) => {
                        format!("error: {detail} ({code}, field: {})", render::clean(field))
                    }
                    None => format!("error: {detail} ({code})"),
                };
                match hint(problem.problem_code()) {
                    Some(hint) => format!("{line}\n({hint})"),
                    None => line,
                }
            }
            Some(ClientError::Transport(msg)) => format!(
                "error: {}\n(is sandboxerd running there? set --url or SANDBOXER_URL)",
                render::clean(msg)
            ),
            _ => format!("error: {}", render::clean(&self.to_string())),
        }
    }
}

/// What the user can do about a problem, for the codes where there is
/// something to say beyond the detail.
fn hint(code: ProblemCode) -> Option<&'static str> {
    match code {
        ProblemCode::Unauthorized => Some("set --token or SANDBOXER_TOKEN"),
        ProblemCode::Forbidden => Some("this needs an operator token"),
        ProblemCode::InsufficientCredits => Some(
            "see `sandboxctl credits balance <project>`; an operator adds credits with `sandboxctl credits grant`",
        ),
        ProblemCode::TooManySandboxes => {
            Some("destroy sandboxes you no longer need (`sandboxctl list`), then retry")
        }
        ProblemCode::RateLimited
        | ProblemCode::TooManyConnections
        | ProblemCode::StorageUnavailable
        | ProblemCode::NoExtensionAvailable => Some("retry in a moment"),
        _ => None,
    }
}

/// Print `value` as pretty JSON.
pub fn emit_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Failed(format!("cannot encode the answer as JSON: {e}")))?;
    emit(&format!("{text}\n"));
    Ok(())
}

/// Writes to stdout. Errors are dropped on purpose: a closed pipe
/// (`sandboxctl list | head`) must not turn into a panic or an error.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Writes one line to stderr, ignoring a closed stderr.
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use sandboxctl::api::Problem;

    use super::*;

    fn api(field: Option<&str>) -> CliError {
        CliError::from(ClientError::Api {
            status: 422,
            problem: Problem {
                kind: "about:blank".into(),
                title: "Unprocessable Entity".into(),
                status: 422,
                detail: "ttl 9d is over the max 1d".into(),
                code: "ttl_too_long".into(),
                field: field.map(str::to_owned),
            },
        })
    }

    #[test]
    fn error_lines_and_exit_codes() {
        assert_eq!(
            api(None).message(),
            "error: ttl 9d is over the max 1d (ttl_too_long)"
        );
        assert_eq!(
            api(Some("ttl")).message(),
            "error: ttl 9d is over the max 1d (ttl_too_long, field: ttl)"
        );
        assert_eq!(api(None).exit_code(), 1);
        let mut unauthorized = api(None);
        if let CliError::Client(e) = &mut unauthorized {
            if let ClientError::Api { problem, .. } = &mut **e {
                problem.code = "unauthorized".into();
            }
        }
        assert!(unauthorized
            .message()
            .ends_with("(unauthorized)\n(set --token or SANDBOXER_TOKEN)"));
        let transport = CliError::from(ClientError::Transport(
            "could not connect to http://x/".into(),
        ));
        assert_eq!(transport.exit_code(), 3);
        assert!(transport.message().contains("http://x/"));
        assert_eq!(CliError::Usage("dup".into()).exit_code(), 2);
        assert_eq!(CliError::Failed("failed".into()).exit_code(), 1);
    }
}
