//! The leased job queue's SQL on SQLite (see `store::queue`). Claims and
//! finishes are writes, so they run on the one writer: two claims never
//! overlap, which is what makes per-key limits hold.

use rusqlite::{Connection, OptionalExtension, params};

use super::{internal, stored};
use crate::domain::{JobId, Millis, WorkspaceId};
use crate::store::queue::{JobOutcome, JobRecord, NewJob, finish_columns};
use crate::store::{Result, StoreError};

pub fn enqueue(conn: &Connection, jobs: &[NewJob], now: Millis) -> Result<Vec<JobId>> {
    let mut s = conn
        .prepare_cached(
            "INSERT INTO jobs (id, kind, key, workspace_id, payload, status, due_at, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?7)",
        )
        .map_err(internal)?;
    let mut ids = Vec::with_capacity(jobs.len());
    for j in jobs {
        let id = JobId::generate();
        let payload = serde_json::to_string(&j.payload)
            .map_err(|e| StoreError::Internal(format!("job payload: {e}")))?;
        s.execute(params![
            id.as_str(),
            j.kind,
            j.key,
            j.workspace_id.as_ref().map(WorkspaceId::as_str),
            payload,
            j.due_at,
            now
        ])
        .map_err(internal)?;
        ids.push(id);
    }
    Ok(ids)
}

pub fn finish(
    conn: &Connection,
    id: &JobId,
    owner: &str,
    now: Millis,
    outcome: &JobOutcome,
) -> Result<bool> {
    let (status, due_at, error, finished) = finish_columns(outcome, now);
    let n = conn
        .prepare_cached(
            "UPDATE jobs SET status = ?4, due_at = COALESCE(?5, due_at), last_error = COALESCE(?6, last_error),
               finished_at = ?7, lease_owner = NULL, lease_until = NULL, updated_at = ?3
             WHERE id = ?1 AND lease_owner = ?2 AND lease_until > ?3 AND status = 'queued'",
        )
        .and_then(|mut s| {
            s.execute(params![id.as_str(), owner, now, status.as_str(), due_at, error, finished])
        })
        .map_err(internal)?;
    Ok(n == 1)
}

pub fn get(conn: &Connection, id: &JobId) -> Result<JobRecord> {
    conn.prepare_cached(
        "SELECT id, kind, key, status, attempts, due_at, last_error, lease_owner, finished_at
         FROM jobs WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.query_row([id.as_str()], |r| {
            Ok(JobRecord {
                id: JobId::from_trusted(r.get(0)?),
                kind: r.get(1)?,
                key: r.get(2)?,
                status: stored(r, 3)?,
                attempts: r.get(4)?,
                due_at: r.get(5)?,
                last_error: r.get(6)?,
                lease_owner: r.get(7)?,
                finished_at: r.get(8)?,
            })
        })
        .optional()
    })
    .map_err(internal)?
    .ok_or_else(|| StoreError::not_found("job", id))
}
