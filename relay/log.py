"""Logging: JSON lines when stdout is not a terminal, readable console output when it is.

The level can change while the relay runs (``set_level``, on SIGHUP): loggers are cached on
first use, so the level is checked by the first processor rather than fixed into them.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import orjson
import structlog

LogFormat = Literal["auto", "json", "console"]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_level = {"min": _LEVELS["info"]}
_readers = {"people": False}  # console lines for a person, rather than JSON for machines


def set_level(level: str) -> None:
    """From now on, log lines at ``level`` and above only."""
    _level["min"] = _LEVELS[level.lower()]


def for_people() -> bool:
    """True when the log is console lines for a person (a terminal): long values, such as
    the whole configuration, are left to the JSON log and ``check-config``."""
    return _readers["people"]


def _below_level(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    if _LEVELS.get(method, _LEVELS["error"]) < _level["min"]:
        raise structlog.DropEvent
    return event


def configure(fmt: LogFormat = "auto", level: str = "info") -> None:
    """Configure structlog once, at start; every module logs through ``get_logger``."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    _readers["people"] = not as_json
    set_level(level)
    shared: list[structlog.typing.Processor] = [
        _below_level,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        processors: list[structlog.typing.Processor] = [
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory(sys.stdout.buffer)
    else:
        # Plain tracebacks: rich's or better-exceptions' would render local variables, and a
        # local may hold the API key or an event.
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        processors = [*shared, renderer]
        factory = structlog.PrintLoggerFactory(sys.stdout)
    structlog.configure(
        processors=processors,
        # Debug and up reach the processors, where _below_level filters by the current level.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
