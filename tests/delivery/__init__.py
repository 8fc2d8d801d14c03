"""Draining the outbox upstream."""
