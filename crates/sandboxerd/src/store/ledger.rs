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
use sandboxer_api::{Balance, LedgerEntry, LedgerKind, Route, Sandbox, SandboxState, UsageRecord};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::{fetch_in, insert_event, new_id, now_ms, to_time, Db, SandboxRow, StoreError};
use crate::ledger::{billed_seconds, credits_for, MAX_CREDITS};

/// Where a sandbox goes and what it costs there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub extension: String,
    pub host: String,
    /// Hundredths of a credit per hour of running time.
    pub rate_centicredits: i64,
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

/// A ledger row to append.
struct NewEntry<'a> {
    project: &'a str,
    sandbox_id: Option<&'a str>,
    generation: Option<u32>,
    kind: LedgerKind,
    amount: i64,
    reason: &'a str,
    key: &'a str,
    now: i64,
}

/// Append one row and move the cached balance with it. `None` when the
/// idempotency key is already recorded (nothing is written then).
async fn append(
    conn: &mut SqliteConnection,
    e: NewEntry<'_>,
) -> Result<Option<String>, sqlx::Error> {
    let id = new_id("led");
    let amount = e.amount.clamp(0, MAX_CREDITS);
    let inserted = sqlx::query(
        "INSERT INTO ledger (id, project, sandbox_id, generation, kind, amount, reason, idempotency_key, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(&id)
    .bind(e.project)
    .bind(e.sandbox_id)
    .bind(e.generation)
    .bind(e.kind.as_str())
    .bind(amount)
    .bind(e.reason)
    .bind(e.key)
    .bind(e.now)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        return Ok(None);
    }
    let (balance, reserved) = match e.kind {
        LedgerKind::Grant | LedgerKind::Refund => (amount, 0),
        LedgerKind::Debit => (-amount, 0),
        LedgerKind::Reserve => (0, amount),
        LedgerKind::Release => (0, -amount),
    };
    // Two statements, not an upsert: SQLite checks the row an upsert would
    // insert (a negative `reserved` for a release) before seeing the conflict.
    sqlx::query(
        "INSERT INTO balances (project, balance, reserved, updated_at) VALUES (?, 0, 0, ?) \
         ON CONFLICT (project) DO NOTHING",
    )
    .bind(e.project)
    .bind(e.now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE balances SET balance = balance + ?, reserved = reserved + ?, updated_at = ? \
         WHERE project = ?",
    )
    .bind(balance)
    .bind(reserved)
    .bind(e.now)
    .bind(e.project)
    .execute(&mut *conn)
    .await?;
    Ok(Some(id))
}

/// A project's cached `(balance, reserved)`.
async fn balance_in(conn: &mut SqliteConnection, project: &str) -> Result<(i64, i64), sqlx::Error> {
    Ok(
        sqlx::query_as("SELECT balance, reserved FROM balances WHERE project = ?")
            .bind(project)
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or((0, 0)),
    )
}

/// `Err` when `project` cannot reserve `needed` now.
pub(super) async fn check_available(
    conn: &mut SqliteConnection,
    project: &str,
    needed: i64,
) -> Result<Result<(), Shortfall>, sqlx::Error> {
    let (balance, reserved) = balance_in(conn, project).await?;
    let available = balance - reserved;
    Ok(if available >= needed {
        Ok(())
    } else {
        Err(Shortfall { available, needed })
    })
}

/// Reserve the estimate of a sandbox just inserted (availability checked by the caller).
pub(super) async fn reserve_new(
    conn: &mut SqliteConnection,
    sandbox_id: &str,
    project: &str,
    amount: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    let key = format!("reserve:{sandbox_id}:1:0");
    append(
        conn,
        NewEntry {
            project,
            sandbox_id: Some(sandbox_id),
            generation: Some(1),
            kind: LedgerKind::Reserve,
            amount,
            reason: "create: the estimate of its lifetime",
            key: &key,
            now,
        },
    )
    .await?;
    Ok(())
}

/// What the ledger holds for one sandbox.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    /// Reserves minus releases (every generation; earlier ones are settled to zero).
    held: i64,
    /// Debits of the current generation.
    debited: i64,
    /// Rows of the sandbox so far, to number new idempotency keys.
    rows: i64,
}

async fn sums(conn: &mut SqliteConnection, row: &SandboxRow) -> Result<Sums, sqlx::Error> {
    let (held, debited, rows): (i64, i64, i64) = sqlx::query_as(
        "SELECT \
           COALESCE(SUM(CASE kind WHEN 'reserve' THEN amount WHEN 'release' THEN -amount ELSE 0 END), 0), \
           COALESCE(SUM(CASE WHEN kind = 'debit' AND generation = ? THEN amount ELSE 0 END), 0), \
           COUNT(*) \
         FROM ledger WHERE sandbox_id = ?",
    )
    .bind(row.generation)
    .bind(&row.id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Sums {
        held,
        debited,
        rows,
    })
}

/// Reserve (or release) so the sandbox holds exactly the part of its
/// estimate that its current generation has not spent yet. Without
/// enforcement nothing new is reserved (what is held is still released
/// down to it). `Err` when enforcement needs credits the project lacks.
pub(super) async fn rebalance(
    conn: &mut SqliteConnection,
    row: &SandboxRow,
    enforce: bool,
    now: i64,
) -> Result<Result<(), Shortfall>, sqlx::Error> {
    let s = sums(conn, row).await?;
    let want = (row.estimate_credits - s.debited).max(0);
    let diff = want - s.held;
    if diff > 0 && enforce {
        if let Err(short) = check_available(conn, &row.project, diff).await? {
            return Ok(Err(short));
        }
        let key = format!("reserve:{}:{}:{}", row.id, row.generation, s.rows);
        append(
            conn,
            NewEntry {
                project: &row.project,
                sandbox_id: Some(&row.id),
                generation: Some(row.generation),
                kind: LedgerKind::Reserve,
                amount: diff,
                reason: &format!("estimate now {} credits", row.estimate_credits),
                key: &key,
                now,
            },
        )
        .await?;
    } else if diff < 0 && s.held > 0 {
        let key = format!("release:{}:{}:{}", row.id, row.generation, s.rows);
        append(
            conn,
            NewEntry {
                project: &row.project,
                sandbox_id: Some(&row.id),
                generation: Some(row.generation),
                kind: LedgerKind::Release,
                amount: (-diff).min(s.held),
                reason: &format!("estimate now {} credits", row.estimate_credits),
                key: &key,
                now,
            },
        )
        .await?;
    }
    Ok(Ok(()))
}

/// Debit the running time of `row`'s current generation up to `at` (never
/// past when it ended or expired) that is not debited yet: the cumulative
/// target minus what is recorded, so running it twice for the same instant
/// debits once. With enforcement it never debits more than the sandbox
/// holds. Answers the credits debited.
pub(super) async fn meter_in(
    conn: &mut SqliteConnection,
    row: &SandboxRow,
    at: i64,
    enforce: bool,
    now: i64,
) -> Result<i64, sqlx::Error> {
    let Some(ready_at) = row.ready_at else {
        return Ok(0);
    };
    if row.rate_centicredits <= 0 {
        return Ok(0);
    }
    let end = at.min(row.ended_at.unwrap_or(at)).min(row.expires_at);
    let seconds = billed_seconds(end - ready_at);
    let target = credits_for(row.rate_centicredits, seconds);
    let s = sums(conn, row).await?;
    let owed = target - s.debited;
    if owed <= 0 {
        return Ok(0);
    }
    let held = s.held.max(0);
    let amount = if enforce { owed.min(held) } else { owed };
    if amount <= 0 {
        return Ok(0);
    }
    let cumulative = s.debited + amount;
    let consumed = amount.min(held);
    let reason = format!(
        "{seconds}s of running time at {}.{:02} credits/hour",
        row.rate_centicredits / 100,
        row.rate_centicredits % 100
    );
    if consumed > 0 {
        let key = format!("use:{}:{}:{cumulative}", row.id, row.generation);
        append(
            conn,
            NewEntry {
                project: &row.project,
                sandbox_id: Some(&row.id),
                generation: Some(row.generation),
                kind: LedgerKind::Release,
                amount: consumed,
                reason: "used: released to pay the debit",
                key: &key,
                now,
            },
        )
        .await?;
    }
    let key = format!("debit:{}:{}:{cumulative}", row.id, row.generation);
    let debited = append(
        conn,
        NewEntry {
            project: &row.project,
            sandbox_id: Some(&row.id),
            generation: Some(row.generation),
            kind: LedgerKind::Debit,
            amount,
            reason: &reason,
            key: &key,
            now,
        },
    )
    .await?;
    crate::fault::hit("metering.after_debit");
    if debited.is_none() {
        return Ok(0);
    }
    sqlx::query("UPDATE sandboxes SET accrued_credits = accrued_credits + ? WHERE id = ?")
        .bind(amount)
        .bind(&row.id)
        .execute(&mut *conn)
        .await?;
    Ok(amount)
}

/// Settle `row`'s current generation: debit what its use up to its end
/// (`ended_at`, else `end`) still owes, release whatever it still holds,
/// and mark it settled. Does nothing to a settled generation.
pub(super) async fn settle_in(
    conn: &mut SqliteConnection,
    row: &SandboxRow,
    end: i64,
    enforce: bool,
    now: i64,
) -> Result<bool, sqlx::Error> {
    if row.settled_at.is_some() {
        return Ok(false);
    }
    meter_in(conn, row, end, enforce, now).await?;
    let s = sums(conn, row).await?;
    if s.held > 0 {
        let key = format!("settle:{}:{}", row.id, row.generation);
        append(
            conn,
            NewEntry {
                project: &row.project,
                sandbox_id: Some(&row.id),
                generation: Some(row.generation),
                kind: LedgerKind::Release,
                amount: s.held,
                reason: "settled: released what was not used",
                key: &key,
                now,
            },
        )
        .await?;
    }
    sqlx::query("UPDATE sandboxes SET settled_at = ? WHERE id = ?")
        .bind(now)
        .bind(&row.id)
        .execute(&mut *conn)
        .await?;
    Ok(true)
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

const LEDGER_SELECT: &str =
    "SELECT seq, id, project, sandbox_id, generation, kind, amount, reason, \
     idempotency_key, created_at FROM ledger";

/// States whose generation has ended and is to be settled.
const ENDED: &str = "('destroying','expired','destroyed','failed')";

impl Db {
    /// A project's balance (the cached row; zeros for a project never seen).
    pub async fn balance(&self, project: &str) -> Result<Balance, StoreError> {
        let (balance, reserved): (i64, i64) =
            sqlx::query_as("SELECT balance, reserved FROM balances WHERE project = ?")
                .bind(project)
                .fetch_optional(&self.reader)
                .await?
                .unwrap_or((0, 0));
        Ok(Balance {
            project: project.to_owned(),
            balance,
            reserved,
            available: balance - reserved,
        })
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
            .push(" AND state IN ('requested','provisioning','ready','active') AND expires_at > ")
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
            "SELECT id FROM sandboxes WHERE state IN ('ready','active') \
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
            if row.state()?.is_live() && row.settled_at.is_none() {
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
             route = ?, backend_state = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(&to.extension)
        .bind(&to.host)
        .bind(to.rate_centicredits)
        .bind(to.estimate_credits)
        .bind(serde_json::to_string(route).unwrap_or_default())
        .bind(now)
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
