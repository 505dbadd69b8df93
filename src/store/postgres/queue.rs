//! The leased job queue's SQL on PostgreSQL (see `store::queue`). Claims of
//! one kind take a transaction advisory lock first, so two processes never
//! both count a key's leases before either has written: per-key limits hold
//! across processes. Workers of different kinds never wait on each other.

use sqlx::{PgConnection, Row};

use super::internal;
use crate::domain::{JobId, Millis, Stored, WorkspaceId};
use crate::store::queue::{
    Job, JobClaim, JobOutcome, JobRecord, JobStatus, NewJob, finish_columns,
};
use crate::store::{Result, StoreError};

pub async fn enqueue(c: &mut PgConnection, jobs: &[NewJob], now: Millis) -> Result<Vec<JobId>> {
    let ids: Vec<JobId> = jobs.iter().map(|_| JobId::generate()).collect();
    sqlx::query(
        "INSERT INTO jobs (id, kind, key, workspace_id, payload, status, due_at, created_at, updated_at)
         SELECT id, kind, key, workspace_id, payload, 'queued', due_at, $7, $7
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::bigint[])
           AS j(id, kind, key, workspace_id, payload, due_at)",
    )
    .bind(ids.iter().map(JobId::as_str).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.key.as_str()).collect::<Vec<_>>())
    .bind(
        jobs.iter()
            .map(|j| j.workspace_id.as_ref().map(WorkspaceId::as_str))
            .collect::<Vec<_>>(),
    )
    .bind(jobs.iter().map(|j| &j.payload).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.due_at).collect::<Vec<_>>())
    .bind(now)
    .execute(&mut *c)
    .await
    .map_err(internal)?;
    Ok(ids)
}

pub async fn claim(c: &mut PgConnection, claim: &JobClaim) -> Result<Vec<Job>> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
        .bind(format!("jobs/{}", claim.kind))
        .execute(&mut *c)
        .await
        .map_err(internal)?;
    let per_key = claim.per_key.map_or(i64::MAX, i64::from);
    let rows = sqlx::query(
        "WITH c AS (
           SELECT id, key, due_at, key_limit, ROW_NUMBER() OVER (PARTITION BY key ORDER BY due_at, id) AS rn
           FROM jobs
           WHERE kind = $1 AND status = 'queued' AND due_at <= $2
             AND (lease_until IS NULL OR lease_until <= $2)),
         l AS (
           SELECT key, COUNT(*) AS n FROM jobs
           WHERE kind = $1 AND status = 'queued' AND lease_until > $2 GROUP BY key),
         picked AS (
           SELECT c.id FROM c LEFT JOIN l ON l.key = c.key
           WHERE c.rn + COALESCE(l.n, 0) <= COALESCE(c.key_limit, $3)
           ORDER BY c.due_at, c.id LIMIT $4)
         UPDATE jobs SET lease_owner = $5, lease_until = $6, attempts = attempts + 1, updated_at = $2
         FROM picked WHERE jobs.id = picked.id
         RETURNING jobs.id, jobs.kind, jobs.key, jobs.workspace_id, jobs.payload, jobs.attempts, jobs.lease_until",
    )
    .bind(&claim.kind)
    .bind(claim.now)
    .bind(per_key)
    .bind(claim.limit as i64)
    .bind(&claim.owner)
    .bind(claim.lease_until)
    .fetch_all(&mut *c)
    .await
    .map_err(internal)?;
    let mut jobs = rows
        .iter()
        .map(|r| {
            Ok(Job {
                id: JobId::from_trusted(r.try_get("id").map_err(internal)?),
                kind: r.try_get("kind").map_err(internal)?,
                key: r.try_get("key").map_err(internal)?,
                workspace_id: r
                    .try_get::<Option<String>, _>("workspace_id")
                    .map_err(internal)?
                    .map(WorkspaceId::from_trusted),
                payload: r.try_get("payload").map_err(internal)?,
                attempt: r.try_get("attempts").map_err(internal)?,
                lease_until: r.try_get("lease_until").map_err(internal)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    jobs.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    Ok(jobs)
}

pub async fn finish(
    c: &mut PgConnection,
    id: &JobId,
    owner: &str,
    now: Millis,
    outcome: &JobOutcome,
) -> Result<bool> {
    let (status, due_at, error, finished) = finish_columns(outcome, now);
    let n = sqlx::query(
        "UPDATE jobs SET status = $4, due_at = COALESCE($5, due_at), last_error = COALESCE($6, last_error),
           finished_at = $7, lease_owner = NULL, lease_until = NULL, updated_at = $3
         WHERE id = $1 AND lease_owner = $2 AND lease_until > $3 AND status = 'queued'",
    )
    .bind(id.as_str())
    .bind(owner)
    .bind(now)
    .bind(status.as_str())
    .bind(due_at)
    .bind(error)
    .bind(finished)
    .execute(&mut *c)
    .await
    .map_err(internal)?
    .rows_affected();
    Ok(n == 1)
}

pub async fn get(c: &mut PgConnection, id: &JobId) -> Result<JobRecord> {
    let r = sqlx::query(
        "SELECT id, kind, key, status, attempts, due_at, last_error, lease_owner, finished_at
         FROM jobs WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *c)
    .await
    .map_err(internal)?
    .ok_or_else(|| StoreError::not_found("job", id))?;
    let status: String = r.try_get("status").map_err(internal)?;
    Ok(JobRecord {
        id: JobId::from_trusted(r.try_get("id").map_err(internal)?),
        kind: r.try_get("kind").map_err(internal)?,
        key: r.try_get("key").map_err(internal)?,
        status: JobStatus::decode(&status)?,
        attempts: r.try_get("attempts").map_err(internal)?,
        due_at: r.try_get("due_at").map_err(internal)?,
        last_error: r.try_get("last_error").map_err(internal)?,
        lease_owner: r.try_get("lease_owner").map_err(internal)?,
        finished_at: r.try_get("finished_at").map_err(internal)?,
    })
}
