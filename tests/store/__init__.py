"""The SQLite outbox."""
