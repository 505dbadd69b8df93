//! The embedded SQLite store: one file in WAL mode, one writer thread doing
//! group commit ([`writer`]), a thread that fsyncs the WAL before any caller
//! is answered ([`durable`]: the guarantee of `synchronous=FULL`, pipelined),
//! a checkpoint thread ([`checkpoint`]) and a pool of read-only connections
//! ([`readers`]).
//!
//! rusqlite rather than sqlx here: SQLite is a library, not a server, and the
//! group-commit writer needs a plain synchronous connection it owns on one
//! thread; sqlx's SQLite driver would add an async hop per statement on top
//! of its own worker thread.

mod cache;
mod checkpoint;
mod durable;
mod engine;
mod queries;
mod readers;
mod sql;
mod writer;

use std::path::PathBuf;

use async_trait::async_trait;
use rusqlite::Connection;

use super::{
    AdvanceOutcome, ClaimedRun, Result, RunAdvance, Store, StoreError, StoreOptions, now_millis,
};
use crate::domain::Millis;
use crate::store::logic;

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/sqlite/0001_init.sql"),
    include_str!("../../../migrations/sqlite/0002_flows.sql"),
    include_str!("../../../migrations/sqlite/0003_runs.sql"),
    include_str!("../../../migrations/sqlite/0004_engine.sql"),
    include_str!("../../../migrations/sqlite/0005_inbound_secret.sql"),
    include_str!("../../../migrations/sqlite/0006_inbound_calls.sql"),
    include_str!("../../../migrations/sqlite/0007_event_bytes.sql"),
    include_str!("../../../migrations/sqlite/0008_jobs.sql"),
    include_str!("../../../migrations/sqlite/0009_webhooks.sql"),
    include_str!("../../../migrations/sqlite/0010_inline_webhooks.sql"),
    include_str!("../../../migrations/sqlite/0011_trigger_key_case.sql"),
];

pub struct SqliteStore {
    writer: writer::Writer,
    readers: readers::Readers,
    keys: super::key_cache::KeyCache,
    checkpointer: checkpoint::Checkpointer,
}

pub(crate) fn internal(e: rusqlite::Error) -> StoreError {
    StoreError::Internal(e.to_string())
}

/// A stored enum at column `idx`, decoded loudly: text no variant has is an
/// error naming it, never a default (see `domain::stored`).
pub(crate) fn stored<T: crate::domain::Stored>(
    r: &rusqlite::Row,
    idx: usize,
) -> rusqlite::Result<T> {
    let raw: String = r.get(idx)?;
    T::decode(&raw).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A stored JSON column at `idx`: text that does not parse as `T` is an
/// error, never `null` or an empty default.
pub(crate) fn json<T: serde::de::DeserializeOwned>(
    r: &rusqlite::Row,
    idx: usize,
) -> rusqlite::Result<T> {
    let raw: String = r.get(idx)?;
    serde_json::from_str(&raw).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

impl SqliteStore {
    pub async fn open(path: &str, options: &StoreOptions) -> Result<Self> {
        let path = PathBuf::from(path);
        let opts = options.clone();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, &opts))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    fn open_blocking(path: PathBuf, options: &StoreOptions) -> Result<Self> {
        if !options.create && !path.is_file() {
            let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
            return Err(StoreError::NoDatabase(format!(
                "there is no file {}",
                shown.display()
            )));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Internal(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        // Without `create`, open without SQLite's create flag and look at the
        // schema version before any pragma: a file that is not ours is left
        // exactly as it was (no WAL switch, no -wal/-shm files).
        let mut conn = if options.create {
            Connection::open(&path)
        } else {
            Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_URI
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
        }
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::CannotOpen) => {
                StoreError::NoDatabase(format!("cannot open {}", path.display()))
            }
            _ => internal(e),
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(internal)?;
        if !options.create {
            refuse_foreign(&conn)?;
        }
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL; -- plus our own WAL fsync per batch: see durable.rs
             PRAGMA foreign_keys = ON;
             PRAGMA cache_size = -8192;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA journal_size_limit = 67108864;
             PRAGMA temp_store = MEMORY; -- savepoints' statement journals: RAM, not temp files",
        )
        .map_err(internal)?;
        // Every statement the writer runs stays prepared: with the engine's
        // statements, 64 slots made them evict each other (re-parsed SQL).
        conn.set_prepared_statement_cache_capacity(256);
        migrate(&mut conn)?;
        let readers = readers::Readers::open(path.clone(), options.pool_size.max(1) as usize)?;
        let restart_wanted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        Ok(Self {
            writer: writer::Writer::start(
                conn,
                options.max_batch.max(1),
                restart_wanted.clone(),
                durable::Syncer::start(&path)?,
            ),
            readers,
            keys: super::key_cache::KeyCache::new(options.key_cache_ttl),
            checkpointer: checkpoint::Checkpointer::start(path, restart_wanted)?,
        })
    }
}

fn not_ours() -> StoreError {
    StoreError::NoDatabase("the file is not a hookflow database (it has no hookflow tables)".into())
}

/// Refuses a file that holds no hookflow schema, before anything writes to it.
fn refuse_foreign(conn: &Connection) -> Result<()> {
    let applied: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|_| not_ours())?;
    if applied == 0 {
        Err(not_ours())
    } else {
        Ok(())
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let applied: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(internal)? as usize;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Internal(format!(
            "the database has schema version {applied}, newer than this binary knows ({}); upgrade hookflow",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction().map_err(internal)?;
        tx.execute_batch(sql).map_err(internal)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(internal)?;
        tx.commit().map_err(internal)?;
        tracing::info!(migration = i + 1, "applied SQLite migration");
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        self.readers
            .read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(internal))
            .await
    }

    async fn close(&self) {
        self.writer.close().await;
        self.checkpointer.close();
        self.readers.close();
    }

    fn key_cache(&self) -> &super::key_cache::KeyCache {
        &self.keys
    }

    async fn logic_write(&self, op: logic::Op) -> Result<logic::OpDone> {
        self.writer
            .write(move |c| {
                logic::run_ready(logic::perform(&mut engine::SqliteTx(c), &op, now_millis()))
            })
            .await
    }

    async fn claim_runs(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: crate::store::ClaimLimit,
    ) -> Result<Vec<ClaimedRun>> {
        let owner = owner.to_owned();
        // A lease lost in a power cut only means the runs are claimed
        // again, and nothing a run does is seen outside before a durable
        // write (its completion; deliveries go out after their own durable
        // claim): no need to wait for the fsync.
        self.writer
            .write_soft(move |c| engine::claim(c, &owner, now, lease_until, limit))
            .await
    }

    async fn complete_runs(
        &self,
        owner: &str,
        now: Millis,
        advances: Vec<RunAdvance>,
    ) -> Result<Vec<AdvanceOutcome>> {
        let owner = owner.to_owned();
        let prepared = engine::prepare(advances)?;
        self.writer
            .write(move |c| engine::complete(c, &owner, now, prepared))
            .await
    }

    async fn claim_jobs(
        &self,
        claim: crate::store::queue::JobClaim,
    ) -> Result<Vec<crate::store::queue::Job>> {
        // Durable, unlike run claims: what a job does next (an HTTP request)
        // is seen outside, so the rows it acts on must be on disk first.
        self.writer
            .write(move |c| logic::run_ready(logic::queue::claim(&mut engine::SqliteTx(c), &claim)))
            .await
    }

    async fn run_sql(
        &self,
        script: Vec<crate::store::sql::Stmt>,
    ) -> Result<Vec<crate::store::sql::Done>> {
        self.writer.write(move |c| sql::script(c, &script)).await
    }

    async fn run_sql_then_claim(
        &self,
        script: Vec<crate::store::sql::Stmt>,
        claim: crate::store::queue::JobClaim,
    ) -> Result<(Vec<crate::store::sql::Done>, Vec<crate::store::queue::Job>)> {
        // Durable, as `claim_jobs` is. The claim runs in its own savepoint:
        // if it fails, it is undone alone and the script still commits.
        self.writer
            .write(move |c| {
                let done = sql::script(c, &script)?;
                let tx = &mut engine::SqliteTx(c);
                let claimed = logic::run_ready(async {
                    logic::savepoint(tx).await?;
                    let claimed = logic::queue::claim(tx, &claim).await;
                    logic::end_savepoint(tx, claimed.is_ok()).await?;
                    Ok(claimed)
                })?;
                let jobs = claimed.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "a claim behind a finish failed; the finish stands");
                    Vec::new()
                });
                Ok((done, jobs))
            })
            .await
    }

    async fn read_sql(
        &self,
        script: Vec<crate::store::sql::Stmt>,
    ) -> Result<Vec<crate::store::sql::Done>> {
        self.readers.read(move |c| sql::script(c, &script)).await
    }
}
