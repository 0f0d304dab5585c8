//! The ledger's steps inside a sandbox's transactions (on the one writer
//! connection): append a row with the cached balance, check and reserve a
//! create's estimate, keep a reservation in step with its estimate, meter
//! running time, settle an ended generation. Each computes its amount from
//! what is already recorded, so a retried step finds nothing left to do.
use sandboxer_api::LedgerKind;
use sqlx::SqliteConnection;

use crate::ledger::{billed_seconds, credits_for_mix, MAX_CREDITS};
use crate::store::{new_id, SandboxRow};

use super::Shortfall;

/// A ledger row to append.
pub(super) struct NewEntry<'a> {
    pub(super) project: &'a str,
    pub(super) sandbox_id: Option<&'a str>,
    pub(super) generation: Option<u32>,
    pub(super) kind: LedgerKind,
    pub(super) amount: i64,
    pub(super) reason: &'a str,
    pub(super) key: &'a str,
    pub(super) now: i64,
}

impl<'a> NewEntry<'a> {
    /// An entry of `row`'s current generation, in its project.
    fn of_row(
        row: &'a SandboxRow,
        kind: LedgerKind,
        amount: i64,
        reason: &'a str,
        key: &'a str,
        now: i64,
    ) -> Self {
        NewEntry {
            project: &row.project,
            sandbox_id: Some(&row.id),
            generation: Some(row.generation),
            kind,
            amount,
            reason,
            key,
            now,
        }
    }
}

/// Append one row and move the cached balance with it. `None` when the
/// idempotency key is already recorded (nothing is written then).
pub(super) async fn append(
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
pub(in crate::store) async fn balance_in(
    conn: &mut SqliteConnection,
    project: &str,
) -> Result<(i64, i64), sqlx::Error> {
    Ok(
        sqlx::query_as("SELECT balance, reserved FROM balances WHERE project = ?")
            .bind(project)
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or((0, 0)),
    )
}

/// `Err` when `project` cannot reserve `needed` now.
pub(in crate::store) async fn check_available(
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
pub(in crate::store) async fn reserve_new(
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
pub(in crate::store) async fn rebalance(
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
            NewEntry::of_row(
                row,
                LedgerKind::Reserve,
                diff,
                &format!("estimate now {} credits", row.estimate_credits),
                &key,
                now,
            ),
        )
        .await?;
    } else if diff < 0 && s.held > 0 {
        let key = format!("release:{}:{}:{}", row.id, row.generation, s.rows);
        append(
            conn,
            NewEntry::of_row(
                row,
                LedgerKind::Release,
                (-diff).min(s.held),
                &format!("estimate now {} credits", row.estimate_credits),
                &key,
                now,
            ),
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
pub(in crate::store) async fn meter_in(
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
    // Paused time is not running time: the pauses that ended, and the one
    // going on (up to `end`), are charged at the paused rate. (With
    // `ttl.pause_stops_clock`, `expires_at` is the latest the pause may
    // last while it does, so `end` bounds it too.)
    let pausing = row.paused_at.map_or(0, |p| (end - p).max(0));
    let seconds = billed_seconds(end - ready_at - row.paused_ms - pausing);
    let paused_seconds = billed_seconds(row.paused_ms + pausing);
    let target = credits_for_mix(
        row.rate_centicredits,
        seconds,
        row.paused_rate_centicredits,
        paused_seconds,
    );
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
    // A rate in hundredths of a credit per hour, for people.
    let per_hour = |r: i64| format!("{}.{:02} credits/hour", r / 100, r % 100);
    let mut reason = format!(
        "{seconds}s of running time at {}",
        per_hour(row.rate_centicredits)
    );
    if row.paused_rate_centicredits > 0 && paused_seconds > 0 {
        reason.push_str(&format!(
            " and {paused_seconds}s paused at {}",
            per_hour(row.paused_rate_centicredits)
        ));
    }
    if consumed > 0 {
        let key = format!("use:{}:{}:{cumulative}", row.id, row.generation);
        append(
            conn,
            NewEntry::of_row(
                row,
                LedgerKind::Release,
                consumed,
                "used: released to pay the debit",
                &key,
                now,
            ),
        )
        .await?;
    }
    let key = format!("debit:{}:{}:{cumulative}", row.id, row.generation);
    let debited = append(
        conn,
        NewEntry::of_row(row, LedgerKind::Debit, amount, &reason, &key, now),
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
pub(in crate::store) async fn settle_in(
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
            NewEntry::of_row(
                row,
                LedgerKind::Release,
                s.held,
                "settled: released what was not used",
                &key,
                now,
            ),
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
