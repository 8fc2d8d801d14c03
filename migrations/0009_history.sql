-- The recent history (GET /ui): a compact record of every event once its fate is settled,
-- written in the transaction that settles it (the ack after a 2xx, the move to the dead
-- letters), from the event's own JSON, so that ingest pays nothing for it. Pending events
-- are read from the events table. The relay's upkeep deletes records older than
-- history.keep_h and, past history.max_events, the oldest.
CREATE TABLE history (
    seq            INTEGER PRIMARY KEY,  -- the order records were written in
    received_at    REAL    NOT NULL,     -- when the relay took the event (epoch seconds)
    recorded_at    REAL    NOT NULL,     -- when its fate was settled
    fate           TEXT    NOT NULL CHECK (fate IN ('delivered', 'dead_lettered', 'not_sent')),
    reason         TEXT,                 -- a dead letter's reason
    level          TEXT    NOT NULL,
    id             TEXT,                 -- a pipeline's unique_id, a child's id
    pipeline_id    TEXT,                 -- the pipeline's unique_id (its own for a pipeline)
    pipeline_name  TEXT,
    name           TEXT,
    status         TEXT,
    start          REAL,                 -- epoch seconds
    end_at         REAL,
    queue_time_ms  INTEGER,
    url            TEXT,
    error          TEXT,                 -- the error's message (or type), cut short
    stage_id       TEXT,
    stage_name     TEXT,
    job_id         TEXT,
    job_name       TEXT,
    partial_retry  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX history_by_pipeline ON history (pipeline_id);
CREATE INDEX history_by_recorded ON history (recorded_at);
