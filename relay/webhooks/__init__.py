"""CI servers' webhooks (GitLab, GitHub) mapped to pipeline events of the intake's contract.

The mapping is pure: a delivery's kind and decoded JSON in, the ``data`` items the relay
would have been posted out. Receiving, authenticating and deduplicating deliveries is the
edge's work, not this package's.
"""
