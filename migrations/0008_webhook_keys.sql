-- Webhooks (relay.ingest.webhooks). The keys that deduplicate them: one per delivery id and
-- one per object in a status (a GitLab job that succeeded, a GitHub run attempt that
-- completed), stored in the transaction that stores the events they made, so that a
-- delivery seen again, or an object announced again, never makes an event twice. The
-- relay's maintenance deletes keys older than webhooks.dedup_keep_h and, past
-- webhooks.dedup_max_keys, the oldest.
CREATE TABLE webhook_keys (
    key     BLOB PRIMARY KEY,  -- the first 16 bytes of the BLAKE2b digest of the key's text
    seen_at REAL NOT NULL      -- epoch seconds, when first stored
) WITHOUT ROWID;
CREATE INDEX webhook_keys_by_time ON webhook_keys (seen_at);

-- Dead letters gain the reason 'invalid': a webhook's content that cannot become a valid
-- event (older than the intake's window, a field it would refuse), kept for an operator.
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt, rows and the
-- id sequence kept (an id is never reused after a purge).
CREATE TABLE dead_letters_new (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id          INTEGER NOT NULL,  -- its id in events when it was dead-lettered
    received_at       REAL    NOT NULL,
    reason            TEXT    NOT NULL CHECK (
                          reason IN ('rejected', 'too_large', 'expired', 'upstream_error', 'invalid')
                      ),
    upstream_status   INTEGER,
    detail            TEXT    NOT NULL,
    attempts          INTEGER NOT NULL,
    first_failure_at  REAL    NOT NULL,
    last_failure_at   REAL    NOT NULL,
    end_at            REAL,
    body              BLOB    NOT NULL
);
INSERT INTO dead_letters_new SELECT * FROM dead_letters ORDER BY id;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'dead_letters_new', seq FROM sqlite_sequence WHERE name = 'dead_letters'
    AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'dead_letters_new');
UPDATE sqlite_sequence
    SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'dead_letters'), 0))
    WHERE name = 'dead_letters_new';
DROP TABLE dead_letters;
ALTER TABLE dead_letters_new RENAME TO dead_letters;
CREATE INDEX dead_letters_by_reason ON dead_letters (reason);
CREATE INDEX dead_letters_by_last_failure ON dead_letters (last_failure_at);
CREATE INDEX dead_letters_by_event_id ON dead_letters (event_id);
