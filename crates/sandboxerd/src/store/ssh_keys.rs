//! Public keys registered per sandbox for the SSH gateway.
use sandboxer_api::SshKey;

use super::{now_ms, to_time, Db, StoreError};

/// The most keys one sandbox holds.
pub const MAX_SSH_KEYS: i64 = 32;

/// What adding a key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAdded {
    Added(SshKey),
    /// The same key was there already (adding is idempotent).
    Existing(SshKey),
    /// The sandbox holds [`MAX_SSH_KEYS`] already.
    Full,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    fingerprint: String,
    public_key: String,
    comment: String,
    created_at: i64,
}

impl From<KeyRow> for SshKey {
    fn from(r: KeyRow) -> Self {
        SshKey {
            fingerprint: r.fingerprint,
            public_key: r.public_key,
            comment: r.comment,
            created_at: to_time(r.created_at).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

impl Db {
    /// Registers `public_key` (checked by the caller) for sandbox `sandbox_id`.
    pub async fn add_ssh_key(
        &self,
        sandbox_id: &str,
        fingerprint: &str,
        public_key: &str,
        comment: &str,
    ) -> Result<KeyAdded, StoreError> {
        let mut tx = self.writer.begin().await?;
        let existing: Option<KeyRow> = sqlx::query_as(
            "SELECT fingerprint, public_key, comment, created_at FROM sandbox_ssh_keys WHERE sandbox_id = ? AND fingerprint = ?",
        )
        .bind(sandbox_id)
        .bind(fingerprint)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            return Ok(KeyAdded::Existing(row.into()));
        }
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM sandbox_ssh_keys WHERE sandbox_id = ?")
                .bind(sandbox_id)
                .fetch_one(&mut *tx)
                .await?;
        if count >= MAX_SSH_KEYS {
            return Ok(KeyAdded::Full);
        }
        let now = now_ms();
        sqlx::query(
            "INSERT INTO sandbox_ssh_keys (sandbox_id, fingerprint, public_key, comment, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(sandbox_id)
        .bind(fingerprint)
        .bind(public_key)
        .bind(comment)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(KeyAdded::Added(
            KeyRow {
                fingerprint: fingerprint.into(),
                public_key: public_key.into(),
                comment: comment.into(),
                created_at: now,
            }
            .into(),
        ))
    }

    /// The keys of sandbox `sandbox_id`, oldest first.
    pub async fn ssh_keys(&self, sandbox_id: &str) -> Result<Vec<SshKey>, StoreError> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT fingerprint, public_key, comment, created_at FROM sandbox_ssh_keys WHERE sandbox_id = ? ORDER BY created_at, fingerprint",
        )
        .bind(sandbox_id)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(SshKey::from).collect())
    }

    /// Whether `fingerprint` is registered for sandbox `sandbox_id`.
    pub async fn has_ssh_key(
        &self,
        sandbox_id: &str,
        fingerprint: &str,
    ) -> Result<bool, StoreError> {
        let found: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM sandbox_ssh_keys WHERE sandbox_id = ? AND fingerprint = ?",
        )
        .bind(sandbox_id)
        .bind(fingerprint)
        .fetch_optional(&self.reader)
        .await?;
        Ok(found.is_some())
    }

    /// Removes a key; whether it was there.
    pub async fn remove_ssh_key(
        &self,
        sandbox_id: &str,
        fingerprint: &str,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM sandbox_ssh_keys WHERE sandbox_id = ? AND fingerprint = ?")
                .bind(sandbox_id)
                .bind(fingerprint)
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() > 0)
    }
}
