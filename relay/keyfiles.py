"""Secrets given inline or read from a file, and re-read when that file changes.

A key file is how a Kubernetes Secret or a systemd credential reaches the relay. A mounted
Secret is updated by swapping a symlink, so a change is seen by the identity (device, inode),
modification time and size of the file the path resolves to, checked by polling. A file
that cannot be read, or holds what cannot be a key, on a later read leaves the previous
value in force; at start it stops the relay. No message ever holds the secret itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from pydantic import SecretStr

from relay.config import ConfigError, clean_secret

logger = structlog.get_logger(__name__)

_Stamp = tuple[int, int, int, int]  # device, inode, mtime in ns, size


class KeyFile:
    """A secret: fixed (``value``), or read from ``path`` at start and by ``reload()``.

    ``name`` is the setting that gives it, e.g. ``upstream.api_key_file``, for messages.
    """

    def __init__(self, name: str, value: SecretStr | None, path: Path | None) -> None:
        self.name = name
        self.path = path
        self._value = value.get_secret_value() if value is not None else None
        self._stamp: _Stamp | None = None
        if path is not None:
            self._stamp = _stamp(path)
            try:
                self._value = _read(path)
            except ValueError as exc:
                raise ConfigError(f"invalid config: {name}: {path}: {exc}") from None

    @property
    def value(self) -> str | None:
        """The secret in force, or None when there is none."""
        return self._value

    def changed_on_disk(self) -> bool:
        """True when the file now differs from the one last read (never for a fixed value)."""
        return self.path is not None and _stamp(self.path) != self._stamp

    def reload(self) -> bool:
        """Read the file again; True when the secret changed. A failed read keeps the old one."""
        if self.path is None:
            return False
        self._stamp = _stamp(self.path)
        try:
            value = _read(self.path)
        except ValueError as exc:
            logger.warning(
                "key file not read; the previous value stays",
                setting=self.name,
                path=str(self.path),
                error=str(exc),
            )
            return False
        if value == self._value:
            return False
        self._value = value
        logger.info(
            "key file read: a new value is in force",
            setting=self.name,
            path=str(self.path),
            set=value is not None,
        )
        return True


def _stamp(path: Path) -> _Stamp | None:
    try:
        info = os.stat(path)  # follows symlinks: a swapped Secret is a new file
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size


def _read(path: Path) -> str | None:
    """The secret in the file, stripped; ValueError saying why it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(exc.strerror or type(exc).__name__) from None
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None
    cleaned: str | None = clean_secret(text)
    return cleaned
