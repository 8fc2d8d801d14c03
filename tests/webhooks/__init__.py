"""CI servers' webhooks mapped to pipeline events."""
