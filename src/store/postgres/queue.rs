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
    crate::store::logic::queue::claim(&mut super::engine::PgTx::new(c), claim).await
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
