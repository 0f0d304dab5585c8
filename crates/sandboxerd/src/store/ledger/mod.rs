//! The credit ledger: append-only rows, a cached balance per project kept in
//! step in the same transaction, and the escrow steps of a sandbox's life.
//!
//! The model (every amount is a whole number of credits, never negative):
//! - `balance  = grants + refunds − debits`
//! - `reserved = reserves − releases`
//! - `available = balance − reserved`
//!
//! A debit against a reservation is written as a `release` of the part used
//! plus the `debit`, so what a sandbox still holds is always
//! `reserves − releases` of its rows. Every row carries a unique
//! idempotency key; amounts are computed inside the transaction that writes
//! them (on the one writer connection) from what is already recorded, so a
//! retried or replayed step finds nothing left to do.
//!
//! Here: the types of the ledger's answers, and what a project sees
//! (balance, grants, entries, usage). `escrow.rs` holds the steps written
//! inside a sandbox's transactions; `billed.rs` the sandbox changes that
//! move money (extend, meter, settle, reroute).
use sandboxer_api::{Balance, LedgerEntry, LedgerKind, Route, Sandbox, UsageRecord};
use sqlx::{QueryBuilder, Sqlite};

use super::{new_id, now_ms, to_time, Db, StoreError};
use crate::ledger::{billed_seconds, MAX_CREDITS};

mod billed;
mod escrow;

use escrow::{append, NewEntry};
pub(super) use escrow::{balance_in, check_available, rebalance, reserve_new, settle_in};

/// Where a sandbox goes and what it costs there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub extension: String,
    pub host: String,
    /// Hundredths of a credit per hour of running time.
    pub rate_centicredits: i64,
    /// Hundredths of a credit per hour of paused time.
    pub paused_rate_centicredits: i64,
    /// The price of the requested lifetime.
    pub estimate_credits: i64,
    pub breakdown: sandboxer_api::CostBreakdown,
}

/// What a create records about money: the rate it is charged at, the
/// router's decision, and whether its estimate must be reserved.
#[derive(Debug, Clone, Default)]
pub struct Billing {
    /// Hundredths of a credit per hour of running time.
    pub rate_centicredits: i64,
    /// Hundredths of a credit per hour of paused time.
    pub paused_rate_centicredits: i64,
    /// The router's decision (routed profiles only).
    pub route: Option<Route>,
    /// `[credits] enforce`: reserve the estimate or refuse the create.
    pub enforce: bool,
}

/// Escrow steps of a transition (see [`super::Change::escrow`]).
#[derive(Debug, Clone, Copy)]
pub struct Escrow {
    /// `[credits] enforce`.
    pub enforce: bool,
}

/// Credits a project lacks for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// What the project has available now.
    pub available: i64,
    /// What the step needs to reserve.
    pub needed: i64,
}

/// Outcome of an extend.
#[derive(Debug)]
pub enum Extended {
    /// Moved; `true` when the ceiling cut it.
    Done(Box<Sandbox>, bool),
    /// Not live, past its expiry, or not in the caller's project.
    NotExtendable,
    /// Nothing was written: the extra estimate cannot be reserved.
    InsufficientCredits(Shortfall),
}

/// Outcome of a grant.
#[derive(Debug)]
pub enum Granted {
    New(LedgerEntry),
    /// The same `Idempotency-Key`, amount and reason were granted before.
    Replayed(LedgerEntry),
    /// The key was used before for another amount or reason.
    KeyConflict,
    /// The balance would pass [`MAX_CREDITS`].
    OverLimit {
        balance: i64,
    },
}

/// Outcome of moving a provisioning sandbox to another candidate.
#[derive(Debug)]
pub enum Rerouted {
    /// Moved; provision it again.
    Done,
    /// The row moved on meanwhile (destroyed, another generation, ...).
    Refused,
    /// Nothing was written: the new estimate cannot be reserved.
    InsufficientCredits(Shortfall),
}

/// Filters of `GET /v1/credits/{project}/ledger`.
#[derive(Debug, Clone, Default)]
pub struct LedgerFilter {
    pub project: String,
    pub sandbox_id: Option<String>,
    /// Entries older than this sequence number (the cursor).
    pub before: Option<i64>,
    pub limit: u32,
}

/// Filters of `GET /v1/usage`.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub project: Option<String>,
    /// Milliseconds; debits at or after count.
    pub from: i64,
    /// Milliseconds; debits before count.
    pub to: i64,
}

#[derive(sqlx::FromRow)]
struct LedgerRow {
    seq: i64,
    id: String,
    project: String,
    sandbox_id: Option<String>,
    generation: Option<u32>,
    kind: String,
    amount: i64,
    reason: String,
    idempotency_key: String,
    created_at: i64,
}

impl LedgerRow {
    fn into_api(self) -> Result<LedgerEntry, StoreError> {
        let kind = self.kind.parse().map_err(|what| StoreError::Corrupt {
            id: self.id.clone(),
            what,
        })?;
        Ok(LedgerEntry {
            id: self.id,
            project: self.project,
            sandbox_id: self.sandbox_id,
            generation: self.generation,
            kind,
            amount: self.amount,
            reason: self.reason,
            idempotency_key: self.idempotency_key,
            created_at: to_time(self.created_at),
        })
    }
}

/// A project's numbers as the API shows them (`available = balance - reserved`).
fn balance_of(project: String, balance: i64, reserved: i64) -> Balance {
    Balance {
        project,
        balance,
        reserved,
        available: balance - reserved,
    }
}

const LEDGER_SELECT: &str =
    "SELECT seq, id, project, sandbox_id, generation, kind, amount, reason, \
     idempotency_key, created_at FROM ledger";

impl Db {
    /// A project's balance (the cached row; zeros for a project never seen).
    pub async fn balance(&self, project: &str) -> Result<Balance, StoreError> {
        let (balance, reserved): (i64, i64) =
            sqlx::query_as("SELECT balance, reserved FROM balances WHERE project = ?")
                .bind(project)
                .fetch_optional(&self.reader)
                .await?
                .unwrap_or((0, 0));
        Ok(balance_of(project.to_owned(), balance, reserved))
    }

    /// Every project's balance (or `project`'s), by project, at most `limit`.
    pub async fn balances(
        &self,
        project: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Balance>, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT project, balance, reserved FROM balances \
             WHERE (?1 IS NULL OR project = ?1) ORDER BY project LIMIT ?2",
        )
        .bind(project)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(project, balance, reserved)| balance_of(project, balance, reserved))
            .collect())
    }

    /// A project's `(balance, reserved)` summed from its ledger rows: what
    /// the cached row must always equal.
    pub async fn balance_from_ledger(&self, project: &str) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(
            "SELECT \
               COALESCE(SUM(CASE kind WHEN 'grant' THEN amount WHEN 'refund' THEN amount \
                                      WHEN 'debit' THEN -amount ELSE 0 END), 0), \
               COALESCE(SUM(CASE kind WHEN 'reserve' THEN amount WHEN 'release' THEN -amount \
                                      ELSE 0 END), 0) \
             FROM ledger WHERE project = ?",
        )
        .bind(project)
        .fetch_one(&self.reader)
        .await?)
    }

    /// Add `amount` credits to `project`. With an idempotency key, a retry
    /// with the same amount and reason answers the entry written first.
    pub async fn grant(
        &self,
        project: &str,
        amount: i64,
        reason: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Granted, StoreError> {
        let now = now_ms();
        let mut tx = self.writer.begin().await?;
        let key = match idempotency_key {
            Some(k) => format!("grant:{project}:{k}"),
            None => format!("grant:{}", new_id("key")),
        };
        let seen: Option<LedgerRow> =
            sqlx::query_as(&format!("{LEDGER_SELECT} WHERE idempotency_key = ?"))
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(seen) = seen {
            tx.rollback().await?;
            return Ok(
                if seen.kind == "grant" && seen.amount == amount && seen.reason == reason {
                    Granted::Replayed(seen.into_api()?)
                } else {
                    Granted::KeyConflict
                },
            );
        }
        let (balance, _) = balance_in(&mut tx, project).await?;
        if balance.saturating_add(amount) > MAX_CREDITS {
            tx.rollback().await?;
            return Ok(Granted::OverLimit { balance });
        }
        let id = append(
            &mut tx,
            NewEntry {
                project,
                sandbox_id: None,
                generation: None,
                kind: LedgerKind::Grant,
                amount,
                reason,
                key: &key,
                now,
            },
        )
        .await?;
        let row: Option<LedgerRow> = match &id {
            Some(id) => {
                sqlx::query_as(&format!("{LEDGER_SELECT} WHERE id = ?"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
            }
            None => None,
        };
        self.commit(tx).await?;
        match row {
            Some(row) => Ok(Granted::New(row.into_api()?)),
            None => Err(StoreError::Corrupt {
                id: key,
                what: "granted ledger row not found".into(),
            }),
        }
    }

    /// Ledger entries of a project, newest first.
    pub async fn ledger_entries(
        &self,
        f: &LedgerFilter,
    ) -> Result<(Vec<LedgerEntry>, Option<String>), StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(LEDGER_SELECT);
        qb.push(" WHERE project = ").push_bind(f.project.clone());
        if let Some(s) = &f.sandbox_id {
            qb.push(" AND sandbox_id = ").push_bind(s.clone());
        }
        if let Some(b) = f.before {
            qb.push(" AND seq < ").push_bind(b);
        }
        qb.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(i64::from(f.limit) + 1);
        let rows: Vec<LedgerRow> = qb.build_query_as().fetch_all(&self.reader).await?;
        let more = rows.len() > f.limit as usize;
        let mut items = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in rows.into_iter().take(f.limit as usize) {
            last = Some(row.seq);
            items.push(row.into_api()?);
        }
        Ok((
            items,
            if more {
                last.map(|s| s.to_string())
            } else {
                None
            },
        ))
    }

    /// Per-sandbox use for billing: every sandbox debited in the window or
    /// whose current generation ran in it, oldest first.
    pub async fn usage(&self, f: &UsageFilter) -> Result<Vec<UsageRecord>, StoreError> {
        let now = now_ms();
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT s.id, s.project, s.profile, s.extension, s.host, s.generation, s.ready_at, \
             s.ended_at, s.expires_at, COALESCE(d.credits, 0) FROM sandboxes s LEFT JOIN \
             (SELECT sandbox_id, SUM(amount) AS credits FROM ledger WHERE kind = 'debit' AND created_at >= ",
        );
        qb.push_bind(f.from)
            .push(" AND created_at < ")
            .push_bind(f.to);
        if let Some(p) = &f.project {
            qb.push(" AND project = ").push_bind(p.clone());
        }
        qb.push(" GROUP BY sandbox_id) d ON d.sandbox_id = s.id WHERE s.pool IS NULL AND (d.credits IS NOT NULL OR (s.ready_at IS NOT NULL AND s.ready_at < ")
            .push_bind(f.to)
            .push(" AND COALESCE(s.ended_at, ")
            .push_bind(now)
            .push(") >= ")
            .push_bind(f.from)
            .push("))");
        if let Some(p) = &f.project {
            qb.push(" AND s.project = ").push_bind(p.clone());
        }
        qb.push(" ORDER BY s.id");
        type UsageRow = (
            String,
            String,
            String,
            String,
            String,
            u32,
            Option<i64>,
            Option<i64>,
            i64,
            i64,
        );
        let rows: Vec<UsageRow> = qb.build_query_as().fetch_all(&self.reader).await?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    id,
                    project,
                    profile,
                    extension,
                    host,
                    generation,
                    ready,
                    ended,
                    expires,
                    credits,
                )| {
                    let seconds = ready
                        .map(|r| billed_seconds(ended.unwrap_or(now).min(expires) - r))
                        .unwrap_or(0);
                    UsageRecord {
                        sandbox_id: id,
                        project,
                        profile,
                        extension,
                        host,
                        generation,
                        start: ready.map(to_time),
                        end: ended.map(to_time),
                        seconds,
                        credits,
                    }
                },
            )
            .collect())
    }
}
