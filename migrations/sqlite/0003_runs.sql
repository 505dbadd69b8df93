-- Runs: one contact's walk through one flow version. Lease columns are for
-- the engine, which claims due runs (due_at <= now, lease free or expired).
CREATE TABLE runs (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    flow_id      TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    flow_version INTEGER NOT NULL,
    contact_id   TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    status       TEXT NOT NULL CHECK (status = 'active' OR status = 'waiting' OR status = 'completed'
                     OR status = 'exited' OR status = 'failed' OR status = 'cancelled'),
    step         TEXT,
    due_at       INTEGER,
    lease_owner  TEXT,
    lease_until  INTEGER,
    event_data   TEXT NOT NULL DEFAULT '{}',
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
-- At most one unfinished run per contact and flow (FL-3).
CREATE UNIQUE INDEX runs_one_active ON runs (flow_id, contact_id) WHERE status = 'active' OR status = 'waiting';
CREATE INDEX runs_by_contact ON runs (flow_id, contact_id);
CREATE INDEX runs_due ON runs (due_at) WHERE status = 'active' OR status = 'waiting';

-- Idempotency-Key: the first answer to a key is stored with a hash of the
-- request; a retry with the same key gets it back and changes nothing.
-- Keys are scoped (the flow id for inbound calls), so one order number sent
-- to two flows is two requests.
CREATE TABLE idempotency_keys (
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    response     TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, scope, key)
) STRICT, WITHOUT ROWID;
