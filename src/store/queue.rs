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

use crate::domain::{JobId, Millis, WorkspaceId};

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
