//! What an operator asks of a placement host: its live facts, and what
//! sand-boxer left on it that no live sandbox owns (listed, or removed).
use std::collections::BTreeSet;

use sandboxer_api::{HostInspect, StaleReport};

use super::error::{Missing, OpError, OpResult, Refusal};
use super::stale::{self, StaleError};
use crate::extensions::ExtError;
use crate::AppState;

/// Host `id` must be configured.
fn known(state: &AppState, id: &str) -> OpResult<()> {
    if state.settings.hosts.iter().any(|h| h.id == id) {
        Ok(())
    } else {
        Err(OpError::not_found(Missing::Host, id))
    }
}

/// A host that could not be asked: refused with the backend's own code.
fn unreachable(e: ExtError) -> OpError {
    tracing::warn!(code = %e.code, message = %e.message, "host query failed");
    OpError::refused(Refusal::Upstream, e.code, e.message)
}

/// Live facts from host `id`: engine and version, load, memory, disk of
/// its workdir, labelled containers and workspaces.
#[tracing::instrument(skip_all, fields(host = %id))]
pub async fn inspect(state: &AppState, id: &str) -> OpResult<HostInspect> {
    known(state, id)?;
    let ext = state.extensions.inventory_for(id);
    let Some(inv) = ext.as_deref().and_then(|e| e.inventory()) else {
        return Err(OpError::not_found(Missing::Host, id));
    };
    inv.inspect(id).await.map_err(unreachable)
}

/// What sand-boxer left on host `id` that no live sandbox owns; with
/// `apply`, removed (each sandbox's leftovers under its lock), and what
/// could not be removed listed in `errors`.
#[tracing::instrument(skip_all, fields(host = %id, apply = apply))]
pub async fn stale_report(state: &AppState, id: &str, apply: bool) -> OpResult<StaleReport> {
    known(state, id)?;
    let items = match stale::stale_items(state, id).await {
        Ok(items) => items,
        Err(StaleError::Host(e)) => return Err(unreachable(e)),
        Err(StaleError::Store(e)) => return Err(e.into()),
    };
    let mut report = StaleReport {
        host: id.to_owned(),
        items,
        applied: false,
        errors: Vec::new(),
    };
    if apply {
        let ids: BTreeSet<String> = report.items.iter().map(|i| i.sandbox_id.clone()).collect();
        let (_, errors) = stale::reap(state, id, &ids).await;
        report.errors = errors;
        report.applied = true;
    }
    Ok(report)
}
