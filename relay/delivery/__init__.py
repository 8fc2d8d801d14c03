"""Draining the outbox upstream: the flusher, one step, isolation, backoff, the upstream client."""
