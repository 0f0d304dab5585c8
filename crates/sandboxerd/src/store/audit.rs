//! The audit trail: one append-only row per mutating request.
use sandboxer_api::AuditEntry;

use super::{now_ms, to_time, Db, StoreError};

/// A request to record.
#[derive(Debug, Clone)]
pub struct NewAudit<'a> {
    pub actor_type: &'a str,
    pub actor: &'a str,
    pub project: &'a str,
    pub role: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub sandbox_id: Option<&'a str>,
    pub status: u16,
    pub code: Option<&'a str>,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    at: i64,
    actor_type: String,
    actor: String,
    project: String,
    role: String,
    method: String,
    path: String,
    sandbox_id: Option<String>,
    status: i64,
    code: Option<String>,
}

/// Filters of `GET /v1/audit`.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub project: Option<String>,
    pub actor: Option<String>,
    pub sandbox_id: Option<String>,
    /// Entries older than this sequence number (the cursor).
    pub before: Option<i64>,
    pub limit: u32,
}

impl Db {
    /// Append one audit row.
    pub async fn audit(&self, a: NewAudit<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at, actor_type, actor, project, role, method, path, sandbox_id, status, code) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(now_ms())
        .bind(a.actor_type)
        .bind(a.actor)
        .bind(a.project)
        .bind(a.role)
        .bind(a.method)
        .bind(a.path)
        .bind(a.sandbox_id)
        .bind(i64::from(a.status))
        .bind(a.code)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Audit entries, newest first.
    pub async fn audit_entries(
        &self,
        f: &AuditFilter,
    ) -> Result<(Vec<AuditEntry>, Option<String>), StoreError> {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT seq, at, actor_type, actor, project, role, method, path, sandbox_id, status, code FROM audit WHERE 1 = 1",
        );
        if let Some(p) = &f.project {
            qb.push(" AND project = ").push_bind(p.clone());
        }
        if let Some(a) = &f.actor {
            qb.push(" AND actor = ").push_bind(a.clone());
        }
        if let Some(s) = &f.sandbox_id {
            qb.push(" AND sandbox_id = ").push_bind(s.clone());
        }
        if let Some(b) = f.before {
            qb.push(" AND seq < ").push_bind(b);
        }
        qb.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(i64::from(f.limit) + 1);
        let rows: Vec<AuditRow> = qb.build_query_as().fetch_all(&self.reader).await?;
        let more = rows.len() > f.limit as usize;
        let items: Vec<(i64, AuditEntry)> = rows
            .into_iter()
            .take(f.limit as usize)
            .map(|r| {
                (
                    r.seq,
                    AuditEntry {
                        seq: r.seq,
                        at: to_time(r.at),
                        actor_type: r.actor_type,
                        actor: r.actor,
                        project: r.project,
                        role: r.role,
                        method: r.method,
                        path: r.path,
                        sandbox_id: r.sandbox_id,
                        status: u16::try_from(r.status).unwrap_or(0),
                        code: r.code,
                    },
                )
            })
            .collect();
        let next = if more {
            items.last().map(|(s, _)| s.to_string())
        } else {
            None
        };
        Ok((items.into_iter().map(|(_, e)| e).collect(), next))
    }

    /// Live sandboxes of a project (requested to active, or paused).
    pub async fn live_count(&self, project: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM sandboxes WHERE project = ? AND state IN {}",
            super::HOLDING
        ))
        .bind(project)
        .fetch_one(&self.reader)
        .await?)
    }
}
