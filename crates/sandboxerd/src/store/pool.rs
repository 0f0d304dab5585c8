//! Warm-pool rows: members made ahead of demand, counted, and claimed by a
//! create in one transaction (see `lifecycle::pool` and `docs/pools.md`).
//!
//! An unassigned member is an ordinary `sandboxes` row with `pool` set to
//! its profile, `project` [`POOL_PROJECT`], generation 0, no price and no
//! reservation, and `expires_at` at made + `max_age`. A claim turns it into
//! the consumer's sandbox (generation 1, the consumer's labels and lifetime,
//! billed from the claim on) under the same checks as an insert.
use sandboxer_api::SandboxState;
use sqlx::Sqlite;

use super::{
    fetch_in, insert_event, ledger, now_ms, Billing, Created, Db, NewSandbox, SandboxRow,
    StoreError, SELECT,
};

/// The project of unassigned members: empty, which no token, no create and
/// no list filter can name, so no consumer ever sees or counts them.
pub const POOL_PROJECT: &str = "";
/// The actor recorded on unassigned members.
pub const POOL_ACTOR: &str = "sandboxerd-pool";

/// A ready member as the refill task sees it (for liveness probes).
#[derive(Debug, Clone)]
pub struct PoolMember {
    pub id: String,
    pub extension: String,
    pub backend_state: Option<serde_json::Value>,
}

/// States in which a member counts as stock (made or on its way).
const STOCK: &str = "('requested','provisioning','ready')";

impl Db {
    /// Insert a new member of `pool` in `requested` (generation 0, no price).
    pub async fn insert_pool_member(&self, new: &NewSandbox, pool: &str) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO sandboxes (id, profile, profile_version, extension, host, state, actor_type, actor, project, \
             inputs, labels, generation, created_at, updated_at, expires_at, max_expires_at, last_activity_at, \
             estimate_credits, rate_centicredits, pool) \
             VALUES (?, ?, ?, ?, ?, 'requested', ?, ?, ?, '{}', ?, 0, ?, ?, ?, ?, ?, 0, 0, ?)",
        )
        .bind(&new.id)
        .bind(&new.profile)
        .bind(new.profile_version)
        .bind(&new.extension)
        .bind(&new.host)
        .bind(&new.consumer.actor_type)
        .bind(&new.consumer.actor)
        .bind(&new.consumer.project)
        .bind(serde_json::to_string(&new.labels).unwrap_or_else(|_| "{}".into()))
        .bind(new.now)
        .bind(new.now)
        .bind(new.expires_at)
        .bind(new.max_expires_at)
        .bind(new.now)
        .bind(pool)
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            &new.id,
            0,
            None,
            SandboxState::Requested,
            &format!("warm-pool member of {pool} requested"),
            new.now,
        )
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Members of `pool` made or on their way that stay unexpired past
    /// `fresh_after` (the ones due to expire sooner are being replaced).
    pub async fn pool_stock(&self, pool: &str, fresh_after: i64) -> Result<u32, StoreError> {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM sandboxes WHERE pool = ? AND state IN {STOCK} \
             AND generation = 0 AND expires_at > ?"
        ))
        .bind(pool)
        .bind(fresh_after)
        .fetch_one(&self.reader)
        .await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Whether `pool` holds a ready member on `extension` at `host` now (a
    /// read that spares a miss the write transaction).
    pub async fn pool_has_ready(
        &self,
        pool: &str,
        extension: &str,
        host: &str,
    ) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM sandboxes WHERE pool = ? AND state = 'ready' AND generation = 0 \
             AND extension = ? AND host = ? AND expires_at > ? LIMIT 1",
        )
        .bind(pool)
        .bind(extension)
        .bind(host)
        .bind(now_ms())
        .fetch_optional(&self.reader)
        .await?;
        Ok(found.is_some())
    }

    /// Hand a ready member of `pool` out as the sandbox `new` describes (its
    /// id aside): the same admission as [`Db::create_sandbox_billed`]
    /// (idempotency, cap, credits), then, in the same transaction, the
    /// oldest ready member on `new`'s extension and host becomes the
    /// consumer's: consumer, labels, lifetime from now, price, reservation,
    /// generation 1, the create's events and idempotency key. `None` when no
    /// member is ready (nothing written). The one writer connection runs
    /// this whole, so two claims never take the same member.
    pub async fn claim_pooled(
        &self,
        pool: &str,
        new: &NewSandbox,
        idempotency: Option<(&str, &str)>,
        cap: Option<i64>,
        billing: &Billing,
    ) -> Result<Option<Created>, StoreError> {
        let mut tx = self.writer.begin().await?;
        if let Some(refused) = self.admit(&mut tx, new, idempotency, cap, billing).await? {
            tx.rollback().await?;
            return Ok(Some(refused));
        }
        let now = now_ms();
        let member: Option<(String, i64)> = sqlx::query_as(
            "SELECT id, created_at FROM sandboxes WHERE pool = ? AND state = 'ready' AND generation = 0 \
             AND extension = ? AND host = ? AND profile_version = ? AND expires_at > ? \
             ORDER BY expires_at LIMIT 1",
        )
        .bind(pool)
        .bind(&new.extension)
        .bind(&new.host)
        .bind(new.profile_version)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, made_at)) = member else {
            tx.rollback().await?;
            return Ok(None);
        };
        let ttl_ms = new.expires_at.saturating_sub(new.now);
        let max_ms = new.max_expires_at.saturating_sub(new.now);
        let claimed = sqlx::query(
            "UPDATE sandboxes SET pool = NULL, generation = 1, actor_type = ?, actor = ?, project = ?, \
             inputs = ?, labels = ?, created_at = ?, updated_at = ?, ready_at = ?, last_activity_at = ?, \
             expires_at = ?, max_expires_at = ?, estimate_credits = ?, accrued_credits = 0, \
             rate_centicredits = ?, route = ?, placement_host = ?, name = ?, paused_rate_centicredits = ? \
             WHERE id = ? AND pool = ? AND state = 'ready' AND generation = 0",
        )
        .bind(&new.consumer.actor_type)
        .bind(&new.consumer.actor)
        .bind(&new.consumer.project)
        .bind(serde_json::to_string(&new.inputs).unwrap_or_else(|_| "{}".into()))
        .bind(serde_json::to_string(&new.labels).unwrap_or_else(|_| "{}".into()))
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(now.saturating_add(ttl_ms))
        .bind(now.saturating_add(max_ms))
        .bind(new.estimate_credits)
        .bind(billing.rate_centicredits)
        .bind(
            billing
                .route
                .as_ref()
                .and_then(|r| serde_json::to_string(r).ok()),
        )
        .bind(&new.placement_host)
        .bind(&new.name)
        .bind(billing.paused_rate_centicredits)
        .bind(&id)
        .bind(pool)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed != 1 {
            // Cannot happen inside the writer's transaction; never hand out half a claim.
            tx.rollback().await?;
            return Ok(None);
        }
        if billing.enforce && new.estimate_credits > 0 {
            ledger::reserve_new(
                &mut tx,
                &id,
                &new.consumer.project,
                new.estimate_credits,
                now,
            )
            .await?;
        }
        let made = humantime::format_duration(std::time::Duration::from_secs(
            u64::try_from(now.saturating_sub(made_at) / 1000).unwrap_or(0),
        ));
        let steps = [
            (None, SandboxState::Requested, "create requested".to_owned()),
            (
                Some(SandboxState::Requested),
                SandboxState::Provisioning,
                format!(
                    "provisioning on {} at {}: served from the warm pool of {pool} (made {made} before)",
                    new.extension, new.host
                ),
            ),
            (
                Some(SandboxState::Provisioning),
                SandboxState::Ready,
                "backend reports the sandbox reachable".to_owned(),
            ),
        ];
        for (from, to, reason) in steps {
            insert_event(&mut tx, &id, 1, from, to, &reason, now).await?;
        }
        if let Some((key, hash)) = idempotency {
            sqlx::query(
                "INSERT INTO idempotency_keys (project, key, request_hash, sandbox_id, created_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&new.consumer.project)
            .bind(key)
            .bind(hash)
            .bind(&id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let row = fetch_in(&mut tx, &id).await?;
        self.commit(tx).await?;
        match row {
            Some(row) => Ok(Some(Created::New(row.into_api()?))),
            None => Err(StoreError::Corrupt {
                id,
                what: "claimed pool member not found".into(),
            }),
        }
    }

    /// Unassigned members by pool and state (made or on their way), for `/metrics`.
    pub async fn pool_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT pool, state, COUNT(*) FROM sandboxes WHERE pool IS NOT NULL \
             AND state IN {STOCK} GROUP BY pool, state"
        ))
        .fetch_all(&self.reader)
        .await?)
    }

    /// Ids of every unassigned member that is not on its way out.
    pub async fn unassigned_members(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sandboxes WHERE pool IS NOT NULL \
             AND state IN ('requested','provisioning','ready','active') ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// Ready members of `pool`, for liveness probes.
    pub async fn ready_members(&self, pool: &str) -> Result<Vec<PoolMember>, StoreError> {
        let rows = sqlx::query_as::<Sqlite, SandboxRow>(&format!(
            "{SELECT} WHERE pool = ? AND state = 'ready' AND generation = 0"
        ))
        .bind(pool)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| PoolMember {
                backend_state: r.backend_state(),
                id: r.id,
                extension: r.extension,
            })
            .collect())
    }
}
