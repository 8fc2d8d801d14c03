-- Events the upstream refused (or that expired before they could be sent), kept for an
-- operator to inspect, replay or purge.
CREATE TABLE dead_letters (
    id                INTEGER PRIMARY KEY,
    event_id          INTEGER NOT NULL,  -- its id in events when it was dead-lettered
    received_at       REAL    NOT NULL,
    reason            TEXT    NOT NULL CHECK (reason IN ('rejected', 'too_large', 'expired')),
    upstream_status   INTEGER,
    detail            TEXT    NOT NULL,
    attempts          INTEGER NOT NULL,
    first_failure_at  REAL    NOT NULL,
    last_failure_at   REAL    NOT NULL,
    end_at            REAL,
    body              BLOB    NOT NULL
);
CREATE INDEX dead_letters_by_reason ON dead_letters (reason);
CREATE INDEX dead_letters_by_last_failure ON dead_letters (last_failure_at);
