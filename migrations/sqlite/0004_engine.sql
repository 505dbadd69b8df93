-- The flow engine (issue 3): what a waiting run waits for, how a run ended,
-- every step it executed, events, and an index of flows by trigger so that a
-- contact change finds the flows it starts without reading documents.

-- Derived from the current version's trigger on every save: `inbound`,
-- `event` (key: the event name), `list_added` (key: the list id),
-- `field_changed` (key: the field name) or `flow` (key empty).
ALTER TABLE flows ADD COLUMN trigger_type TEXT NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN trigger_key TEXT NOT NULL DEFAULT '';
UPDATE flows SET
    trigger_type = (SELECT COALESCE(json_extract(v.document, '$.trigger.type'), '') FROM flow_versions v
                    WHERE v.flow_id = flows.id AND v.version = flows.current_version),
    trigger_key = (SELECT COALESCE(json_extract(v.document, '$.trigger.list_id'), json_extract(v.document, '$.trigger.name'),
                                   json_extract(v.document, '$.trigger.field'), '') FROM flow_versions v
                   WHERE v.flow_id = flows.id AND v.version = flows.current_version);
CREATE INDEX flows_by_trigger ON flows (workspace_id, trigger_type, trigger_key) WHERE status = 'active';

-- wait_until: the timer of the wait the run is in (for an event wait, its
-- timeout). wait_event: the event a waiting run waits for. resume_event: the
-- event that arrived for it (JSON), consumed by the engine. has_exits: the
-- flow version has exit conditions, so a contact change must wake the run.
ALTER TABLE runs ADD COLUMN wait_until INTEGER;
ALTER TABLE runs ADD COLUMN wait_event TEXT;
ALTER TABLE runs ADD COLUMN resume_event TEXT;
ALTER TABLE runs ADD COLUMN has_exits INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN step_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN end_reason TEXT;
ALTER TABLE runs ADD COLUMN finished_at INTEGER;
CREATE INDEX runs_waiting_by_contact ON runs (contact_id) WHERE status = 'waiting';
CREATE INDEX runs_by_workspace ON runs (workspace_id, id);
CREATE INDEX runs_by_status ON runs (workspace_id, status, id);

-- History (FL-6): one row per step execution.
CREATE TABLE run_steps (
    run_id  TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    step    TEXT NOT NULL,
    type    TEXT NOT NULL,
    at      INTEGER NOT NULL,
    input   TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail  TEXT NOT NULL,
    error   TEXT,
    PRIMARY KEY (run_id, seq)
) STRICT, WITHOUT ROWID;

-- Events received by the events API (IN-8).
CREATE TABLE events (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    contact_id   TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    properties   TEXT NOT NULL,
    occurred_at  INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX events_by_contact ON events (contact_id, occurred_at);
