"""The runner side: ``ci-relay emit`` and ``ci-relay run`` build events inside a CI job.

``providers`` reads what the CI system puts in the environment, ``gitinfo`` what the
checkout holds, ``resolve`` merges them with the overrides, ``event`` builds and validates
the request with the relay's own schema, ``post`` sends it to the relay.
"""
