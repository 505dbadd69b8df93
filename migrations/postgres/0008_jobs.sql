-- The leased job queue (store::queue): work done outside any transaction
-- (webhook deliveries, emails, purges), claimed with a lease and finished
-- only by the lease's holder.
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    key          TEXT NOT NULL,
    workspace_id TEXT REFERENCES workspaces(id) ON DELETE CASCADE,
    payload      JSONB NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('queued', 'done', 'failed')),
    due_at       BIGINT NOT NULL,
    lease_owner  TEXT,
    lease_until  BIGINT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    finished_at  BIGINT
);
CREATE INDEX jobs_due ON jobs (kind, due_at) WHERE status = 'queued';
CREATE INDEX jobs_leased ON jobs (kind, key, lease_until) WHERE status = 'queued' AND lease_until IS NOT NULL;
