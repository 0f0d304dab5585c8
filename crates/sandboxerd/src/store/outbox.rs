//! The event outbox: events are appended with each transition (same
//! transaction) and delivered later, in order, by the dispatcher.
use serde::Serialize;

use super::{Db, EventRow, StoreError};
use sandboxer_api::Event;

/// An event with the sandbox facts a receiver needs, as POSTed to State Hub.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OutboxEvent {
    #[serde(skip)]
    pub seq: i64,
    pub id: String,
    pub sandbox_id: String,
    pub generation: u32,
    pub profile: String,
    pub extension: String,
    pub host: String,
    pub actor_type: String,
    pub actor: String,
    pub project: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub reason: String,
    /// Milliseconds since the epoch; rendered as RFC 3339 by the dispatcher.
    #[serde(skip)]
    pub at: i64,
    /// On the event that decided the end: why the sandbox ended.
    pub termination: Option<String>,
    /// The sandbox's `expires_at` now (milliseconds since the epoch).
    #[serde(skip)]
    pub expires_at: i64,
    /// The sandbox's termination detail, once it has one.
    #[serde(skip)]
    pub termination_detail: Option<String>,
}

/// `SELECT … FROM events e`, of `project`'s sandboxes only when given: a
/// consumer's feed leaves out the warm-pool past (generation 0) of the
/// sandboxes handed out to it.
fn scoped_events(project: Option<&str>) -> sqlx::QueryBuilder<'_, sqlx::Sqlite> {
    let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "SELECT e.seq, e.id, e.sandbox_id, e.generation, e.from_state, e.to_state, e.reason, e.at, e.termination FROM events e",
    );
    if let Some(p) = project {
        qb.push(" JOIN sandboxes s ON s.id = e.sandbox_id AND e.generation > 0 AND s.project = ")
            .push_bind(p);
    }
    qb
}

impl Db {
    /// Undelivered events, oldest first.
    pub async fn undelivered(&self, limit: u32) -> Result<Vec<OutboxEvent>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT e.seq, e.id, e.sandbox_id, e.generation, s.profile, s.extension, s.host, s.actor_type, s.actor, \
             s.project, e.from_state, e.to_state, e.reason, e.at, e.termination, s.expires_at, \
             s.termination_detail \
             FROM events e INDEXED BY events_undelivered JOIN sandboxes s ON s.id = e.sandbox_id \
             WHERE e.delivered_at IS NULL ORDER BY e.seq LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Mark events delivered.
    pub async fn mark_delivered(&self, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let now = super::now_ms();
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new("UPDATE events SET delivered_at = ");
        qb.push_bind(now).push(" WHERE seq IN (");
        let mut sep = qb.separated(", ");
        for s in seqs {
            sep.push_bind(*s);
        }
        qb.push(")");
        qb.build().execute(&self.writer).await?;
        Ok(())
    }

    /// How many events wait for delivery.
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM events INDEXED BY events_undelivered WHERE delivered_at IS NULL",
        )
        .fetch_one(&self.reader)
        .await?)
    }

    /// Events across sandboxes after event `after` (an id), oldest first,
    /// scoped to `project` when given. `None` when `after` is unknown.
    pub async fn events_after(
        &self,
        after: Option<&str>,
        project: Option<&str>,
        limit: u32,
    ) -> Result<Option<(Vec<Event>, Option<String>)>, StoreError> {
        let after_seq: i64 = match after {
            None => 0,
            // Scoped like the list itself, so another project's event id
            // is as unknown as one that never existed.
            Some(id) => match sqlx::query_scalar(
                "SELECT e.seq FROM events e JOIN sandboxes s ON s.id = e.sandbox_id \
                 WHERE e.id = ?1 AND (?2 IS NULL OR s.project = ?2)",
            )
            .bind(id)
            .bind(project)
            .fetch_optional(&self.reader)
            .await?
            {
                Some(seq) => seq,
                None => return Ok(None),
            },
        };
        let mut qb = scoped_events(project);
        qb.push(" WHERE e.seq > ")
            .push_bind(after_seq)
            .push(" ORDER BY e.seq LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows: Vec<EventRow> = qb.build_query_as().fetch_all(&self.reader).await?;
        let more = rows.len() > limit as usize;
        let items = rows
            .into_iter()
            .take(limit as usize)
            .map(EventRow::into_api)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more {
            items.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok(Some((items, next)))
    }

    /// The newest `limit` events, newest first (of `project`'s sandboxes
    /// only, without their warm-pool past, when given; of one sandbox when
    /// `sandbox` is): the status page.
    pub async fn recent_events(
        &self,
        project: Option<&str>,
        sandbox: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let mut qb = scoped_events(project);
        qb.push(" WHERE 1 = 1");
        if let Some(id) = sandbox {
            qb.push(" AND e.sandbox_id = ").push_bind(id);
        }
        qb.push(" ORDER BY e.seq DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows: Vec<EventRow> = qb.build_query_as().fetch_all(&self.reader).await?;
        rows.into_iter().map(EventRow::into_api).collect()
    }

    /// Whether any of `ids` is a sandbox of `project`.
    pub async fn any_in_project(&self, ids: &[String], project: &str) -> Result<bool, StoreError> {
        if ids.is_empty() {
            return Ok(false);
        }
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT EXISTS (SELECT 1 FROM sandboxes WHERE project = ",
        );
        qb.push_bind(project).push(" AND id IN (");
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(id);
        }
        qb.push("))");
        Ok(qb
            .build_query_scalar::<bool>()
            .fetch_one(&self.reader)
            .await?)
    }

    /// Live (assigned) sandboxes by state and host, of `project` when given.
    pub async fn live_counts(
        &self,
        project: Option<&str>,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT state, host, COUNT(*) FROM sandboxes WHERE state IN {} AND pool IS NULL \
             AND (?1 IS NULL OR project = ?1) GROUP BY state, host",
            super::HOLDING
        ))
        .bind(project)
        .fetch_all(&self.reader)
        .await?)
    }
}
