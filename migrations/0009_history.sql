-- The recent history (GET /ui): a compact record of every event once its fate is settled,
-- written in the transaction that settles it (the ack after a 2xx, the move to the dead
-- letters), from the event's own JSON, so that ingest pays nothing for it. Pending events
-- are read from the events table. The relay's upkeep deletes records older than
-- history.keep_h and, past history.max_events, the oldest.
CREATE TABLE history (
    seq          INTEGER PRIMARY KEY,  -- the order records were written in
    received_at  REAL    NOT NULL,     -- when the relay took the event (epoch seconds)
    recorded_at  REAL    NOT NULL,     -- when its fate was settled
    fate         TEXT    NOT NULL CHECK (fate IN ('delivered', 'dead_lettered', 'not_sent')),
    reason       TEXT,                 -- a dead letter's reason
    pipeline_id  TEXT,                 -- the pipeline's unique_id (its own for a pipeline)
    end_at       REAL,                 -- the event's end (epoch seconds)
    -- The fields the page shows, as one JSON array in the order relay.store.queries reads
    -- them (level, ids, names, status, start, queue time, URL, error...): one extraction
    -- per event, which costs a tenth of a column each.
    fields       TEXT    NOT NULL
);
-- No index by pipeline: its random ids would split pages at every delivered batch, which
-- doubled the drain's cost; a pipeline's page reads the table through (100,000 rows).
CREATE INDEX history_by_recorded ON history (recorded_at);
