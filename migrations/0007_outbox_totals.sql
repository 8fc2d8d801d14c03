-- The events table's running totals, so that a start reads two numbers instead of counting
-- every row. The daemon's writer sets the row in each of its transactions; a replay from
-- another process records what it adds in outbox_changes, so the events table holds
-- outbox_totals plus outbox_changes. The count below runs once, when this migration applies.
CREATE TABLE outbox_totals (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    events INTEGER NOT NULL,
    bytes  INTEGER NOT NULL
);
INSERT INTO outbox_totals (id, events, bytes)
    SELECT 1, count(*), coalesce(sum(size), 0) FROM events;
-- The count includes what replays recorded.
UPDATE outbox_changes SET events = 0, bytes = 0;
