"""Datadog's intake contract: the request model and its rules."""
