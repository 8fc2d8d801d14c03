"""The runner-facing HTTP edge: the POST handler, admission, connections."""
