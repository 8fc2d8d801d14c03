-- What other processes (a dead-letter replay) added to the events table, for the daemon to
-- add to its counts without recounting the whole table: one row, which the replay adds to
-- in each of its transactions and the daemon reads and zeroes in one of its own.
CREATE TABLE outbox_changes (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    events INTEGER NOT NULL,
    bytes  INTEGER NOT NULL
);
INSERT INTO outbox_changes (id, events, bytes) VALUES (1, 0, 0);
