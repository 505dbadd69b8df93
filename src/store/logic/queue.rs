//! The leased job queue's claim, written once over `Tx::exec` (both
//! stores run this SQL). Per key: how many of its jobs are leased now and
//! its limit (the jobs' own `key_limit`, else the claim's `per_key`), then
//! its oldest due jobs up to the room left. Keys are found with a loose
//! index scan (one index probe per distinct key), so a claim costs a few
//! probes per key with queued jobs, not a read of every queued job: one
//! key's backlog of 100,000 never slows, or hides, another key's jobs.
//!
//! Two claimers must not count a key's leases at once: SQLite claims on
//! its one writer; PostgreSQL takes a transaction advisory lock per kind
//! first (the caller's).

use super::Tx;
use crate::domain::{JobId, WorkspaceId};
use crate::store::Result;
use crate::store::queue::{Job, JobClaim};
use crate::store::sql::{RowExt, Stmt};

/// Keys with queued jobs of a kind, in key order.
const KEYS: &str = "WITH RECURSIVE k(key) AS (
    SELECT MIN(key) FROM jobs WHERE kind = $1 AND status = 'queued'
    UNION ALL
    SELECT (SELECT MIN(j.key) FROM jobs j WHERE j.kind = $1 AND j.status = 'queued' AND j.key > k.key)
    FROM k WHERE k.key IS NOT NULL)
  SELECT key FROM k WHERE key IS NOT NULL";

/// A key's leases now, and its jobs' own limit.
const ROOM: &str = "SELECT
    (SELECT COUNT(*) FROM jobs WHERE kind = $1 AND key = $2 AND status = 'queued' AND lease_until > $3),
    (SELECT key_limit FROM jobs WHERE kind = $1 AND key = $2 AND status = 'queued' ORDER BY due_at LIMIT 1)";

const TAKE: &str =
    "UPDATE jobs SET lease_owner = $4, lease_until = $5, attempts = attempts + 1, updated_at = $3
  WHERE id IN (
    SELECT id FROM jobs
    WHERE kind = $1 AND key = $2 AND status = 'queued' AND due_at <= $3
      AND (lease_until IS NULL OR lease_until <= $3)
    ORDER BY due_at, id LIMIT $6)
  RETURNING id, kind, key, workspace_id, payload, attempts, lease_until";

pub(crate) async fn claim<T: Tx>(tx: &mut T, c: &JobClaim) -> Result<Vec<Job>> {
    let keys = tx
        .exec(&Stmt::new(KEYS, vec![c.kind.as_str().into()]))
        .await?;
    let mut jobs = Vec::new();
    for row in &keys.rows {
        let budget = c.limit.saturating_sub(jobs.len());
        if budget == 0 {
            break;
        }
        let key = row.text(0)?;
        let args = || vec![c.kind.as_str().into(), key.as_str().into(), c.now.into()];
        let room = tx.exec(&Stmt::new(ROOM, args())).await?;
        let r = room.rows.first().map(Vec::as_slice).unwrap_or_default();
        let leased = r.int(0)?;
        let limit = r
            .opt_int(1)?
            .or(c.per_key.map(i64::from))
            .unwrap_or(i64::MAX);
        let room = usize::try_from(limit.saturating_sub(leased))
            .unwrap_or(0)
            .min(budget);
        if room == 0 {
            continue;
        }
        let mut a = args();
        a.extend([
            c.owner.as_str().into(),
            c.lease_until.into(),
            i64::try_from(room).unwrap_or(i64::MAX).into(),
        ]);
        for r in tx.exec(&Stmt::new(TAKE, a)).await?.rows {
            jobs.push(Job {
                id: JobId::from_trusted(r.text(0)?),
                kind: r.text(1)?,
                key: r.text(2)?,
                workspace_id: r.opt_text(3)?.map(WorkspaceId::from_trusted),
                payload: r.json(4)?,
                attempt: r.int(5)?,
                lease_until: r.int(6)?,
            });
        }
    }
    // Oldest first (ids are time-ordered), whatever order the keys gave.
    jobs.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    Ok(jobs)
}
