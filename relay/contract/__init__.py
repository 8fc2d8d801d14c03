"""Datadog's intake contract: its facts, the request model, reading a body; and the root of
the relay's own exceptions (``exceptions``), which every package can reach only here.

Imports nothing else of the relay: the runner side and every package below build on it.
"""
