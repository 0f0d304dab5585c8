//! Rows written straight into a daemon's SQLite file, in one transaction,
//! with every column the API reads filled as the daemon itself would.
use std::path::Path;

use anyhow::Context;
use sandboxerd::store::{new_id, now_ms, Db};

/// A small deterministic generator (xorshift), so runs insert the same shape.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// How one fixture row looks.
struct Fixture<'a> {
    state: &'a str,
    created_at: i64,
    expires_at: i64,
    labels: String,
}

const HOUR_MS: i64 = 3_600_000;

async fn insert(db: &Db, rows: impl Iterator<Item = Fixture<'_>>) -> anyhow::Result<usize> {
    let mut tx = db.writer.begin().await?;
    let mut n = 0;
    for r in rows {
        let settled = matches!(r.state, "failed" | "destroyed");
        sqlx::query(
            "INSERT INTO sandboxes (id, profile, profile_version, extension, host, state, actor_type, actor, project, \
             inputs, labels, generation, created_at, updated_at, ready_at, expires_at, max_expires_at, destroyed_at, \
             last_activity_at, failure_code, failure_message, estimate_credits) \
             VALUES (?, 'profile.local-shell', 1, 'ext.local', 'local', ?, 'adm', 'local', 'default', '{}', ?, 1, \
             ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        )
        .bind(new_id("sbx"))
        .bind(r.state)
        .bind(&r.labels)
        .bind(r.created_at)
        .bind(r.created_at + 5_000)
        .bind((r.state != "failed").then_some(r.created_at + 20))
        .bind(r.expires_at)
        .bind(r.created_at + 24 * HOUR_MS)
        .bind((r.state == "destroyed").then_some(r.created_at + 5_000))
        .bind(r.created_at)
        .bind((r.state == "failed").then_some("backend_lost"))
        .bind(settled.then_some("benchmark fixture"))
        .execute(&mut *tx)
        .await?;
        n += 1;
    }
    tx.commit().await?;
    Ok(n)
}

/// `n` settled (`failed`) rows for the list benchmark, labelled
/// `bench=list` and `shard=<0..99>` (each shard holds 1% of the rows).
/// Settled, so the daemon's start-up pass has nothing to reconcile and the
/// default list shows them all.
pub async fn list_rows(db_path: &Path, n: usize) -> anyhow::Result<()> {
    let db = Db::open(db_path)
        .await
        .with_context(|| format!("opening {}", db_path.display()))?;
    let now = now_ms();
    let rows = (0..n).map(|i| Fixture {
        state: "failed",
        created_at: now - HOUR_MS + i as i64,
        expires_at: now + 23 * HOUR_MS,
        labels: format!(r#"{{"bench":"list","shard":"{}"}}"#, i % 100),
    });
    insert(&db, rows).await?;
    db.close().await;
    Ok(())
}

/// What the reaper fixture holds.
#[derive(Debug, Clone, Copy)]
pub struct ReaperShape {
    /// Rows in all.
    pub total: usize,
    /// Live rows past `expires_at` (what a sweep must pick).
    pub expired: usize,
    /// Live rows not yet due.
    pub live: usize,
    /// Destroyed rows (their `expires_at` passed long ago, as old rows' has).
    pub destroyed: usize,
}

impl ReaperShape {
    /// `total` rows, `expired` of them due; of the rest, 40% live and 60% destroyed.
    pub fn new(total: usize, expired: usize) -> Self {
        let rest = total.saturating_sub(expired);
        let live = rest * 2 / 5;
        ReaperShape {
            total,
            expired,
            live,
            destroyed: rest - live,
        }
    }
}

/// Fill a fresh database with the reaper's fixture, rows of each kind
/// interleaved and their expiries spread at random.
pub async fn reaper_rows(db: &Db, shape: ReaperShape) -> anyhow::Result<()> {
    let now = now_ms();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let kinds: Vec<u8> = {
        let mut k = Vec::with_capacity(shape.total);
        k.extend(std::iter::repeat_n(0u8, shape.expired));
        k.extend(std::iter::repeat_n(1u8, shape.live));
        k.extend(std::iter::repeat_n(2u8, shape.destroyed));
        // Fisher–Yates, so the three kinds are interleaved in id order.
        for i in (1..k.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            k.swap(i, j);
        }
        k
    };
    let states = ["ready", "active", "provisioning", "requested"];
    let rows = kinds.into_iter().map(|kind| {
        let jitter = rng.below(HOUR_MS as u64) as i64;
        match kind {
            // Due: expired between one second and an hour ago.
            0 => Fixture {
                state: states[rng.below(4) as usize],
                created_at: now - 2 * HOUR_MS,
                expires_at: now - 1_000 - jitter,
                labels: "{}".into(),
            },
            // Live, due within the next hour or later.
            1 => Fixture {
                state: states[rng.below(2) as usize],
                created_at: now - HOUR_MS,
                expires_at: now + 60_000 + jitter,
                labels: "{}".into(),
            },
            _ => Fixture {
                state: "destroyed",
                created_at: now - 20 * HOUR_MS,
                expires_at: now - 19 * HOUR_MS + jitter,
                labels: "{}".into(),
            },
        }
    });
    let n = insert(db, rows).await?;
    anyhow::ensure!(n == shape.total, "inserted {n} rows, not {}", shape.total);
    Ok(())
}
