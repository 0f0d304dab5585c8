//! The start-up pass: rows a previous run left in flight are finished before
//! the API serves, so no sandbox stays in a state nobody will move it out of.
use sandboxer_api::{Failure, SandboxState};

use crate::store::{Change, StoreError};
use crate::AppState;

/// Finish every unsettled row: interrupted provisions are torn down and
/// `failed` (`interrupted`); interrupted teardowns run again.
pub async fn recover(state: &AppState) -> Result<usize, StoreError> {
    let rows = state.db.unsettled().await?;
    let count = rows.len();
    for row in rows {
        let current = row.state()?;
        match current {
            SandboxState::Requested | SandboxState::Provisioning => {
                let _guard = state.locks.lock(&row.id).await;
                if let Some(ext) = state.extensions.get(&row.extension) {
                    if let Err(e) = ext.teardown(&row.id, row.backend_state().as_ref()).await {
                        tracing::warn!(sandbox_id = %row.id, error = %e, "teardown of an interrupted provision failed");
                    }
                }
                let change = Change {
                    reason: "interrupted: the daemon stopped while provisioning",
                    failure: Some(Some(Failure {
                        code: "interrupted".into(),
                        message: "sandboxerd stopped while this sandbox was being provisioned; it was torn down".into(),
                    })),
                    ..Change::default()
                };
                state
                    .db
                    .transition(&row.id, &[current], SandboxState::Failed, change)
                    .await?;
            }
            SandboxState::Destroying | SandboxState::Expired => {
                tokio::spawn(super::destroy(state.clone(), row.id.clone()));
            }
            _ => {}
        }
    }
    Ok(count)
}
