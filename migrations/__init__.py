"""Ordered SQL migrations of the outbox, installed as the package ``relay.migrations``."""
