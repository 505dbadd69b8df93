-- Flows and their immutable versions. Every save of a flow's document adds a
-- version; runs (a later migration) keep the version they started on, so
-- editing an active flow strands nobody.
CREATE TABLE flows (
    id              TEXT PRIMARY KEY,
    workspace_id    TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('draft', 'active', 'paused')),
    current_version INTEGER NOT NULL,
    inbound_token   TEXT UNIQUE,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    CONSTRAINT flows_name_unique UNIQUE (workspace_id, name)
);
CREATE INDEX flows_by_workspace ON flows (workspace_id, id);

CREATE TABLE flow_versions (
    flow_id    TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    document   JSONB NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (flow_id, version)
);
