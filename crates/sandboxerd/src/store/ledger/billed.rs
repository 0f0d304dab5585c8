//! The changes of one sandbox that move money, each in one transaction
//! with its ledger rows: extend its TTL, meter its running time, settle an
//! ended generation, move it to another routing candidate.
use sandboxer_api::{Route, SandboxState};
use sqlx::{QueryBuilder, Sqlite};

use super::escrow::{meter_in, rebalance, settle_in};
use super::{Extended, Rerouted, Target};
use crate::ledger::{billed_seconds, credits_for};
use crate::store::{fetch_in, insert_event, now_ms, Db, StoreError};

/// States whose generation has ended and is to be settled.
const ENDED: &str = "('destroying','expired','destroyed','failed')";

impl Db {
    /// [`Db::extend_ttl`] that keeps the sandbox's estimate in step and,
    /// with `enforce`, reserves the extra first, in the same transaction:
    /// when the project cannot cover it nothing moves.
    pub async fn extend_ttl_billed(
        &self,
        id: &str,
        project: Option<&str>,
        by_ms: i64,
        enforce: bool,
    ) -> Result<Extended, StoreError> {
        let now = now_ms();
        let mut qb =
            QueryBuilder::<Sqlite>::new("UPDATE sandboxes SET expires_at = MIN(expires_at + ");
        qb.push_bind(by_ms)
            .push(", max_expires_at), updated_at = ")
            .push_bind(now)
            .push(", last_activity_at = ")
            .push_bind(now)
            .push(" WHERE id = ")
            .push_bind(id)
            // A pause that stopped the clock holds the TTL left aside;
            // `expires_at` is then the end of the pause.
            .push(format!(
                " AND ttl_left_ms IS NULL AND state IN {} AND expires_at > ",
                crate::store::HOLDING
            ))
            .push_bind(now);
        if let Some(p) = project {
            qb.push(" AND project = ").push_bind(p);
        }
        let mut tx = self.writer.begin().await?;
        let Some(before) = fetch_in(&mut tx, id).await? else {
            return Ok(Extended::NotExtendable);
        };
        if qb.build().execute(&mut *tx).await?.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(Extended::NotExtendable);
        }
        let Some(mut row) = fetch_in(&mut tx, id).await? else {
            return Ok(Extended::NotExtendable);
        };
        let estimate = credits_for(
            row.rate_centicredits,
            billed_seconds(row.expires_at - row.created_at),
        );
        if estimate != row.estimate_credits {
            sqlx::query("UPDATE sandboxes SET estimate_credits = ? WHERE id = ?")
                .bind(estimate)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            row.estimate_credits = estimate;
        }
        if row.settled_at.is_none() {
            if let Err(short) = rebalance(&mut tx, &row, enforce, now).await? {
                tx.rollback().await?;
                return Ok(Extended::InsufficientCredits(short));
            }
        }
        self.commit(tx).await?;
        let capped = before.expires_at.saturating_add(by_ms) > row.max_expires_at;
        Ok(Extended::Done(Box::new(row.into_api()?), capped))
    }

    /// Live sandboxes with running time to meter (ready, priced), by id.
    pub async fn metered_ids(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sandboxes WHERE (state IN ('ready','active') \
             OR (state = 'paused' AND paused_rate_centicredits > 0)) \
             AND ready_at IS NOT NULL AND rate_centicredits > 0 AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Meter each of `ids` up to `at` in one transaction; answers the
    /// credits debited. Rows that are no longer live are left to settlement.
    pub async fn meter(&self, ids: &[String], at: i64, enforce: bool) -> Result<i64, StoreError> {
        let now = now_ms();
        let mut tx = self.writer.begin().await?;
        let mut total = 0;
        for id in ids {
            let Some(row) = fetch_in(&mut tx, id).await? else {
                continue;
            };
            let state = row.state()?;
            if (state.is_live() || state == SandboxState::Paused) && row.settled_at.is_none() {
                total += meter_in(&mut tx, &row, at, enforce, now).await?;
            }
        }
        self.commit(tx).await?;
        Ok(total)
    }

    /// Settle sandbox `id` if its generation has ended (it left the live
    /// states) and is not settled yet. `end` stands in for a missing end time.
    pub async fn settle(&self, id: &str, end: i64, enforce: bool) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let Some(row) = fetch_in(&mut tx, id).await? else {
            return Ok(false);
        };
        let ended = matches!(
            row.state()?,
            SandboxState::Destroying
                | SandboxState::Expired
                | SandboxState::Destroyed
                | SandboxState::Failed
        );
        if !ended || row.settled_at.is_some() {
            tx.rollback().await?;
            return Ok(false);
        }
        let end = row.ended_at.unwrap_or(end);
        let done = settle_in(&mut tx, &row, end, enforce, now_ms()).await?;
        self.commit(tx).await?;
        Ok(done)
    }

    /// Priced sandboxes (assigned, running: `ready` or `active`, and with
    /// `paused` also paused ones) of projects whose balance has reached
    /// zero (a project never granted anything has zero), for the budget
    /// step-down; at most `limit`, by id.
    pub async fn exhausted_ids(&self, paused: bool, limit: u32) -> Result<Vec<String>, StoreError> {
        let states = if paused {
            "('ready','active','paused')"
        } else {
            "('ready','active')"
        };
        Ok(sqlx::query_scalar(&format!(
            "SELECT s.id FROM sandboxes s LEFT JOIN balances b ON b.project = s.project \
             WHERE COALESCE(b.balance, 0) <= 0 AND s.state IN {states} AND s.pool IS NULL \
             AND s.rate_centicredits > 0 ORDER BY s.id LIMIT ?"
        ))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Sandboxes the budget step-down paused whose project's balance is
    /// above zero again; at most `limit`, by id.
    pub async fn budget_resumable_ids(&self, limit: u32) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT s.id FROM sandboxes s JOIN balances b ON b.project = s.project \
             WHERE b.balance > 0 AND s.state = 'paused' AND s.pause_reason = 'credits_exhausted' \
             ORDER BY s.id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Mark settled, in one statement, every ended generation that has
    /// nothing to settle (never priced or never ready, and no ledger rows).
    pub async fn settle_trivial(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query(&format!(
            "UPDATE sandboxes SET settled_at = ? WHERE settled_at IS NULL AND state IN {ENDED} \
             AND (rate_centicredits = 0 OR ready_at IS NULL) \
             AND NOT EXISTS (SELECT 1 FROM ledger WHERE ledger.sandbox_id = sandboxes.id)"
        ))
        .bind(now_ms())
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    /// Ended generations not settled yet (a crash between a transition and
    /// its settlement leaves these for the metering ticker).
    pub async fn unsettled_ids(&self, limit: u32) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT id FROM sandboxes WHERE settled_at IS NULL AND state IN {ENDED} ORDER BY id LIMIT ?"
        ))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Move a sandbox that failed before ready (still `provisioning`, at
    /// `generation`, on `from_extension`) to another candidate: new
    /// extension, host, rate, estimate and route, its reservation adjusted
    /// to the new estimate, and an event saying why, in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn reroute(
        &self,
        id: &str,
        generation: u32,
        from_extension: &str,
        to: &Target,
        route: &Route,
        reason: &str,
        enforce: bool,
    ) -> Result<Rerouted, StoreError> {
        let now = now_ms();
        let mut tx = self.writer.begin().await?;
        let Some(row) = fetch_in(&mut tx, id).await? else {
            return Ok(Rerouted::Refused);
        };
        if row.state()? != SandboxState::Provisioning
            || row.generation != generation
            || row.extension != from_extension
        {
            tx.rollback().await?;
            return Ok(Rerouted::Refused);
        }
        sqlx::query(
            "UPDATE sandboxes SET extension = ?, host = ?, rate_centicredits = ?, estimate_credits = ?, \
             route = ?, backend_state = NULL, updated_at = ?, paused_rate_centicredits = ? WHERE id = ?",
        )
        .bind(&to.extension)
        .bind(&to.host)
        .bind(to.rate_centicredits)
        .bind(to.estimate_credits)
        .bind(serde_json::to_string(route).unwrap_or_default())
        .bind(now)
        .bind(to.paused_rate_centicredits)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let Some(after) = fetch_in(&mut tx, id).await? else {
            return Ok(Rerouted::Refused);
        };
        if let Err(short) = rebalance(&mut tx, &after, enforce, now).await? {
            tx.rollback().await?;
            return Ok(Rerouted::InsufficientCredits(short));
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
        Ok(Rerouted::Done)
    }

    /// Record the router's decision without moving the sandbox (a failed
    /// last candidate).
    pub async fn set_route(
        &self,
        id: &str,
        generation: u32,
        route: &Route,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE sandboxes SET route = ? WHERE id = ? AND generation = ?")
            .bind(serde_json::to_string(route).unwrap_or_default())
            .bind(id)
            .bind(generation)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
