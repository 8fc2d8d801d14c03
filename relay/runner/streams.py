"""The runner's own output: lines on stderr that may be lost but never change the exit
status, and standard streams that a closed or broken stderr cannot turn against stdout.

``run`` and ``emit`` write their lines with ``os.write`` on fd 2, never through Python's
``sys.stderr``: a write that fails (EPIPE, ENOSPC, EBADF) drops the line there and then,
and nothing is left buffered for the interpreter to fail to flush at exit (which Python
reports as status 120).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator

_STANDARD_FDS = (0, 1, 2)


@contextlib.contextmanager
def guarded_streams() -> Iterator[None]:
    """Around a whole runner command: hold closed standard fds, settle Python's streams at
    the end so that the exit status is the command's own."""
    _hold_closed_fds()
    try:
        yield
    finally:
        _settle()


def warn(line: str) -> None:
    """``line`` on stderr, or nowhere if stderr cannot take it."""
    with contextlib.suppress(OSError):
        write_all(2, (line + "\n").encode("utf-8", "backslashreplace"))


def write_stdout(data: bytes) -> None:
    """All of ``data`` on stdout; OSError if it cannot be written (stdout closed included)."""
    if sys.stdout is None:  # Python found fd 1 closed at start; it now holds /dev/null
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    sys.stdout.flush()
    write_all(sys.stdout.fileno(), data)


def write_all(fd: int, data: bytes) -> None:
    """Every byte of ``data`` to ``fd``, however many writes it takes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _hold_closed_fds() -> None:
    """Put /dev/null on each closed standard fd.

    A closed fd 2 would be the number of the next file opened (the socket to the relay, a
    pipe from git), and a warning would go into it, or to stdout through Python's
    ``print(file=None)``. The placeholder is not inheritable (``os.open``'s default), so the
    command ``run`` starts still finds the fd closed, as it was given.
    """
    for fd in _STANDARD_FDS:
        try:
            os.fstat(fd)
        except OSError:
            _hold(fd)


def _hold(fd: int) -> None:
    try:
        placeholder = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return  # nothing better to do: the line may then go astray, the status cannot
    if placeholder != fd:
        os.dup2(placeholder, fd, inheritable=False)
        os.close(placeholder)


def _settle() -> None:
    """Flush Python's stdout and stderr now; one that cannot take its bytes is pointed at
    /dev/null, so the interpreter's flush at exit has nothing left to fail."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError):
                _discard(stream.fileno())
                stream.flush()


def _discard(fd: int) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
