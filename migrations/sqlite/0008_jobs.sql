-- The leased job queue (store::queue): work done outside any transaction
-- (webhook deliveries, emails, purges), claimed with a lease and finished
-- only by the lease's holder.
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    key          TEXT NOT NULL,
    workspace_id TEXT REFERENCES workspaces(id) ON DELETE CASCADE,
    payload      TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status = 'queued' OR status = 'done' OR status = 'failed'),
    due_at       INTEGER NOT NULL,
    lease_owner  TEXT,
    lease_until  INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    finished_at  INTEGER
);
CREATE INDEX jobs_due ON jobs (kind, due_at) WHERE status = 'queued';
CREATE INDEX jobs_leased ON jobs (kind, key, lease_until) WHERE status = 'queued' AND lease_until IS NOT NULL;
