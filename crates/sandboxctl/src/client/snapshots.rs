//! Snapshots: create, list, get, delete, restore in place.
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use sandboxer_api::{CreateSnapshot, Page, RestoreSnapshot, Sandbox, Snapshot};

use super::query::{wait_pairs, SnapshotQuery};
use super::{check_id, to_json, Client, ClientError, RESTORE_WAIT};

impl Client {
    /// `POST /v1/sandboxes/{id}/snapshots[?wait=..]`: snapshots the
    /// sandbox's workspace. Without `wait`, 202 with the snapshot `creating`;
    /// with it, 201 once `ready`, 200 when it `failed` (see `failure`), or
    /// 202 when the wait ran out. Answers the status and the snapshot.
    pub async fn create_snapshot(
        &self,
        sandbox_id: &str,
        label: Option<String>,
        wait: Option<Duration>,
    ) -> Result<(u16, Snapshot), ClientError> {
        let id = check_id(sandbox_id)?;
        let url = self.endpoint(&["v1", "sandboxes", id, "snapshots"], &wait_pairs(wait));
        let body = to_json(&CreateSnapshot { label })?;
        self.call(Method::POST, url, Some(body), HeaderMap::new(), wait)
            .await
    }

    /// One page of snapshots matching `q` (of one sandbox when `q.sandbox` is set).
    pub async fn list_snapshots(&self, q: &SnapshotQuery) -> Result<Page<Snapshot>, ClientError> {
        let url = self.snapshots_url(q, q.cursor.as_deref())?;
        self.call_ok(Method::GET, url, None, None).await
    }

    /// Every snapshot matching `q`, following `next_cursor` from `q.cursor`.
    pub async fn list_all_snapshots(
        &self,
        q: &SnapshotQuery,
    ) -> Result<Vec<Snapshot>, ClientError> {
        if let Some(sandbox) = &q.sandbox {
            check_id(sandbox)?;
        }
        self.all_pages(q.cursor.clone(), |cursor| {
            // The id was checked above, so building the URL cannot fail.
            self.snapshots_url(q, cursor)
                .unwrap_or_else(|_| self.base.clone())
        })
        .await
    }

    fn snapshots_url(&self, q: &SnapshotQuery, cursor: Option<&str>) -> Result<Url, ClientError> {
        let mut q = q.clone();
        q.cursor = cursor.map(str::to_owned);
        Ok(match &q.sandbox {
            Some(sandbox) => {
                let id = check_id(sandbox)?;
                self.endpoint(&["v1", "sandboxes", id, "snapshots"], &q.to_pairs())
            }
            None => self.endpoint(&["v1", "snapshots"], &q.to_pairs()),
        })
    }

    /// `GET /v1/snapshots/{id}`: one snapshot.
    pub async fn get_snapshot(&self, id: &str) -> Result<Snapshot, ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "snapshots", id], &[]);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `DELETE /v1/snapshots/{id}`: deletes a snapshot (idempotent: a deleted
    /// one answers itself again) and answers it, state `deleted`.
    pub async fn delete_snapshot(&self, id: &str) -> Result<Snapshot, ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "snapshots", id], &[]);
        self.call_ok(Method::DELETE, url, None, None).await
    }

    /// `POST /v1/sandboxes/{id}/restore`: rolls the sandbox's workspace back
    /// to `snapshot_id` in place; answers the sandbox. A damaged archive is
    /// a 409 `snapshot_corrupt` and leaves the workspace as it was.
    pub async fn restore(
        &self,
        sandbox_id: &str,
        snapshot_id: &str,
    ) -> Result<Sandbox, ClientError> {
        let id = check_id(sandbox_id)?;
        let url = self.endpoint(&["v1", "sandboxes", id, "restore"], &[]);
        let body = to_json(&RestoreSnapshot {
            snapshot_id: snapshot_id.to_owned(),
        })?;
        // A restore of a large archive takes a while; give it the long-poll margin.
        self.call_ok(Method::POST, url, Some(body), Some(RESTORE_WAIT))
            .await
    }
}
