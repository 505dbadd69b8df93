//! The leased job queue's SQL on SQLite (see `store::queue`). Claims and
//! finishes are writes, so they run on the one writer: two claims never
//! overlap, which is what makes per-key limits hold.

use rusqlite::{Connection, OptionalExtension, params};

use super::{internal, json, stored};
use crate::domain::{JobId, Millis, WorkspaceId};
use crate::store::queue::{Job, JobClaim, JobOutcome, JobRecord, NewJob, finish_columns};
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

/// Due jobs of the kind, oldest first; a job whose key already has
/// `per_key` leased (by anyone) waits. The window numbers each key's due
/// jobs, so one key's backlog never hides another key's jobs.
const CLAIM: &str =
    "UPDATE jobs SET lease_owner = ?5, lease_until = ?6, attempts = attempts + 1, updated_at = ?2
WHERE id IN (
  SELECT c.id FROM (
    SELECT id, key, due_at, key_limit, ROW_NUMBER() OVER (PARTITION BY key ORDER BY due_at, id) AS rn
    FROM jobs
    WHERE kind = ?1 AND status = 'queued' AND due_at <= ?2
      AND (lease_until IS NULL OR lease_until <= ?2)) c
  LEFT JOIN (SELECT key, COUNT(*) AS n FROM jobs
             WHERE kind = ?1 AND status = 'queued' AND lease_until > ?2 GROUP BY key) l
    ON l.key = c.key
  WHERE c.rn + COALESCE(l.n, 0) <= COALESCE(c.key_limit, ?3)
  ORDER BY c.due_at, c.id LIMIT ?4)
RETURNING id, kind, key, workspace_id, payload, attempts, lease_until";

pub fn claim(conn: &Connection, c: &JobClaim) -> Result<Vec<Job>> {
    let per_key = c.per_key.map_or(i64::MAX, i64::from);
    let mut s = conn.prepare_cached(CLAIM).map_err(internal)?;
    let mut jobs: Vec<Job> = s
        .query_map(
            params![
                c.kind,
                c.now,
                per_key,
                c.limit as i64,
                c.owner,
                c.lease_until
            ],
            |r| {
                Ok(Job {
                    id: JobId::from_trusted(r.get(0)?),
                    kind: r.get(1)?,
                    key: r.get(2)?,
                    workspace_id: r
                        .get::<_, Option<String>>(3)?
                        .map(WorkspaceId::from_trusted),
                    payload: json(r, 4)?,
                    attempt: r.get(5)?,
                    lease_until: r.get(6)?,
                })
            },
        )
        .and_then(|rows| rows.collect())
        .map_err(internal)?;
    // RETURNING gives no order: oldest id first (ids are time-ordered).
    jobs.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    Ok(jobs)
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
