-- The outbox: every accepted event until the upstream answers 2xx for it.
-- Rows are delivered in id order, which is the order they were received in.
-- AUTOINCREMENT: an id is never reused, so an id in a log or a dead letter names one event.
CREATE TABLE events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at      REAL    NOT NULL,  -- epoch seconds
    end_at           REAL,              -- the event's end, epoch seconds; NULL while running
    size             INTEGER NOT NULL,  -- bytes of body
    attempts         INTEGER NOT NULL DEFAULT 0,
    first_failure_at REAL,
    body             BLOB    NOT NULL   -- the event's original JSON, as the runner sent it
);
