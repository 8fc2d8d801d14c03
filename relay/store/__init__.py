"""The SQLite outbox: the writer, its statements, the file checks, migrations, dead letters."""
