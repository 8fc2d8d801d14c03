"""The runner-facing HTTP edge."""
