"""The runner commands, emit and run."""
