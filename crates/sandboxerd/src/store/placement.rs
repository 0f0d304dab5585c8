//! Where a sandbox is placed: the host it asked for, and moving it to
//! another host after a failed placement.
use super::*;

impl Db {
    /// The host a create asked for (`placement.host`), if it did.
    pub async fn placement_host(&self, id: &str) -> Result<Option<String>, StoreError> {
        let host: Option<Option<String>> =
            sqlx::query_scalar("SELECT placement_host FROM sandboxes WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        Ok(host.flatten())
    }

    /// Move a sandbox that failed to start on host `from` (nothing was made
    /// there) to host `to` of the same extension, with an event saying why.
    /// `false` when the sandbox is no longer provisioning at `generation`
    /// on `from`.
    pub async fn move_host(
        &self,
        id: &str,
        generation: u32,
        from: &str,
        to: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.writer.begin().await?;
        let moved = sqlx::query(
            "UPDATE sandboxes SET host = ?, backend_state = NULL, updated_at = ? \
             WHERE id = ? AND generation = ? AND host = ? AND state = 'provisioning'",
        )
        .bind(to)
        .bind(now)
        .bind(id)
        .bind(generation)
        .bind(from)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !moved {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_event(
            &mut tx,
            id,
            generation,
            Some(SandboxState::Provisioning),
            SandboxState::Provisioning,
            reason,
            now,
        )
        .await?;
        self.commit(tx).await?;
        Ok(true)
    }
}
