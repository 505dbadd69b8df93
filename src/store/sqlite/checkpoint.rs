//! WAL checkpoints on their own thread and connection.
//!
//! Why: SQLite's automatic checkpoint runs inside the COMMIT of whichever
//! transaction crosses the threshold, i.e. on the group-commit writer, which
//! then copies pages and fsyncs the database file while every queued request
//! waits. Here the writer's auto-checkpoint is off and this thread runs
//! PASSIVE checkpoints (which never block the writer or readers) on the other
//! core, several times a second.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::store::Result;

const INTERVAL: Duration = Duration::from_millis(200);

pub struct Checkpointer {
    stop: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    pub fn start(path: PathBuf) -> Result<Self> {
        let conn = Connection::open(&path).map_err(super::internal)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(super::internal)?;
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(INTERVAL) {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
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
