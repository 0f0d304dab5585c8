//! Queries of the reaper's sweeps: each is one indexed query.
use super::{Db, StoreError, HOLDING};

impl Db {
    /// Live sandboxes whose `expires_at` has passed (oldest expiry first).
    pub async fn due_expiries(&self, now: i64, limit: u32) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT id FROM sandboxes INDEXED BY sandboxes_live_expiry \
             WHERE state IN {HOLDING} AND expires_at <= ? \
             ORDER BY expires_at LIMIT ?"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Ready or active sandboxes of `profile` idle since `cutoff` or longer.
    pub async fn due_idle(
        &self,
        profile: &str,
        cutoff: i64,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sandboxes INDEXED BY sandboxes_live_activity \
             WHERE state IN ('ready','active') AND last_activity_at <= ? AND profile = ? AND pool IS NULL \
             ORDER BY last_activity_at LIMIT ?",
        )
        .bind(cutoff)
        .bind(profile)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Sandboxes on their way out whose (next) teardown attempt is due.
    pub async fn due_teardowns(&self, now: i64, limit: u32) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sandboxes WHERE state IN ('destroying','expired') \
             AND (next_teardown_at IS NULL OR next_teardown_at <= ?) \
             ORDER BY next_teardown_at LIMIT ?",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Record a failed teardown: the row stays where it is, to be retried at `next_at`.
    pub async fn teardown_failed(
        &self,
        id: &str,
        attempts: i64,
        next_at: i64,
        message: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sandboxes SET teardown_attempts = ?, next_teardown_at = ?, failure_code = 'teardown_failed', \
             failure_message = ?, updated_at = ? WHERE id = ? AND state IN ('destroying','expired')",
        )
        .bind(attempts)
        .bind(next_at)
        .bind(message)
        .bind(super::now_ms())
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}
