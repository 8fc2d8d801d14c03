"""Datadog's intake contract: its facts, the request model, reading a body.

Imports nothing else of the relay: the runner side and every package below build on it.
"""
