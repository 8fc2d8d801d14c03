"""Support for tests and benchmarks: a relay subprocess, sample events.

The product never imports it (an import-linter contract).
"""
