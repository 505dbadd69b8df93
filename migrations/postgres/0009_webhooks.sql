-- Outbound webhooks (issue 10): reusable webhooks, one delivery per message
-- (its id is the `webhook-id` of every attempt) and every attempt of it.
-- Read and written only through the shared statements of store::outbound,
-- so the columns keep the dialect both databases share: integers, 0/1
-- booleans, JSON as text.
CREATE TABLE webhooks (
    id               TEXT PRIMARY KEY,
    workspace_id     TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    -- NULL: a webhook (flows name it); a JSON array: a subscription to
    -- those event types (/v1/subscriptions), delivered the same way.
    event_types      TEXT,
    spec             TEXT NOT NULL,
    secret           TEXT NOT NULL,
    old_secret       TEXT,
    old_secret_until BIGINT,
    max_concurrency  BIGINT NOT NULL DEFAULT 8,
    enabled          BIGINT NOT NULL DEFAULT 1,
    disabled_reason  TEXT,
    verification_key TEXT NOT NULL,
    verified         BIGINT NOT NULL DEFAULT 0,
    next_allowed_at  BIGINT NOT NULL DEFAULT 0,
    last_success_at  BIGINT,
    failing_since    BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX webhooks_workspace ON webhooks (workspace_id, id);

CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    workspace_id    TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    webhook_id      TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_type      TEXT NOT NULL,
    flow_id         TEXT,
    flow_name       TEXT,
    run_id          TEXT,
    contact_id      TEXT,
    step            TEXT,
    context         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'throttled', 'disabled')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX deliveries_workspace ON deliveries (workspace_id, id);
CREATE INDEX deliveries_webhook ON deliveries (webhook_id, id);
CREATE INDEX deliveries_run ON deliveries (run_id) WHERE run_id IS NOT NULL;

CREATE TABLE delivery_attempts (
    id               TEXT PRIMARY KEY,
    delivery_id      TEXT NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    workspace_id     TEXT NOT NULL,
    started_at       BIGINT NOT NULL,
    request          TEXT NOT NULL,
    response_status  BIGINT,
    response_headers TEXT,
    response_body    BYTEA,
    truncated        BIGINT NOT NULL DEFAULT 0,
    duration_ms      BIGINT NOT NULL,
    error            TEXT,
    outcome          TEXT NOT NULL
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id);
CREATE INDEX delivery_attempts_started ON delivery_attempts (started_at);

-- A job's own per-key limit (a webhook's max_concurrency), over the claim's.
ALTER TABLE jobs ADD COLUMN key_limit BIGINT;
-- The claim's loose index scan over keys, and each key's oldest due jobs.
CREATE INDEX jobs_key_due ON jobs (kind, key, due_at, id) WHERE status = 'queued';
CREATE INDEX webhooks_subscriptions ON webhooks (workspace_id) WHERE event_types IS NOT NULL;
-- The claim reads jobs by key now (jobs_key_due); the old claim's index
-- only misled the planner (it chose it on fresh statistics) and cost every
-- update of a job.
DROP INDEX jobs_due;
