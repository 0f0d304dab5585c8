//! The one error type of the operations: a refusal with its stable code,
//! the field at fault and a detail for people, or a storage error. It
//! knows nothing of HTTP; `http/error.rs` turns it into a problem (and
//! picks the status from [`Refusal`]) in one place.
use sandboxer_api::ProblemCode;

use crate::store::{Shortfall, StoreError};

/// How a request was refused; decides the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A field the operation does not accept (422).
    Invalid,
    /// Something the request names does not exist, or not for this caller (404).
    NotFound,
    /// It does not fit the state things are in (409).
    Conflict,
    /// The caller may not do it (403).
    Forbidden,
    /// The project's credits cannot cover what it must reserve (402).
    Credits,
    /// The project holds as many live sandboxes as it may; later may work (429).
    Busy,
    /// Nothing can take it now (503).
    Unavailable,
    /// The backend failed; nothing was changed (500).
    Failed,
    /// A host the request needs could not be asked; the code is the
    /// backend's (502).
    Upstream,
}

/// Something a request names, which may not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Sandbox,
    Profile,
    Extension,
    Snapshot,
    Host,
}

impl Missing {
    /// Its `*_not_found` code.
    pub fn code(self) -> ProblemCode {
        match self {
            Missing::Sandbox => ProblemCode::SandboxNotFound,
            Missing::Profile => ProblemCode::ProfileNotFound,
            Missing::Extension => ProblemCode::ExtensionNotFound,
            Missing::Snapshot => ProblemCode::SnapshotNotFound,
            Missing::Host => ProblemCode::HostNotFound,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Missing::Sandbox => "sandbox",
            Missing::Profile => "profile",
            Missing::Extension => "extension",
            Missing::Snapshot => "snapshot",
            Missing::Host => "host",
        }
    }
}

/// Why an operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request was refused; nothing was changed.
    #[error("{detail} ({code})")]
    Refused {
        how: Refusal,
        code: ProblemCode,
        detail: String,
        /// The request field at fault (`ttl`, `inputs.repo`, `Idempotency-Key`).
        field: Option<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an operation answers.
pub type OpResult<T> = Result<T, OpError>;

impl OpError {
    /// A refusal of kind `how` with `code`.
    pub fn refused(how: Refusal, code: ProblemCode, detail: impl Into<String>) -> Self {
        OpError::Refused {
            how,
            code,
            detail: detail.into(),
            field: None,
        }
    }

    /// A field the operation does not accept.
    pub fn invalid(code: ProblemCode, field: &str, detail: impl Into<String>) -> Self {
        Self::refused(Refusal::Invalid, code, detail).field(field)
    }

    /// A request that does not fit the state things are in.
    pub fn conflict(code: ProblemCode, detail: impl Into<String>) -> Self {
        Self::refused(Refusal::Conflict, code, detail)
    }

    /// 409 `invalid_state`: `what` (`sandbox sbx_…`) is in `state`, and
    /// `only` says what the request needs (`ready or active sandboxes can be
    /// touched`).
    pub fn wrong_state(what: &str, state: impl std::fmt::Display, only: &str) -> Self {
        Self::conflict(
            ProblemCode::InvalidState,
            format!("{what} is `{state}`; only {only}"),
        )
    }

    /// `what` `id` does not exist (for this caller).
    pub fn not_found(what: Missing, id: &str) -> Self {
        Self::refused(
            Refusal::NotFound,
            what.code(),
            format!("{} `{id}` not found", what.noun()),
        )
    }

    /// The project's credits cannot cover what `what` must reserve.
    pub fn insufficient(short: Shortfall, project: &str, what: &str) -> Self {
        let whose = if project.is_empty() {
            "the project".to_owned()
        } else {
            format!("project `{project}`")
        };
        Self::refused(
            Refusal::Credits,
            ProblemCode::InsufficientCredits,
            format!(
                "{whose} has {} credits available; {what} needs {} reserved",
                short.available, short.needed
            ),
        )
    }

    /// The same error, naming the request field at fault.
    pub fn field(mut self, name: &str) -> Self {
        if let OpError::Refused { field, .. } = &mut self {
            *field = Some(name.to_owned());
        }
        self
    }
}
