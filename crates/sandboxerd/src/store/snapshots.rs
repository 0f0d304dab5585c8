//! Snapshot rows and fork sources.
use std::str::FromStr;

use sandboxer_api::{Failure, Snapshot, SnapshotState};
use sqlx::{QueryBuilder, Sqlite};

use super::{now_ms, to_time, Db, StoreError};

/// A `snapshots` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SnapshotRow {
    pub id: String,
    pub sandbox_id: String,
    pub sandbox_generation: u32,
    pub profile: String,
    pub profile_version: u32,
    pub extension: String,
    pub host: String,
    pub project: String,
    pub label: Option<String>,
    pub state: String,
    pub size_bytes: Option<i64>,
    pub content_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub ready_at: Option<i64>,
    pub expires_at: i64,
    pub deleted_at: Option<i64>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
}

const SELECT: &str = "SELECT id, sandbox_id, sandbox_generation, profile, profile_version, extension, host, \
     project, label, state, size_bytes, content_bytes, sha256, created_at, updated_at, ready_at, expires_at, \
     deleted_at, failure_code, failure_message FROM snapshots";

impl SnapshotRow {
    /// The state.
    pub fn state(&self) -> Result<SnapshotState, StoreError> {
        SnapshotState::from_str(&self.state).map_err(|what| StoreError::Corrupt {
            id: self.id.clone(),
            what,
        })
    }

    /// The row as the API shows it.
    pub fn into_api(self) -> Result<Snapshot, StoreError> {
        let state = self.state()?;
        let failure = self.failure_code.clone().map(|code| Failure {
            code,
            message: self.failure_message.clone().unwrap_or_default(),
        });
        let bytes = |v: Option<i64>| v.and_then(|n| u64::try_from(n).ok());
        Ok(Snapshot {
            sandbox_generation: self.sandbox_generation,
            profile_version: self.profile_version,
            state,
            size_bytes: bytes(self.size_bytes),
            content_bytes: bytes(self.content_bytes),
            created_at: to_time(self.created_at),
            updated_at: to_time(self.updated_at),
            ready_at: self.ready_at.map(to_time),
            expires_at: to_time(self.expires_at),
            deleted_at: self.deleted_at.map(to_time),
            failure,
            id: self.id,
            sandbox_id: self.sandbox_id,
            profile: self.profile,
            extension: self.extension,
            host: self.host,
            project: self.project,
            label: self.label,
            sha256: self.sha256,
        })
    }
}

/// A snapshot about to be inserted (in `creating`).
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub id: String,
    pub sandbox_id: String,
    pub sandbox_generation: u32,
    pub profile: String,
    pub profile_version: u32,
    pub extension: String,
    pub host: String,
    pub project: String,
    pub label: Option<String>,
    pub now: i64,
    pub expires_at: i64,
}

/// What inserting a snapshot found.
#[derive(Debug)]
pub enum SnapshotCreated {
    /// Inserted in `creating`.
    New(Box<Snapshot>),
    /// The project already holds `quota` live (`creating` or `ready`) snapshots.
    OverQuota { quota: u32 },
}

/// Filters of `GET /v1/snapshots` and `GET /v1/sandboxes/{id}/snapshots`.
#[derive(Debug, Default, Clone)]
pub struct SnapshotFilter {
    pub sandbox_id: Option<String>,
    pub project: Option<String>,
    pub states: Vec<SnapshotState>,
    /// Include deleted snapshots (otherwise only when `states` names `deleted`).
    pub include_all: bool,
    pub cursor: Option<String>,
    pub limit: u32,
}

/// What a capture produced, recorded when the snapshot turns `ready`.
#[derive(Debug, Clone)]
pub struct Captured {
    pub sha256: String,
    pub size_bytes: u64,
    pub content_bytes: u64,
}

impl Db {
    /// Insert a snapshot in `creating`, unless its project already holds
    /// `quota` live snapshots. Count and insert share the one writer
    /// connection's transaction, so two creates cannot both take the last slot.
    pub async fn create_snapshot(
        &self,
        new: NewSnapshot,
        quota: u32,
    ) -> Result<SnapshotCreated, StoreError> {
        let mut tx = self.writer.begin().await?;
        let made = insert_snapshot(&mut tx, &new, quota).await?;
        match made {
            SnapshotCreated::New(_) => self.commit(tx).await?,
            SnapshotCreated::OverQuota { .. } => tx.rollback().await?,
        }
        Ok(made)
    }

    /// Sandbox `new.sandbox_id`'s exit snapshot, in one transaction: the
    /// snapshot inserted in `creating` and recorded as the sandbox's
    /// `exit_snapshot`, with `reason` in its events; or, over the quota,
    /// only `refused` in its events. Nothing when the sandbox is not on
    /// its way out or already has one (`None`).
    pub async fn create_exit_snapshot(
        &self,
        new: NewSnapshot,
        quota: u32,
        reason: &str,
        refused: &str,
    ) -> Result<Option<SnapshotCreated>, StoreError> {
        use sandboxer_api::SandboxState;
        let mut tx = self.writer.begin().await?;
        let Some(row) = super::sandboxes::fetch_in(&mut tx, &new.sandbox_id).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        let st = row.state()?;
        if !matches!(st, SandboxState::Expired | SandboxState::Destroying)
            || row.exit_snapshot.is_some()
        {
            tx.rollback().await?;
            return Ok(None);
        }
        let made = insert_snapshot(&mut tx, &new, quota).await?;
        let note = match &made {
            SnapshotCreated::New(_) => {
                sqlx::query("UPDATE sandboxes SET exit_snapshot = ? WHERE id = ?")
                    .bind(&new.id)
                    .bind(&new.sandbox_id)
                    .execute(&mut *tx)
                    .await?;
                reason
            }
            SnapshotCreated::OverQuota { .. } => refused,
        };
        super::sandboxes::insert_event(
            &mut tx,
            &new.sandbox_id,
            row.generation,
            Some(st),
            st,
            note,
            now_ms(),
        )
        .await?;
        self.commit(tx).await?;
        Ok(Some(made))
    }

    /// One snapshot row; with `project`, only if it belongs to that project.
    pub async fn get_snapshot_row(
        &self,
        id: &str,
        project: Option<&str>,
    ) -> Result<Option<SnapshotRow>, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(SELECT);
        qb.push(" WHERE id = ").push_bind(id);
        if let Some(p) = project {
            qb.push(" AND project = ").push_bind(p);
        }
        Ok(qb
            .build_query_as::<SnapshotRow>()
            .fetch_optional(&self.reader)
            .await?)
    }

    /// One snapshot; with `project`, only if it belongs to that project.
    pub async fn get_snapshot(
        &self,
        id: &str,
        project: Option<&str>,
    ) -> Result<Option<Snapshot>, StoreError> {
        self.get_snapshot_row(id, project)
            .await?
            .map(SnapshotRow::into_api)
            .transpose()
    }

    /// A page of snapshots, newest first.
    pub async fn list_snapshots(
        &self,
        f: &SnapshotFilter,
    ) -> Result<(Vec<Snapshot>, Option<String>), StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(SELECT);
        qb.push(" WHERE 1 = 1");
        super::push_states(
            &mut qb,
            f.states.iter().map(|s| s.as_str()),
            f.include_all,
            "deleted",
        );
        if let Some(s) = &f.sandbox_id {
            qb.push(" AND sandbox_id = ").push_bind(s.clone());
        }
        if let Some(p) = &f.project {
            qb.push(" AND project = ").push_bind(p.clone());
        }
        let (rows, next) = self
            .fetch_page(qb, f.cursor.as_deref(), f.limit, |r: &SnapshotRow| &r.id)
            .await?;
        let items = rows
            .into_iter()
            .map(SnapshotRow::into_api)
            .collect::<Result<_, _>>()?;
        Ok((items, next))
    }

    /// `creating → ready` with what the capture produced. `None` when the
    /// snapshot was no longer `creating` (deleted meanwhile): nothing written.
    pub async fn snapshot_ready(
        &self,
        id: &str,
        captured: &Captured,
    ) -> Result<Option<Snapshot>, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE snapshots SET state = 'ready', sha256 = ?, size_bytes = ?, content_bytes = ?, \
             ready_at = ?, updated_at = ? WHERE id = ? AND state = 'creating'",
        )
        .bind(&captured.sha256)
        .bind(i64::try_from(captured.size_bytes).unwrap_or(i64::MAX))
        .bind(i64::try_from(captured.content_bytes).unwrap_or(i64::MAX))
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&self.writer)
        .await?
        .rows_affected()
            == 1;
        if !done {
            return Ok(None);
        }
        self.get_snapshot(id, None).await
    }

    /// Move a snapshot in one of `from` to `failed` with `failure`. Answers
    /// whether it did.
    pub async fn snapshot_failed(
        &self,
        id: &str,
        from: &[SnapshotState],
        failure: &Failure,
    ) -> Result<bool, StoreError> {
        let mut qb =
            QueryBuilder::<Sqlite>::new("UPDATE snapshots SET state = 'failed', failure_code = ");
        qb.push_bind(failure.code.clone())
            .push(", failure_message = ")
            .push_bind(failure.message.clone())
            .push(", updated_at = ")
            .push_bind(now_ms())
            .push(" WHERE id = ")
            .push_bind(id)
            .push(" AND state IN (");
        let mut sep = qb.separated(", ");
        for s in from {
            sep.push_bind(s.as_str());
        }
        qb.push(")");
        Ok(qb.build().execute(&self.writer).await?.rows_affected() == 1)
    }

    /// Mark a snapshot `deleted` (any state). Answers the row as it was
    /// before, or `None` when there is no such snapshot (in `project`).
    pub async fn delete_snapshot(
        &self,
        id: &str,
        project: Option<&str>,
    ) -> Result<Option<(SnapshotState, Snapshot)>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let mut qb = QueryBuilder::<Sqlite>::new(SELECT);
        qb.push(" WHERE id = ").push_bind(id);
        if let Some(p) = project {
            qb.push(" AND project = ").push_bind(p);
        }
        let Some(before) = qb
            .build_query_as::<SnapshotRow>()
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.rollback().await?;
            return Ok(None);
        };
        let was = before.state()?;
        if was != SnapshotState::Deleted {
            let now = now_ms();
            sqlx::query(
                "UPDATE snapshots SET state = 'deleted', deleted_at = ?, updated_at = ? WHERE id = ?",
            )
            .bind(now)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let after = sqlx::query_as::<_, SnapshotRow>(&format!("{SELECT} WHERE id = ?"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        self.commit(tx).await?;
        match after {
            Some(row) => Ok(Some((was, row.into_api()?))),
            None => Ok(None),
        }
    }

    /// Whether any snapshot that is not `deleted` names the blob `sha256`.
    pub async fn blob_in_use(&self, sha256: &str) -> Result<bool, StoreError> {
        // The writer sees every committed write; a reader could lag behind
        // the capture that just committed a row naming this blob.
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM snapshots WHERE sha256 = ? AND state <> 'deleted'",
        )
        .bind(sha256)
        .fetch_one(&self.writer)
        .await?;
        Ok(n > 0)
    }

    /// Every blob name that a snapshot not `deleted` holds.
    pub async fn blobs_in_use(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT sha256 FROM snapshots WHERE sha256 IS NOT NULL AND state <> 'deleted'",
        )
        .fetch_all(&self.writer)
        .await?;
        Ok(rows.into_iter().map(|(s,)| s).collect())
    }

    /// Snapshots in `creating` (for the start-up pass).
    pub async fn creating_snapshots(&self) -> Result<Vec<SnapshotRow>, StoreError> {
        Ok(
            sqlx::query_as::<_, SnapshotRow>(&format!("{SELECT} WHERE state = 'creating'"))
                .fetch_all(&self.reader)
                .await?,
        )
    }

    /// Ids of `ready`/`failed` snapshots past `expires_at`, at most `limit`.
    pub async fn due_snapshot_expiries(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM snapshots WHERE state IN ('ready','failed') AND expires_at <= ? \
             ORDER BY expires_at LIMIT ?",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Record that sandbox `sandbox_id` starts from snapshot `snapshot_id`.
    pub async fn set_fork_source(
        &self,
        sandbox_id: &str,
        snapshot_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sandbox_forks (sandbox_id, snapshot_id, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (sandbox_id) DO UPDATE SET snapshot_id = excluded.snapshot_id",
        )
        .bind(sandbox_id)
        .bind(snapshot_id)
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The snapshot a sandbox was forked from, if any.
    pub async fn fork_source(&self, sandbox_id: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT snapshot_id FROM sandbox_forks WHERE sandbox_id = ?")
                .bind(sandbox_id)
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.map(|(s,)| s))
    }

    /// Live (`ready`/`active`) sandboxes as `(id, extension, backend_state)`,
    /// for the start-up pass that finishes interrupted restores.
    pub async fn live_sandbox_handles(
        &self,
    ) -> Result<Vec<(String, String, Option<String>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, extension, backend_state FROM sandboxes WHERE state IN ('ready','active')",
        )
        .fetch_all(&self.reader)
        .await?)
    }
}

/// Inserts `new` in `creating` unless the project holds `quota` live
/// snapshots already.
async fn insert_snapshot(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    new: &NewSnapshot,
    quota: u32,
) -> Result<SnapshotCreated, StoreError> {
    let (live,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM snapshots WHERE project = ? AND state IN ('creating','ready')",
    )
    .bind(&new.project)
    .fetch_one(&mut **tx)
    .await?;
    if live >= i64::from(quota) {
        return Ok(SnapshotCreated::OverQuota { quota });
    }
    sqlx::query(
        "INSERT INTO snapshots (id, sandbox_id, sandbox_generation, profile, profile_version, extension, host, \
         project, label, state, created_at, updated_at, expires_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'creating', ?, ?, ?)",
    )
    .bind(&new.id)
    .bind(&new.sandbox_id)
    .bind(new.sandbox_generation)
    .bind(&new.profile)
    .bind(new.profile_version)
    .bind(&new.extension)
    .bind(&new.host)
    .bind(&new.project)
    .bind(&new.label)
    .bind(new.now)
    .bind(new.now)
    .bind(new.expires_at)
    .execute(&mut **tx)
    .await?;
    let row = sqlx::query_as::<_, SnapshotRow>(&format!("{SELECT} WHERE id = ?"))
        .bind(&new.id)
        .fetch_optional(&mut **tx)
        .await?;
    match row {
        Some(row) => Ok(SnapshotCreated::New(Box::new(row.into_api()?))),
        None => Err(StoreError::Corrupt {
            id: new.id.clone(),
            what: "inserted snapshot not found".into(),
        }),
    }
}
