-- Dead letters gain the reason 'upstream_error' (a single event the upstream kept failing
-- with 5xx or a timeout while other requests were delivered), and their ids become
-- AUTOINCREMENT so that an id is never reused after a replay or a purge.
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt, rows kept.
CREATE TABLE dead_letters_new (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id          INTEGER NOT NULL,  -- its id in events when it was dead-lettered
    received_at       REAL    NOT NULL,
    reason            TEXT    NOT NULL
                      CHECK (reason IN ('rejected', 'too_large', 'expired', 'upstream_error')),
    upstream_status   INTEGER,
    detail            TEXT    NOT NULL,
    attempts          INTEGER NOT NULL,
    first_failure_at  REAL    NOT NULL,
    last_failure_at   REAL    NOT NULL,
    end_at            REAL,
    body              BLOB    NOT NULL
);
INSERT INTO dead_letters_new SELECT * FROM dead_letters ORDER BY id;
DROP TABLE dead_letters;
ALTER TABLE dead_letters_new RENAME TO dead_letters;
CREATE INDEX dead_letters_by_reason ON dead_letters (reason);
CREATE INDEX dead_letters_by_last_failure ON dead_letters (last_failure_at);
