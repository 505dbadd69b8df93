//! WAL checkpoints on their own thread and connection.
//!
//! Why: SQLite's automatic checkpoint runs inside the COMMIT of whichever
//! transaction crosses the threshold, i.e. on the group-commit writer, which
//! then copies pages and fsyncs the database file while every queued request
//! waits. Here the writer's auto-checkpoint is off and this thread runs
//! PASSIVE checkpoints (which never block the writer or readers) on the other
//! core, several times a second.
//!
//! PASSIVE alone never lets the WAL rewind under continuous writes (there
//! are always new frames by the time it finishes), so the WAL grew without
//! bound (476 MiB in one benchmark run) and every commit extended the file,
//! making each fsync also a metadata journal commit. So when the WAL holds
//! more than `RESTART_FRAMES`, this thread raises `restart_wanted`; the
//! writer, between two batches, runs a RESTART checkpoint itself (copying
//! only the few frames written since the PASSIVE pass) and the next commit
//! starts again at the beginning of the already allocated WAL file. Doing the
//! RESTART here instead would make the writer wait in SQLite's busy handler,
//! which sleeps in whole milliseconds.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::store::Result;

const INTERVAL: Duration = Duration::from_millis(100);
/// About 16 MiB of 4 KiB pages.
const RESTART_FRAMES: i64 = 4096;

pub struct Checkpointer {
    stop: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    pub fn start(path: PathBuf, restart_wanted: Arc<AtomicBool>) -> Result<Self> {
        let conn = Connection::open(&path).map_err(super::internal)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(super::internal)?;
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(INTERVAL) {
                    if let Err(e) = checkpoint(&conn, &restart_wanted) {
                        tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                    }
                }
            })
            .map_err(|e| crate::store::StoreError::Internal(e.to_string()))?;
        Ok(Self {
            stop: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn close(&self) {
        if let Ok(mut s) = self.stop.lock() {
            s.take();
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

fn checkpoint(conn: &Connection, restart_wanted: &AtomicBool) -> rusqlite::Result<()> {
    // Returns (busy, frames in the WAL, frames checkpointed).
    let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    if frames > RESTART_FRAMES {
        restart_wanted.store(true, Ordering::Relaxed);
    }
    Ok(())
}
