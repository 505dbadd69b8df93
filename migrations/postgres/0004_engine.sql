-- The flow engine (issue 3): what a waiting run waits for, how a run ended,
-- every step it executed, events, and an index of flows by trigger so that a
-- contact change finds the flows it starts without reading documents.
-- (See migrations/sqlite/0004_engine.sql for the meaning of each column.)

ALTER TABLE flows ADD COLUMN trigger_type TEXT NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN trigger_key TEXT NOT NULL DEFAULT '';
UPDATE flows f SET
    trigger_type = COALESCE(v.document->'trigger'->>'type', ''),
    trigger_key = COALESCE(v.document->'trigger'->>'list_id', v.document->'trigger'->>'name',
                           v.document->'trigger'->>'field', '')
FROM flow_versions v WHERE v.flow_id = f.id AND v.version = f.current_version;
CREATE INDEX flows_by_trigger ON flows (workspace_id, trigger_type, trigger_key) WHERE status = 'active';

ALTER TABLE runs ADD COLUMN wait_until BIGINT;
ALTER TABLE runs ADD COLUMN wait_event TEXT;
ALTER TABLE runs ADD COLUMN resume_event JSONB;
ALTER TABLE runs ADD COLUMN has_exits BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE runs ADD COLUMN step_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN end_reason TEXT;
ALTER TABLE runs ADD COLUMN finished_at BIGINT;
CREATE INDEX runs_waiting_by_contact ON runs (contact_id) WHERE status = 'waiting';
CREATE INDEX runs_by_workspace ON runs (workspace_id, id);
CREATE INDEX runs_by_status ON runs (workspace_id, status, id);

CREATE TABLE run_steps (
    run_id  TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    step    TEXT NOT NULL,
    type    TEXT NOT NULL,
    at      BIGINT NOT NULL,
    input   JSONB NOT NULL,
    outcome TEXT NOT NULL,
    detail  JSONB NOT NULL,
    error   TEXT,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE events (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    contact_id   TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    properties   JSONB NOT NULL,
    occurred_at  BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX events_by_contact ON events (contact_id, occurred_at);
