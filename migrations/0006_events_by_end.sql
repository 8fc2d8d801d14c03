-- The earliest end among pending events (when the next one expires, for /status, /metrics
-- and the expiry warning) is read from this index in O(log n), never by a table scan.
CREATE INDEX events_by_end ON events (end_at);
