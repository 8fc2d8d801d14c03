"""Recent history: what went through the relay, read back as pipelines (``GET /ui``).

The store keeps a compact record of every event delivered, dead-lettered or pending
(``relay.store``); this package is pure: records in, pipeline trees, critical paths and
the problems Datadog would silently drop out.
"""
