//! A small pool of read-only SQLite connections. In WAL mode readers never
//! block the writer nor each other, so reads run in parallel with group
//! commits on blocking threads.

use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use crate::store::{Result, StoreError};

pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Readers {
    pub fn open(path: PathBuf, size: usize) -> Result<Self> {
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(open_reader(&path)?);
        }
        Ok(Self {
            path,
            idle: Mutex::new(idle),
            permits: Semaphore::new(size),
        })
    }

    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Internal("reader pool closed".into()))?;
        let conn = match self.idle.lock().ok().and_then(|mut v| v.pop()) {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let joined = tokio::task::spawn_blocking(move || {
            let r = f(&conn);
            (r, conn)
        })
        .await;
        match joined {
            Ok((r, conn)) => {
                if let Ok(mut v) = self.idle.lock() {
                    v.push(conn);
                }
                r
            }
            // The connection went down with the panicking task; the next
            // read opens a fresh one.
            Err(e) => Err(StoreError::Internal(format!("read task failed: {e}"))),
        }
    }

    pub fn close(&self) {
        if let Ok(mut v) = self.idle.lock() {
            v.clear();
        }
        self.permits.close();
    }
}

fn open_reader(path: &PathBuf) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(super::internal)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(super::internal)?;
    Ok(conn)
}
