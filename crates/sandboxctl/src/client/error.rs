//! [`ClientError`], and how a failed answer or a failed connection becomes one.
use reqwest::{Method, StatusCode, Url};
use sandboxer_api::{Problem, ProblemCode};

/// Error bodies that are not problem+json are cut to this many bytes in
/// the synthesized problem's `detail` (a proxy's HTML page is of no use whole).
const MAX_DETAIL_BYTES: usize = 4096;

/// Everything that can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a non-2xx status. `problem` is its
    /// problem+json body, or one synthesized with code `http_<status>` and
    /// the body text as detail when the body was not a problem.
    #[error("{} ({}), HTTP {status}", problem.detail, problem.code)]
    Api {
        /// The HTTP status of the answer.
        status: u16,
        /// The problem the server reported.
        problem: Problem,
    },
    /// The daemon could not be reached, or the request timed out; the
    /// message names the URL.
    #[error("{0}")]
    Transport(String),
    /// The server answered 2xx but with a body that is not what the API promises.
    #[error("{0}")]
    Decode(String),
    /// The client or request could not be built from the given input
    /// (a malformed base URL, a token or idempotency key that is not a valid
    /// header value, an empty id); nothing was sent.
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The HTTP status when the server answered, else `None`.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The problem's stable `code` when the server answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { problem, .. } => Some(problem.code.as_str()),
            _ => None,
        }
    }

    /// The problem's code as a [`ProblemCode`] when the server answered with
    /// an error ([`ProblemCode::Unknown`] for a code newer than this client,
    /// and for an error answer that was not a problem).
    pub fn problem_code(&self) -> Option<ProblemCode> {
        match self {
            ClientError::Api { problem, .. } => Some(problem.problem_code()),
            _ => None,
        }
    }
}

/// Maps a non-2xx answer to [`ClientError::Api`]: its problem+json body, or
/// a problem made up from the status and the body text.
pub(crate) fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let code = status.as_u16();
    if let Ok(problem) = serde_json::from_slice::<Problem>(body) {
        return ClientError::Api {
            status: code,
            problem,
        };
    }
    let title = status.canonical_reason().unwrap_or("HTTP error").to_owned();
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let detail = if text.is_empty() {
        format!("HTTP {code} {title} with an empty body")
    } else {
        truncate(text, MAX_DETAIL_BYTES)
    };
    ClientError::Api {
        status: code,
        problem: Problem {
            kind: "about:blank".to_owned(),
            title,
            status: code,
            detail,
            code: format!("http_{code}"),
            field: None,
        },
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes more)", &s[..end], s.len() - end)
}

/// A reqwest failure as [`ClientError::Transport`], naming the URL.
pub(super) fn transport_error(method: &Method, url: &Url, err: &reqwest::Error) -> ClientError {
    let what = if err.is_timeout() {
        "timed out waiting for"
    } else if err.is_connect() {
        "could not connect to"
    } else {
        "could not reach"
    };
    ClientError::Transport(format!("{what} {url} ({method}): {}", chain(err)))
}

/// An error and its sources as one line, without repeating a message or the URL.
pub(super) fn chain(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    // reqwest's own message embeds the URL, which the caller already names.
    let without_url = {
        let msg = err.to_string();
        match err.url() {
            Some(url) => msg.replace(&format!(" for url ({url})"), ""),
            None => msg,
        }
    };
    parts.push(without_url);
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        let msg = e.to_string();
        if parts.last() != Some(&msg) {
            parts.push(msg);
        }
        source = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_bodies_are_kept() {
        let body = br#"{"type":"about:blank","title":"Not Found","status":404,
            "detail":"no sandbox sbx_1","code":"sandbox_not_found"}"#;
        match api_error(StatusCode::NOT_FOUND, body) {
            ClientError::Api { status, problem } => {
                assert_eq!(status, 404);
                assert_eq!(problem.code, "sandbox_not_found");
                assert_eq!(problem.detail, "no sandbox sbx_1");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn non_problem_bodies_become_problems() {
        let err = api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            b"Failed to deserialize the JSON body\n",
        );
        match err {
            ClientError::Api { status, problem } => {
                assert_eq!(status, 422);
                assert_eq!(problem.code, "http_422");
                assert_eq!(problem.status, 422);
                assert_eq!(problem.title, "Unprocessable Entity");
                assert_eq!(problem.detail, "Failed to deserialize the JSON body");
            }
            other => panic!("unexpected {other:?}"),
        }
        // JSON that is not a problem, and an empty body.
        let err = api_error(StatusCode::SERVICE_UNAVAILABLE, br#"{"status":"starting"}"#);
        assert_eq!(err.code(), Some("http_503"));
        let err = api_error(StatusCode::BAD_GATEWAY, b"");
        match err {
            ClientError::Api { problem, .. } => {
                assert!(problem.detail.contains("502"), "{}", problem.detail)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn huge_error_bodies_are_cut_on_a_char_boundary() {
        let body = "é".repeat(MAX_DETAIL_BYTES);
        match api_error(StatusCode::INTERNAL_SERVER_ERROR, body.as_bytes()) {
            ClientError::Api { problem, .. } => {
                assert!(problem.detail.len() < MAX_DETAIL_BYTES + 64);
                assert!(problem.detail.ends_with("bytes more)"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
