-- A dead letter is named by its event's outbox id (the id the logs give), so commands
-- look dead letters up by event_id.
CREATE INDEX dead_letters_by_event_id ON dead_letters (event_id);
