-- Runs: one contact's walk through one flow version. Lease columns are for
-- the engine, which claims due runs (due_at <= now, lease free or expired).
CREATE TABLE runs (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    flow_id      TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    flow_version INTEGER NOT NULL,
    contact_id   TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    status       TEXT NOT NULL CHECK (status IN ('active', 'waiting', 'completed', 'exited', 'failed', 'cancelled')),
    step         TEXT,
    due_at       BIGINT,
    lease_owner  TEXT,
    lease_until  BIGINT,
    event_data   JSONB NOT NULL DEFAULT '{}',
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
-- At most one unfinished run per contact and flow (FL-3).
CREATE UNIQUE INDEX runs_one_active ON runs (flow_id, contact_id) WHERE status IN ('active', 'waiting');
CREATE INDEX runs_by_contact ON runs (flow_id, contact_id);
CREATE INDEX runs_due ON runs (due_at) WHERE status IN ('active', 'waiting');

-- Idempotency-Key: the first answer to a key is stored with a hash of the
-- request; a retry with the same key gets it back and changes nothing.
-- Keys are scoped (the flow id for inbound calls), so one order number sent
-- to two flows is two requests.
CREATE TABLE idempotency_keys (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash BYTEA NOT NULL,
    response     JSONB NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, scope, key)
);
