"""ci-relay: a local buffering relay for Datadog CI Visibility pipeline events."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ci-relay")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
