-- The inbound-call log: the most recent calls to each flow's inbound URL, as
-- received (body cut at 64 KiB), with the answer given; refused calls too.
-- No headers are kept, so no API key or signature is ever stored. Trimmed to
-- `inbound_log_per_flow` rows per flow by the writer of each batch.
CREATE TABLE inbound_calls (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL,
    flow_id      TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    received_at  INTEGER NOT NULL,
    status       INTEGER NOT NULL,
    code         TEXT NOT NULL,
    message      TEXT,
    run_id       TEXT,
    contact_id   TEXT,
    caller_ip    TEXT,
    body         BLOB,
    body_size    INTEGER NOT NULL
);
CREATE INDEX inbound_calls_by_flow ON inbound_calls (flow_id, id);
-- A deleted contact leaves no trace here either (the bodies hold personal data).
CREATE INDEX inbound_calls_by_contact ON inbound_calls (contact_id) WHERE contact_id IS NOT NULL;
CREATE TRIGGER inbound_calls_forget_contact AFTER DELETE ON contacts
BEGIN
    DELETE FROM inbound_calls WHERE contact_id = OLD.id;
END;
