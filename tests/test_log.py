"""Logging: what a traceback in the relay's log may show."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from relay import log

SECRET = "key-that-must-not-show"  # noqa: S105


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _fail_with_a_secret_local() -> None:
    api_key = SECRET
    raise ValueError("invalid header value" + "!" * bool(api_key))


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_tracebacks_never_render_local_variables(
    fmt: log.LogFormat, capsys: pytest.CaptureFixture[str]
) -> None:
    """A logged exception shows its traceback but no local variable, whatever is installed."""
    log.configure(fmt, "info")
    logger = structlog.get_logger("test")
    try:
        _fail_with_a_secret_local()
    except ValueError:
        logger.exception("task died")
    out = capsys.readouterr().out
    assert ("_fail_with_a_secret_local" in out, SECRET in out) == (True, False), out
