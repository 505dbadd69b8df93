-- A claim sets only a run's lease (no indexed column), so it can be a HOT
-- update: no index entry written, if the new row version fits in its page.
-- Leave room for it; pages already written keep theirs until rewritten.
ALTER TABLE runs SET (fillfactor = 75);
