//! The second stage of group commit: make committed batches durable, then
//! answer their callers.
//!
//! In WAL mode `synchronous=FULL` is `synchronous=NORMAL` plus one fsync of
//! the WAL file after each commit (SQLite documents exactly this). The writer
//! connection runs with NORMAL, and this thread does that fsync instead,
//! *before* any caller of the batch is answered. The guarantee is the same
//! (a 2xx is sent only once the commit frame is on disk), but the fsync of
//! batch k overlaps the execution of batch k+1 on the writer thread, and one
//! fsync covers every batch committed while the previous one ran.
//!
//! Checkpoints stay safe: with NORMAL, SQLite itself syncs the WAL before
//! copying frames into the database file and the database after.
//!
//! One difference remains, stated so nobody trips on it: other connections
//! can read a batch's rows during the fsync (a few hundred microseconds)
//! before they are durable. After a power loss in that window those rows are
//! gone, but no caller was told they were stored.

use std::fs::File;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::store::{Result, StoreError};

/// Answers one caller with the outcome of its batch.
pub type Reply = Box<dyn FnOnce(Result<()>) + Send>;

pub struct Syncer {
    tx: mpsc::Sender<(Instant, Vec<Reply>)>,
    thread: JoinHandle<()>,
}

impl Syncer {
    /// Opens the WAL file of the database at `db_path` (it exists once the
    /// database has been opened in WAL mode) and starts the thread.
    pub fn start(db_path: &Path) -> Result<Self> {
        let mut wal = db_path.as_os_str().to_owned();
        wal.push("-wal");
        let file = File::options()
            .read(true)
            .write(true)
            .open(&wal)
            .map_err(|e| {
                StoreError::Internal(format!(
                    "cannot open the WAL file {}: {e}",
                    Path::new(&wal).display()
                ))
            })?;
        let (tx, rx) = mpsc::channel::<(Instant, Vec<Reply>)>();
        let thread = std::thread::Builder::new()
            .name("sqlite-fsync".into())
            .spawn(move || run(file, rx))
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        Ok(Self { tx, thread })
    }

    /// Queues a committed batch's replies; they are answered after the next
    /// fsync. If the thread is gone, they are answered with an error now.
    pub fn submit(&self, replies: Vec<Reply>) {
        if let Err(mpsc::SendError((_, replies))) = self.tx.send((Instant::now(), replies)) {
            for r in replies {
                r(Err(StoreError::Internal(
                    "the WAL sync thread stopped".into(),
                )));
            }
        }
    }

    /// Syncs and answers what is queued, then stops the thread.
    pub fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

fn run(wal: File, rx: mpsc::Receiver<(Instant, Vec<Reply>)>) {
    while let Ok((queued, first)) = rx.recv() {
        let mut groups = vec![first];
        // How long the oldest committed batch waited for this thread.
        metrics::histogram!("hookflow_sqlite_fsync_wait_seconds")
            .record(queued.elapsed().as_secs_f64());
        while let Ok((_, more)) = rx.try_recv() {
            groups.push(more);
        }
        let started = Instant::now();
        let synced = wal.sync_data();
        metrics::histogram!("hookflow_sqlite_fsync_seconds")
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &synced {
            // The rows are committed but may not be on disk: refuse to call
            // them stored. Operators must look at the disk.
            tracing::error!(error = %e, "fsync of the SQLite WAL failed; the writes of this group are refused");
        }
        for reply in groups.into_iter().flatten() {
            reply(match &synced {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Internal(format!("fsync failed: {e}"))),
            });
        }
    }
}
