-- The recent history (GET /ui): a compact record of every event once its fate is settled.
-- The transaction that settles an event (the ack after a 2xx, the move to the dead letters)
-- copies its body here, which costs the drain a copy and no JSON work; the relay's upkeep
-- then compacts each copy into the fields the page shows (fields, pipeline_id) and drops
-- the body, in short transactions off the drain's path. Pending events are read from the
-- events table. The upkeep also deletes records older than history.keep_h and, past
-- history.max_events, the oldest.
CREATE TABLE history (
    seq          INTEGER PRIMARY KEY,  -- the order records were written in
    received_at  REAL    NOT NULL,     -- when the relay took the event (epoch seconds)
    recorded_at  REAL    NOT NULL,     -- when its fate was settled
    fate         TEXT    NOT NULL CHECK (fate IN ('delivered', 'dead_lettered', 'not_sent')),
    reason       TEXT,                 -- a dead letter's reason
    end_at       REAL,                 -- the event's end (epoch seconds)
    body         BLOB,                 -- the event as settled, until compacted
    pipeline_id  TEXT,                 -- once compacted: the pipeline's unique_id
    -- Once compacted: the fields the page shows, as one JSON array in the order
    -- relay.store.queries reads them (level, ids, names, status, start, queue time...).
    fields       TEXT
);
-- No index by pipeline: its random ids would split pages at every compaction; a pipeline's
-- page reads the table through (at most history.max_events rows).
CREATE INDEX history_by_recorded ON history (recorded_at);
