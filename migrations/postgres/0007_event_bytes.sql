-- The size of a run's event data as received (its JSON text), so that a
-- claim can stop taking runs once their data would take too much memory
-- (`engine_claim_bytes`). Runs stored before this column count as 0.
ALTER TABLE runs ADD COLUMN event_bytes BIGINT NOT NULL DEFAULT 0;
