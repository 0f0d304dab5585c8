//! SQLite storage. One writer connection (SQLite has one writer; routing every
//! write through one connection is what keeps `database is locked` away) and
//! a small pool of readers, in WAL mode so reads never wait on the writer.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sandboxer_api::{Consumer, Event, Failure, Sandbox, SandboxState, TerminationReason};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};

mod audit;
mod ledger;
mod outbox;
mod placement;
mod pool;
mod reaper;
mod rows;
mod sandboxes;
mod snapshots;
mod ssh_keys;
pub use audit::{AuditFilter, NewAudit};

/// [`SandboxState::HOLDING`] as an SQL list, for `state IN {HOLDING}`: the
/// one place the states that hold a project's cap, a name and a running
/// TTL are written down for the queries (and the partial indexes of
/// migration 0013 list the same).
pub(crate) const HOLDING: &str = "('requested','provisioning','ready','active','paused')";
pub use ledger::{
    Billing, Escrow, Extended, Granted, LedgerFilter, Rerouted, Shortfall, Target, UsageFilter,
};
pub use outbox::OutboxEvent;
pub use pool::{PoolMember, POOL_ACTOR, POOL_PROJECT};
pub use rows::{EventRow, SandboxRow};
use sandboxes::{fetch_in, insert_event, push_states, SELECT};
pub use sandboxes::{Change, Created, ListFilter, NewLifetime, NewSandbox, PauseStep, Transition};
pub use snapshots::{Captured, NewSnapshot, SnapshotCreated, SnapshotFilter, SnapshotRow};
pub use ssh_keys::{KeyAdded, MAX_SSH_KEYS};

/// Storage failures. Client mistakes never end up here; these are 500s.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("migrating database {path}: {source}")]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("corrupt row {id}: {what}")]
    Corrupt { id: String, what: String },
}

impl StoreError {
    /// Whether this is a live sandbox's name clashing with another's (the
    /// unique index `sandboxes_live_name`).
    pub fn is_name_clash(&self) -> bool {
        match self {
            StoreError::Sql(sqlx::Error::Database(e)) => {
                e.is_unique_violation() && e.message().contains("sandboxes.name")
            }
            _ => false,
        }
    }
}

/// A new id: `prefix` + a ULID that sorts after every id this process made
/// before (monotonic within a millisecond), so "newest first" is id order.
pub fn new_id(prefix: &str) -> String {
    static GENERATOR: std::sync::Mutex<Option<ulid::Generator>> = std::sync::Mutex::new(None);
    let mut guard = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let ulid = guard
        .get_or_insert_with(ulid::Generator::new)
        .generate()
        .unwrap_or_else(|_| ulid::Ulid::new());
    format!("{prefix}_{ulid}")
}

/// Milliseconds since the epoch, the unit of every time column.
pub use crate::clock::now_ms;

/// A stored time as UTC.
pub fn to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The database: a writer pool of one and a reader pool.
#[derive(Clone, Debug)]
pub struct Db {
    pub reader: SqlitePool,
    pub writer: SqlitePool,
    /// Whether the last write transaction committed (see [`Db::writable`]).
    health: Arc<WriterHealth>,
}

/// Whether the writer can write: false from a failed commit (or a writer
/// connection found with a transaction left open) until the next commit
/// that succeeds. `/readyz` answers 503 while it is false.
#[derive(Debug)]
struct WriterHealth {
    ok: AtomicBool,
    /// When [`Db::check_writable`] last probed (at most one probe a second).
    last_probe: std::sync::Mutex<Option<std::time::Instant>>,
}

impl WriterHealth {
    fn set(&self, ok: bool) {
        let was = self.ok.swap(ok, Ordering::SeqCst);
        if was && !ok {
            tracing::error!(
                "the database cannot be written; /readyz answers 503 until a write commits again"
            );
        } else if !was && ok {
            tracing::info!("the database is writable again");
        }
    }
}

impl StoreError {
    /// Whether the database could not store this (disk full, I/O error,
    /// read-only file): the server's fault and worth retrying later, never
    /// the request's.
    pub fn is_storage_unavailable(&self) -> bool {
        let StoreError::Sql(sqlx::Error::Database(e)) = self else {
            return false;
        };
        // Extended result codes: the primary code is the low byte.
        let primary = e
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff);
        // SQLITE_READONLY 8, SQLITE_IOERR 10, SQLITE_FULL 13, SQLITE_CANTOPEN 14.
        matches!(primary, Some(8 | 10 | 13 | 14))
    }
}

impl Db {
    /// Open (creating if missing) and migrate the database at `path`.
    pub async fn open(path: &Path) -> Result<Db, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let base = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .pragma("temp_store", "memory")
            // 2 MiB of page cache per connection (SQLite's default): five
            // connections of 8 MiB each held up to 40 MiB of the daemon's
            // memory after a busy spell; the OS page cache is one pread away.
            .pragma("cache_size", "-2000");
        let health = Arc::new(WriterHealth {
            ok: AtomicBool::new(true),
            last_probe: std::sync::Mutex::new(None),
        });
        let on_release = health.clone();
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            // A COMMIT that fails (SQLITE_FULL, I/O error) can leave the
            // connection inside a transaction, or leave sqlx's count of open
            // transactions out of step with SQLite's. Returned to the pool
            // like that, every later "commit" only released a savepoint of
            // the transaction left open: answered as done, never written,
            // until a restart. Such a connection is closed here instead (SQLite
            // rolls back on close) and the pool opens a fresh one.
            .after_release(move |conn, _meta| {
                let health = on_release.clone();
                Box::pin(async move {
                    if writer_is_clean(conn).await {
                        Ok(true)
                    } else {
                        tracing::error!(
                            "writer connection left inside a transaction (a failed commit?): closed and replaced"
                        );
                        health.set(false);
                        Ok(false)
                    }
                })
            })
            .connect_with(base.clone().create_if_missing(true))
            .await
            .map_err(open_err)?;
        sqlx::migrate!("../../migrations")
            .run(&writer)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.to_owned(),
                source,
            })?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(base.read_only(true))
            .await
            .map_err(open_err)?;
        Ok(Db {
            reader,
            writer,
            health,
        })
    }

    /// Whether the last write transaction committed; false after a failed
    /// commit (a full disk, an I/O error) until one succeeds again.
    pub fn writable(&self) -> bool {
        self.health.ok.load(Ordering::SeqCst)
    }

    /// [`Db::writable`], and when it is false, a probe (at most one a
    /// second): a one-page write transaction whose commit clears the flag.
    /// Without it a daemon taken out of rotation by `/readyz` would get no
    /// write that could tell it the disk has room again.
    pub async fn check_writable(&self) -> bool {
        if self.writable() {
            return true;
        }
        {
            let mut last = self
                .health
                .last_probe
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return false;
            }
            *last = Some(std::time::Instant::now());
        }
        let probe = async {
            let mut tx = self.writer.begin().await?;
            // Rewriting the header's user_version (unused by the daemon)
            // dirties one page: the commit must append it to the WAL.
            let v: i64 = sqlx::query_scalar("PRAGMA user_version")
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(&format!("PRAGMA user_version = {v}"))
                .execute(&mut *tx)
                .await?;
            self.commit(tx).await
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), probe).await;
        self.writable()
    }

    /// Commit a write transaction and record whether the writer can write.
    /// A failed commit is an error (the caller answers 5xx, never success);
    /// the transaction is rolled back when dropped, and `after_release`
    /// replaces the connection if that left anything open.
    pub(crate) async fn commit(&self, tx: Transaction<'_, Sqlite>) -> Result<(), StoreError> {
        match tx.commit().await {
            Ok(()) => {
                self.health.set(true);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; nothing of this transaction was stored");
                self.health.set(false);
                Err(e.into())
            }
        }
    }

    /// Close both pools (on shutdown).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// Whether a writer connection going back to the pool holds no transaction,
/// neither by sqlx's count nor by SQLite's own state. The worker runs
/// commands in order, so the probe also waits for the rollback a dropped
/// transaction queued.
fn writer_is_clean(conn: &mut sqlx::SqliteConnection) -> futures::future::BoxFuture<'_, bool> {
    use sqlx::{Connection, Executor};
    Box::pin(async move {
        // `BEGIN` fails inside a transaction: SQLite still holds one open.
        if conn.execute("BEGIN").await.is_err() {
            return false;
        }
        if conn.execute("ROLLBACK").await.is_err() {
            return false;
        }
        !conn.is_in_transaction()
    })
}
