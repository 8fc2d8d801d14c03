"""The local page: recent pipelines and each one's waterfall (``GET /ui``), and their JSON.

Served by the relay itself from the package's own files (``relay/ui/static``): plain HTML,
CSS and a small script, no external asset, under a Content-Security-Policy that lets the
script reach only the relay's own origin. The data comes from the recent history
(``relay.history``) read back from the outbox; access follows the ingest token
(``relay.ui.access``).
"""
