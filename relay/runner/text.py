"""Values from outside (variables, flags, the command line) made text an event can carry.

Python hands over bytes that are not UTF-8 as surrogate escapes (``\\udcff`` for 0xff),
which no JSON encoder takes: one such byte would cost the whole report. Each is replaced by
U+FFFD instead, and the value's source (a variable's name, a flag) is noted for a warning;
the value itself is never shown, since a variable may hold a secret.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator, Mapping

from relay.runner.streams import warn

_SURROGATE = re.compile("[\ud800-\udfff]")
# Flags whose name is not their destination's.
_FLAG_NAMES = {"stage_name": "--stage"}


def not_utf8(source: str) -> str:
    """The warning for a value of ``source`` that held bytes that are not UTF-8."""
    return f"{source} is not valid UTF-8; its invalid bytes were replaced with U+FFFD"


def repaired(value: str) -> str:
    """``value`` with each byte that was not UTF-8 (a surrogate escape) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", value)


class TextEnv(Mapping[str, str]):
    """The environment as text: a value is read with its bytes that are not UTF-8 replaced,
    and the names of the variables read so are kept in ``repaired``, in order."""

    def __init__(self, raw: Mapping[str, str]) -> None:
        self._raw = raw
        self.repaired: list[str] = []

    def __getitem__(self, name: str) -> str:
        value = self._raw[name]
        text = repaired(value)
        if text != value and name not in self.repaired:
            self.repaired.append(name)
        return text

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def repair_arguments(args: argparse.Namespace, keep: tuple[str, ...] = ()) -> list[str]:
    """Replace the bytes that are not UTF-8 in every flag's value (lists included) but the
    destinations in ``keep``; the flags that held some."""
    flags = []
    for dest, value in vars(args).items():
        if dest in keep:
            continue
        if isinstance(value, str):
            text: object = repaired(value)
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            text = [repaired(item) for item in value]
        else:
            continue
        if text != value:
            setattr(args, dest, text)
            flags.append(_FLAG_NAMES.get(dest, "--" + dest.replace("_", "-")))
    return flags


def warn_not_utf8(command: str, flags: list[str], env: TextEnv) -> None:
    """One warning for each flag and variable of ``command`` that held bytes not UTF-8."""
    for source in (*flags, *env.repaired):
        warn(f"ci-relay: {command}: {not_utf8(source)}")
