//! The leased job queue: work that leaves the database (a webhook delivery,
//! an email, a purge) is a job, claimed with a lease, done outside any
//! transaction, then finished only if the lease is still held.
//!
//! The cycle, the same on both stores:
//! 1. `enqueue_jobs` stores jobs, each due at a time, in the caller's own
//!    transaction where there is one (a 2xx means the job is stored).
//! 2. `claim_jobs` leases due jobs of one kind to an owner until a time, at
//!    most `per_key` leased at once per key (one endpoint, one mailbox), and
//!    counts the attempt. A lease that ends without a finish (the process
//!    died) makes the job claimable again; its attempt stays counted.
//! 3. The owner does the work with no transaction open.
//! 4. `finish_job` records done, retry (due again at a time, with the error)
//!    or failed, and only if the owner still holds the lease: a worker whose
//!    lease was taken over writes nothing, so a job's outcome is written once.
//!
//! Per-key limits hold across processes: SQLite claims on its one writer;
//! PostgreSQL claims one kind at a time under a transaction advisory lock.

use serde_json::Value;

use crate::domain::{JobId, Millis, Stored, WorkspaceId};
use crate::store::sql::{Arg, RowExt, Stmt, Val};

/// A job to store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    /// What the job is (`webhook_delivery`); workers claim one kind.
    pub kind: String,
    /// What `per_key` limits count (an endpoint id); `""` for none.
    pub key: String,
    pub workspace_id: Option<WorkspaceId>,
    pub payload: Value,
    pub due_at: Millis,
}

/// A claimed job.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub kind: String,
    pub key: String,
    pub workspace_id: Option<WorkspaceId>,
    pub payload: Value,
    /// 1 on the first claim; counts claims whose lease ended too.
    pub attempt: i64,
    pub lease_until: Millis,
}

/// What one claim may take.
#[derive(Clone, Debug, PartialEq)]
pub struct JobClaim {
    pub kind: String,
    pub owner: String,
    pub now: Millis,
    pub lease_until: Millis,
    pub limit: usize,
    /// Most jobs of one key leased at once (across every owner); `None` is
    /// no limit.
    pub per_key: Option<u32>,
}

/// How a job ended (this attempt).
#[derive(Clone, Debug, PartialEq)]
pub enum JobOutcome {
    Done,
    /// Due again at `due_at`; the error is kept for the record.
    Retry {
        due_at: Millis,
        error: String,
    },
    /// No more attempts.
    Failed {
        error: String,
    },
}

/// A job's state, as a person asking about it sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub kind: String,
    pub key: String,
    pub status: JobStatus,
    pub attempts: i64,
    pub due_at: Millis,
    pub last_error: Option<String>,
    pub lease_owner: Option<String>,
    pub finished_at: Option<Millis>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its due time, or leased (see `lease_owner`).
    Queued,
    Done,
    Failed,
}

crate::stored_enum!(JobStatus, "job status", {
    Queued => "queued",
    Done => "done",
    Failed => "failed",
});

/// Most jobs per `INSERT` of [`enqueue_script`] (9 parameters each, far
/// below either database's limit); chunks are powers of two.
const ENQUEUE_CHUNK: usize = 256;

/// The statements that store `jobs` (queued, due at their time), and the
/// ids they get, in order.
pub fn enqueue_script(jobs: &[NewJob], now: Millis) -> (Vec<JobId>, Vec<Stmt>) {
    let ids: Vec<JobId> = jobs.iter().map(|_| JobId::generate()).collect();
    let numbered: Vec<(&NewJob, &JobId)> = jobs.iter().zip(&ids).collect();
    let script = crate::store::sql::pow2_chunks(&numbered, ENQUEUE_CHUNK)
        .map(|chunk| {
            let mut rows = Vec::with_capacity(chunk.len());
            let mut args = Vec::with_capacity(9 * chunk.len());
            for (i, (j, id)) in chunk.iter().enumerate() {
                rows.push(format!("({})", crate::store::sql::params(1 + 9 * i, 9)));
                args.extend([
                    id.as_str().into(),
                    j.kind.as_str().into(),
                    j.key.as_str().into(),
                    j.workspace_id.as_ref().map(WorkspaceId::as_str).into(),
                    Arg::from(&j.payload),
                    JobStatus::Queued.as_str().into(),
                    j.due_at.into(),
                    now.into(),
                    now.into(),
                ]);
            }
            Stmt::new(
                format!(
                    "INSERT INTO jobs (id, kind, key, workspace_id, payload, status, due_at, created_at, updated_at)
                     VALUES {}",
                    rows.join(", ")
                ),
                args,
            )
        })
        .collect();
    (ids, script)
}

/// Records a claimed job's outcome, only while `owner` holds its lease at
/// `now` (one row changed) — else nothing.
pub fn finish_stmt(id: &JobId, owner: &str, now: Millis, outcome: &JobOutcome) -> Stmt {
    let (status, due_at, error, finished) = finish_columns(outcome, now);
    Stmt::new(
        "UPDATE jobs SET status = $4, due_at = COALESCE($5, due_at), last_error = COALESCE($6, last_error),
           finished_at = $7, lease_owner = NULL, lease_until = NULL, updated_at = $3
         WHERE id = $1 AND lease_owner = $2 AND lease_until > $3 AND status = 'queued'",
        vec![
            id.as_str().into(),
            owner.into(),
            now.into(),
            status.as_str().into(),
            due_at.into(),
            error.into(),
            finished.into(),
        ],
    )
}

/// Reads one job (NotFound if there is none; [`job_record`] decodes it).
pub fn get_stmt(id: &JobId) -> Stmt {
    Stmt::new(
        "SELECT id, kind, key, status, attempts, due_at, last_error, lease_owner, finished_at
         FROM jobs WHERE id = $1",
        vec![id.as_str().into()],
    )
    .or_not_found("job", id)
}

/// A [`get_stmt`] row as a record.
pub fn job_record(r: &[Val]) -> crate::store::Result<JobRecord> {
    Ok(JobRecord {
        id: JobId::from_trusted(r.text(0)?),
        kind: r.text(1)?,
        key: r.text(2)?,
        status: JobStatus::decode(r.str_at(3)?)?,
        attempts: r.int(4)?,
        due_at: r.int(5)?,
        last_error: r.opt_text(6)?,
        lease_owner: r.opt_text(7)?,
        finished_at: r.opt_int(8)?,
    })
}

/// The statuses and fields `finish_job` writes for an outcome: (status,
/// due_at, last_error, finished). One rule for both stores.
pub fn finish_columns(
    outcome: &JobOutcome,
    now: Millis,
) -> (JobStatus, Option<Millis>, Option<&str>, Option<Millis>) {
    match outcome {
        JobOutcome::Done => (JobStatus::Done, None, None, Some(now)),
        JobOutcome::Retry { due_at, error } => {
            (JobStatus::Queued, Some(*due_at), Some(error.as_str()), None)
        }
        JobOutcome::Failed { error } => (JobStatus::Failed, None, Some(error.as_str()), Some(now)),
    }
}
