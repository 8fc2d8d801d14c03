"""Secrets given inline or read from a file, and re-read when that file changes.

A key file is how a Kubernetes Secret or a systemd credential reaches the relay. A mounted
Secret is updated by swapping a symlink, so a change is seen by the identity (device, inode),
modification time and size of the file the path resolves to, checked by polling.

Every secret file (the API key, the ingest token, any added later) follows one rule, kept
here: only a regular file of at most ``MAX_SECRET_BYTES`` that holds a secret is taken. A
file that is empty (or white space only), larger, not a regular file (a FIFO, a device, a
directory), unreadable, or holds what cannot be a key stops the relay at start; on a later
read it leaves the last good value in force, with a warning. So ``: > token_file``, or the
moment between the truncate and the write of a rewrite, never switches the token off: a
relay fails closed. While the relay runs, the check and the read happen in a thread of their
own, bounded by ``READ_TIMEOUT_S``, so a file system that hangs never stalls the event loop.
No message ever holds the secret itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import structlog
from pydantic import SecretStr

from relay.config import (
    ConfigError,
    ServerSettings,
    UpstreamSettings,
    WebhookSettings,
    clean_secret,
)

logger = structlog.get_logger(__name__)

T = TypeVar("T")
_Stamp = tuple[int, int, int, int]  # device, inode, mtime in ns, size

# A Datadog API key is 32 characters, an ingest token made as docs/security.md says about 43.
# Both travel in one HTTP header, and aiohttp (both ends here) refuses a header line over
# 8190 bytes, as do most proxies at 8 KiB: a larger "key" could never be used. 4 KiB leaves
# room for any real secret (a long bearer token) while a larger file is surely something else
# (a log, a certificate bundle), and reading at most that much costs nothing on the loop.
MAX_SECRET_BYTES = 4096
# A certificate chain, a private key or a CA bundle: the system's whole bundle is ~220 KB.
MAX_PEM_BYTES = 4 << 20
# A few KiB read from a local or network file takes milliseconds; 5 s means the file system
# hangs. Waiting that long delays nothing else: the loop keeps serving meanwhile.
READ_TIMEOUT_S = 5.0
# O_NONBLOCK: open() of a FIFO returns at once instead of waiting for a writer (on a regular
# file it changes nothing). O_NOCTTY: a terminal swapped in never becomes ours.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
}


def same_secret(given: str, expected: str) -> bool:
    """Whether ``given`` (from a request) is the secret ``expected``, in constant time: how
    long a refusal takes says nothing about how much of a guess matched."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


class KeyFile:
    """A secret: fixed (``value``), or read from ``path`` at start and by ``refresh()``.

    ``name`` is the setting that gives it, e.g. ``upstream.api_key_file``, for messages. With
    a ``path``, ``value`` is never None: a file without a usable secret is refused.
    """

    def __init__(self, name: str, value: SecretStr | None, path: Path | None) -> None:
        """Read ``path`` at once (for commands without an event loop); ConfigError if unusable."""
        self.name = name
        self.path = path
        self._value = value.get_secret_value() if value is not None else None
        self._stamp: _Stamp | None = None
        # The last check, kept while its thread is stuck so that no second one piles up.
        self._reading: asyncio.Future[_Read | None] | None = None
        if path is not None:
            self._start(_read(path))

    @classmethod
    async def load(cls, name: str, value: SecretStr | None, path: Path | None) -> KeyFile:
        """As the constructor, with the file read off the event loop within ``READ_TIMEOUT_S``."""
        key = cls(name, value, None)
        if path is None:
            return key
        key.path = path
        try:
            read = await asyncio.wait_for(
                asyncio.wrap_future(in_thread(partial(_read, path))), READ_TIMEOUT_S
            )
        except TimeoutError:
            raise key._refused(f"not read within {READ_TIMEOUT_S:g} s") from None
        key._start(read)
        return key

    # One named constructor per secret: its setting's name, inline value and file in one place.

    @classmethod
    def api_key(cls, upstream: UpstreamSettings) -> KeyFile:
        """``upstream.api_key``, or the file ``upstream.api_key_file`` names, read at once."""
        return cls(*_api_key(upstream))

    @classmethod
    async def load_api_key(cls, upstream: UpstreamSettings) -> KeyFile:
        """As ``api_key``, with the file read off the event loop (``load``)."""
        return await cls.load(*_api_key(upstream))

    @classmethod
    def ingest_token(cls, server: ServerSettings) -> KeyFile:
        """``server.ingest_token``, or the file ``server.ingest_token_file`` names, read at
        once; its ``value`` is None when the listener takes requests without a token."""
        return cls(*_ingest_token(server))

    @classmethod
    async def load_ingest_token(cls, server: ServerSettings) -> KeyFile:
        """As ``ingest_token``, with the file read off the event loop (``load``)."""
        return await cls.load(*_ingest_token(server))

    @classmethod
    def webhook_secrets(cls, webhooks: WebhookSettings) -> dict[str, KeyFile]:
        """The secret of each webhook source (``gitlab``, ``github``), files read at once; a
        source without one has a KeyFile whose ``value`` is None."""
        return {source: cls(*found) for source, found in _webhooks(webhooks).items()}

    @classmethod
    async def load_webhook_secrets(cls, webhooks: WebhookSettings) -> dict[str, KeyFile]:
        """As ``webhook_secrets``, with the files read off the event loop (``load``)."""
        return {source: await cls.load(*found) for source, found in _webhooks(webhooks).items()}

    @property
    def value(self) -> str | None:
        """The secret in force, or None when there is none."""
        return self._value

    async def refresh(self, only_changed: bool) -> bool:
        """Read the file again (with ``only_changed``, only if it changed on disk), off the
        event loop; True when a new secret is in force. A failed read keeps the old one."""
        if self.path is None:
            return False
        if self._reading is not None and not self._reading.done():
            return False  # the last check is still stuck in the file system; warned then
        look = partial(_look, self.path, self._stamp, only_changed)
        self._reading = asyncio.wrap_future(in_thread(look))
        try:
            read = await asyncio.wait_for(asyncio.shield(self._reading), READ_TIMEOUT_S)
        except TimeoutError:
            self._warn(f"not read within {READ_TIMEOUT_S:g} s (a file system that hangs?)")
            return False
        return read is not None and self._take(read)

    def _start(self, read: _Read) -> None:
        """Take the first read, or refuse the start."""
        if read.value is None:
            raise self._refused(read.error or "is empty")
        self._stamp, self._value = read.stamp, read.value

    def _take(self, read: _Read) -> bool:
        """Take a later read; a file without a secret leaves the last good one in force."""
        self._stamp = read.stamp  # a refused file is warned about once, not at every poll
        if read.value is None:
            self._warn(read.error or "is empty")
            return False
        if read.value == self._value:
            return False
        self._value = read.value
        logger.info(
            "key file read: a new value is in force", setting=self.name, path=str(self.path)
        )
        return True

    def _warn(self, error: str) -> None:
        logger.warning(
            "key file not read; the previous value stays",
            setting=self.name,
            path=str(self.path),
            error=error,
        )

    def _refused(self, error: str) -> ConfigError:
        return ConfigError(f"invalid config: {self.name}: {self.path}: {error}")


_Source = tuple[str, SecretStr | None, Path | None]  # a setting's name, inline value, file


def _api_key(upstream: UpstreamSettings) -> _Source:
    return "upstream.api_key_file", upstream.api_key, upstream.api_key_file


def _ingest_token(server: ServerSettings) -> _Source:
    return "server.ingest_token_file", server.ingest_token, server.ingest_token_file


def _webhooks(webhooks: WebhookSettings) -> dict[str, _Source]:
    return {
        "gitlab": ("webhooks.gitlab_token_file", webhooks.gitlab_token, webhooks.gitlab_token_file),
        "github": (
            "webhooks.github_secret_file",
            webhooks.github_secret,
            webhooks.github_secret_file,
        ),
    }


def in_thread(call: Callable[[], T]) -> concurrent.futures.Future[T]:
    """``call()`` started in a daemon thread of its own; its future.

    Not the loop's default executor: a call stuck in the kernel (a hung network file system)
    would hold one of its workers, and ``asyncio.run`` waits for them all at its end, so the
    relay could not stop. A daemon thread is left behind when the process exits.
    """
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(call())
        except BaseException as exc:  # handed to whoever awaits the future
            future.set_exception(exc)

    threading.Thread(target=run, name="key-file-read", daemon=True).start()
    return future


@dataclass(frozen=True)
class _Read:
    """One read of a key file: the stamp of the file read, and its secret or why none."""

    stamp: _Stamp | None
    value: str | None = None
    error: str | None = None


def _look(path: Path, last: _Stamp | None, only_changed: bool) -> _Read | None:
    """The file read again; None when ``only_changed`` and its stamp is still ``last``."""
    if only_changed and _stamp(path) == last:
        return None
    return _read(path)


def _stamp(path: Path) -> _Stamp | None:
    try:
        info = os.stat(path)  # follows symlinks: a swapped Secret is a new file
    except OSError:
        return None
    return _stamp_of(info)


def _stamp_of(info: os.stat_result) -> _Stamp:
    return info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size


def _read(path: Path) -> _Read:
    """The secret in the file at ``path``, or why it cannot be used; never waits on a FIFO."""
    stamp = _stamp(path)
    try:
        with _opened(path) as (fd, info):
            stamp = _stamp_of(info)  # the file opened, whatever the path points to by now
            return _Read(stamp, value=_secret_in(_contents(fd, info, MAX_SECRET_BYTES)))
    except OSError as exc:
        return _Read(stamp, error=exc.strerror or type(exc).__name__)
    except ValueError as exc:
        return _Read(stamp, error=str(exc))


def check_pem_file(setting: str, path: Path) -> None:
    """ConfigError naming ``setting`` unless ``path`` is a regular file of at most
    ``MAX_PEM_BYTES``: checked (by what it is, not read) before OpenSSL opens it by name,
    which would wait without end on a FIFO (and prompt on a terminal)."""
    try:
        with _opened(path) as (_, info):
            _check_regular(info, MAX_PEM_BYTES)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"invalid config: {setting}: {path}: {reason}") from None
    except ValueError as exc:
        raise ConfigError(f"invalid config: {setting}: {path}: {exc}") from None


@contextmanager
def _opened(path: Path) -> Iterator[tuple[int, os.stat_result]]:
    """``path`` open for reading without waiting (a FIFO), and what it is."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        yield fd, os.fstat(fd)
    finally:
        os.close(fd)


def _check_regular(info: os.stat_result, max_bytes: int) -> None:
    """ValueError unless ``info`` is of a regular file of at most ``max_bytes``: the rule for
    every file the relay is given that is not its outbox (secrets, certificates, keys)."""
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a file")
        raise ValueError(f"is not a regular file ({kind})")
    if info.st_size > max_bytes:
        raise ValueError(f"is larger than {max_bytes} bytes ({info.st_size})")


def _contents(fd: int, info: os.stat_result, max_bytes: int) -> bytes:
    """All of an open regular file; ValueError if it is not one, or holds over ``max_bytes``."""
    _check_regular(info, max_bytes)
    data = _read_at_most(fd, max_bytes + 1)  # the file may have grown since fstat
    if len(data) > max_bytes:
        raise ValueError(f"is larger than {max_bytes} bytes ({len(data)})")
    return data


def _secret_in(data: bytes) -> str:
    """The secret in a key file's bytes, stripped; ValueError saying why it cannot be used."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # its message would quote a byte of the secret
        raise ValueError("is not UTF-8 text") from None
    secret: str | None = clean_secret(text)
    if secret is None:
        raise ValueError("is empty (or white space only); the file must hold the secret")
    return secret


def _read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``, fewer only at the end of the file."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
