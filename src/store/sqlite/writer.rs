//! Group commit: one thread owns SQLite's only write connection and commits
//! many requests' writes in one transaction.
//!
//! Why: a durable commit waits for an fsync (about 6,000 a second on the
//! reference disk), so one transaction per request caps throughput there.
//! Instead, requests queue closures on a channel; the thread takes whatever
//! is queued (up to `max_batch`), runs each inside its own SAVEPOINT, commits
//! once, and hands the batch's replies to [`super::durable`], which fsyncs the
//! WAL and only then answers. A failed job rolls back to its savepoint without
//! touching its neighbours; a failed commit fails them all. No request is
//! answered before its data is on disk.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Result, StoreError};

use super::durable::{Reply, Syncer};
/// A job runs on the writer thread and says whether it succeeded (so the
/// thread knows to roll back its savepoint) and how to answer once the
/// commit's outcome is known.
type Run = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

struct Job {
    run: Run,
    /// Answered once the commit is on disk; else as soon as it is
    /// committed (see [`Writer::write_soft`]).
    durable: bool,
}

pub struct Writer {
    sender: RwLock<Option<mpsc::Sender<Job>>>,
    done: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl Writer {
    /// `restart_wanted` is raised by the checkpoint thread when the WAL is
    /// large; the writer then rewinds it between two batches.
    pub fn start(
        conn: Connection,
        max_batch: usize,
        restart_wanted: Arc<AtomicBool>,
        syncer: Syncer,
    ) -> Self {
        // Bounded: when the disk cannot keep up, callers wait here rather
        // than growing an unbounded queue of accepted-but-unwritten work.
        let (tx, rx) = mpsc::channel::<Job>(max_batch * 4);
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                run(conn, rx, max_batch, &restart_wanted, &syncer);
                // Answer what is still waiting for its fsync before reporting
                // the writer closed.
                syncer.finish();
                let _ = done_tx.send(());
            })
            .expect("spawning the SQLite writer thread");
        Self {
            sender: RwLock::new(Some(tx)),
            done: tokio::sync::Mutex::new(Some(done_rx)),
        }
    }

    /// Runs `f` in the next group transaction and returns its result once
    /// that transaction is committed and on disk.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.submit(f, true).await
    }

    /// Like [`Self::write`], but answered as soon as the transaction is
    /// committed, before its fsync: for writes whose loss in a power cut
    /// harms nothing, such as a lease taken by a claim (lost, the work is
    /// claimed again after the restart; at-least-once allows that). Any
    /// later durable commit makes it durable too (one WAL, in order).
    pub async fn write_soft<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.submit(f, false).await
    }

    async fn submit<T, F>(&self, f: F, durable: bool) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T>>();
        let enqueued = std::time::Instant::now();
        let run = Box::new(move |conn: &Connection| {
            metrics::histogram!("hookflow_sqlite_queue_wait_seconds")
                .record(enqueued.elapsed().as_secs_f64());
            let outcome = match catch_unwind(AssertUnwindSafe(|| f(conn))) {
                Ok(r) => r,
                Err(_) => Err(StoreError::Internal("a write job panicked".into())),
            };
            let ok = outcome.is_ok();
            let reply: Reply = Box::new(move |commit: Result<()>| {
                let _ = tx.send(commit.and(outcome));
            });
            (ok, reply)
        });
        let job = Job { run, durable };
        let sender = self
            .sender
            .read()
            .map_err(|_| closed())?
            .clone()
            .ok_or_else(closed)?;
        let started = std::time::Instant::now();
        sender.send(job).await.map_err(|_| closed())?;
        let out = rx.await.map_err(|_| closed())?;
        // Queueing + batch execution + commit + fsync, as a caller sees it.
        metrics::histogram!("hookflow_sqlite_write_seconds")
            .record(started.elapsed().as_secs_f64());
        out
    }

    /// Stops taking writes, lets queued ones commit, and waits for the thread.
    pub async fn close(&self) {
        if let Ok(mut s) = self.sender.write() {
            s.take();
        }
        if let Some(done) = self.done.lock().await.take() {
            let _ = done.await;
        }
    }
}

fn closed() -> StoreError {
    StoreError::Internal("the SQLite writer is closed".into())
}

fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    restart_wanted: &AtomicBool,
    syncer: &Syncer,
) {
    super::cache::enter_writer();
    let mut data_version: Option<i64> = None;
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        // Another process (the CLI) committed since the last batch: what the
        // writer caches may be stale.
        let version = conn
            .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
            .ok();
        if version.is_none() || version != data_version {
            super::cache::clear();
            data_version = version;
        }
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("hookflow_sqlite_commit_batch_size").record(batch.len() as f64);
        if let Some(replies) = commit_batch(&conn, &mut batch) {
            let (durable, soft): (Vec<_>, Vec<_>) = replies.into_iter().partition(|(d, _)| *d);
            for (_, reply) in soft {
                reply(Ok(()));
            }
            if !durable.is_empty() {
                syncer.submit(durable.into_iter().map(|(_, r)| r).collect());
            }
        }
        if restart_wanted.swap(false, Ordering::Relaxed) {
            let started = std::time::Instant::now();
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "WAL restart checkpoint failed; will retry");
            }
            metrics::histogram!("hookflow_sqlite_wal_restart_seconds")
                .record(started.elapsed().as_secs_f64());
        }
    }
    // The connection drops here: SQLite checkpoints and closes the WAL.
}

/// Runs and commits one batch; returns its replies (each with whether it
/// waits for the fsync), or `None` when the batch failed (its callers have
/// been answered).
fn commit_batch(conn: &Connection, batch: &mut Vec<Job>) -> Option<Vec<(bool, Reply)>> {
    let mut replies: Vec<(bool, Reply)> = Vec::with_capacity(batch.len());
    let result = (|| -> rusqlite::Result<()> {
        let started = std::time::Instant::now();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for job in batch.drain(..) {
            conn.prepare_cached("SAVEPOINT job")?.execute([])?;
            let (ok, reply) = (job.run)(conn);
            replies.push((job.durable, reply));
            if !ok {
                conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
            }
            conn.prepare_cached("RELEASE job")?.execute([])?;
        }
        let executed = std::time::Instant::now();
        conn.execute_batch("COMMIT")?;
        metrics::histogram!("hookflow_sqlite_batch_exec_seconds")
            .record((executed - started).as_secs_f64());
        metrics::histogram!("hookflow_sqlite_commit_seconds")
            .record(executed.elapsed().as_secs_f64());
        Ok(())
    })();
    match result {
        Ok(()) => Some(replies),
        Err(e) => {
            tracing::error!(error = %e, "SQLite group commit failed; every write in it is refused");
            let _ = conn.execute_batch("ROLLBACK");
            super::cache::clear();
            // Jobs not yet run (if BEGIN or a savepoint failed) are answered
            // by dropping them: their reply sender closes, the caller sees an
            // error, and nothing of theirs was written.
            batch.clear();
            for (_, r) in replies {
                r(Err(StoreError::Internal(format!("commit failed: {e}"))));
            }
            None
        }
    }
}
