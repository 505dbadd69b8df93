-- The size of a run's event data as stored, so that a claim can stop taking
-- runs once their data would take too much memory (`engine_claim_bytes`).
-- Runs stored before this column count as 0 until they finish.
ALTER TABLE runs ADD COLUMN event_bytes INTEGER NOT NULL DEFAULT 0;
