//! Credits asked for by a client: what a sandbox would cost (an estimate,
//! routed as a create would be) and an operator's grant to a project.
use sandboxer_api::{Estimate, LedgerEntry, ProblemCode};

use super::create::place_error;
use super::error::{OpError, OpResult};
use super::validate;
use crate::ledger::MAX_CREDITS;
use crate::routing::{self, Needs};
use crate::store::Granted;
use crate::AppState;

/// The most one grant may add.
pub const MAX_GRANT: i64 = 1_000_000_000_000;

/// What a sandbox of `profile` would cost for `ttl` (the profile's default
/// when `None`), and where it would run now.
pub async fn estimate(
    state: &AppState,
    profile: Option<&str>,
    ttl: Option<&str>,
) -> OpResult<Estimate> {
    let Some(profile_id) = profile else {
        return Err(OpError::invalid(
            ProblemCode::MissingProfile,
            "profile",
            "`profile` is required",
        ));
    };
    let profile = validate::profile(state, profile_id)?;
    let ttl = validate::requested_ttl(ttl, profile)?;
    let placed = routing::place(state, profile, ttl, &Needs::default())
        .await
        .map_err(|e| place_error(profile_id, e))?;
    Ok(Estimate {
        profile: profile.spec.id.clone(),
        extension: placed.target.extension,
        credits: placed.target.estimate_credits,
        breakdown: placed.target.breakdown,
        route: placed.route,
    })
}

/// A grant's entry, and whether it is the replay of an earlier grant with
/// the same Idempotency-Key.
pub struct Grant {
    pub entry: LedgerEntry,
    pub replayed: bool,
}

/// Add `amount` credits to `project` for `reason`. With an
/// `idempotency_key`, a retry answers the entry written first.
#[tracing::instrument(skip_all, fields(project = %project, amount = amount))]
pub async fn grant(
    state: &AppState,
    project: &str,
    amount: i64,
    reason: &str,
    idempotency_key: Option<&str>,
) -> OpResult<Grant> {
    if !(1..=MAX_GRANT).contains(&amount) {
        return Err(OpError::invalid(
            ProblemCode::InvalidAmount,
            "amount",
            format!("`amount` must be a whole number of credits from 1 to {MAX_GRANT}"),
        ));
    }
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 512 || reason.chars().any(char::is_control) {
        return Err(OpError::invalid(
            ProblemCode::InvalidReason,
            "reason",
            "`reason` must be 1 to 512 characters without control characters",
        ));
    }
    match state
        .db
        .grant(project, amount, reason, idempotency_key)
        .await?
    {
        Granted::New(entry) => {
            // Sandboxes the budget paused may resume now.
            super::budget::spawn_pass(state);
            Ok(Grant {
                entry,
                replayed: false,
            })
        }
        Granted::Replayed(entry) => Ok(Grant {
            entry,
            replayed: true,
        }),
        Granted::KeyConflict => Err(OpError::conflict(
            ProblemCode::IdempotencyConflict,
            "this Idempotency-Key was already used for a different grant",
        )
        .field("Idempotency-Key")),
        Granted::OverLimit { balance } => Err(OpError::invalid(
            ProblemCode::InvalidAmount,
            "amount",
            format!(
                "the balance ({balance}) plus `amount` would pass the most a project may hold ({MAX_CREDITS})"
            ),
        )),
    }
}
