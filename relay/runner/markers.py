"""Start marks: ``emit --status running`` leaves one, the finished ``emit`` reads it.

A mark is a small file named after the event's identity (level, pipeline, job, name), in a
directory private to the user, so separate steps of one job find it without sharing state.

Private means: the user's own, mode 0700 (created so), and not a symbolic link. A directory
that another user made or can write (in a shared ``/tmp``, before the job) is not used, with
one warning: a start planted there would be taken, and a symbolic link planted at a file's
name would lead the write into any file of the user's. The checked directory is held open
and its files are opened relative to it, never through a symbolic link; a new mark is
written to a temporary file of a name not known in advance, created exclusively.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from relay.contract.exceptions import RelayError
from relay.contract.local import MARKER_DIR_VARIABLE
from relay.runner.facts import derived_id
from relay.runner.streams import write_all

_MAX_MARK_BYTES = 256  # an RFC3339 time, with room
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO never blocks a read
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


class MarksUnusable(RelayError):
    """The marks directory, or a mark in it, cannot be trusted or used; the message says why."""


def marker_dir(env: Mapping[str, str]) -> Path:
    """Where start marks live: ``$CI_RELAY_MARKER_DIR``, else a per-user temporary folder."""
    chosen = env.get(MARKER_DIR_VARIABLE)
    if chosen:
        return Path(chosen)
    return Path(tempfile.gettempdir()) / f"ci-relay-{os.getuid()}-marks"


class StartMark:
    """The start time of one event, kept between two commands.

    No method raises: the first problem goes to ``warn`` (the reason, naming the path), and
    from then on the marks are not used (a read finds nothing, a write keeps nothing).
    """

    def __init__(
        self, directory: Path, identity: Sequence[str], warn: Callable[[str], None]
    ) -> None:
        self.directory = directory
        self.name = derived_id("start", *identity)
        self._warn = warn
        self._refused = False

    def read(self) -> str | None:
        """The kept start, if any."""
        with self._opened(create=False) as dir_fd:
            if dir_fd is not None:
                return _read(self.directory, self.name, dir_fd)
        return None

    def write(self, start: str) -> bool:
        """Keep ``start`` (replacing an earlier mark of the same event); whether it was kept."""
        with self._opened(create=True) as dir_fd:
            if dir_fd is not None:
                _write(self.name, start, dir_fd)
                return True
        return False

    def remove(self) -> None:
        """Forget the mark once its finished event is sent."""
        with self._opened(create=False) as dir_fd:
            if dir_fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.name, dir_fd=dir_fd)

    @contextlib.contextmanager
    def _opened(self, create: bool) -> Iterator[int | None]:
        """The checked directory's fd (None when absent or refused); the first problem,
        here or inside the block, is reported and ends the use of marks."""
        dir_fd = None
        if not self._refused:
            try:
                dir_fd = _open_private(self.directory, create)
            except (MarksUnusable, OSError) as exc:
                self._refuse(exc)
        try:
            yield dir_fd
        except (MarksUnusable, OSError) as exc:
            self._refuse(exc)
        finally:
            if dir_fd is not None:
                os.close(dir_fd)

    def _refuse(self, exc: Exception) -> None:
        self._refused = True
        self._warn(_reason(self.directory, exc))


def _open_private(directory: Path, create: bool) -> int | None:
    """``directory`` opened without following a symbolic link and checked private; None if
    it does not exist and ``create`` is false."""
    if create:
        directory.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
    try:
        dir_fd = os.open(directory, _DIRECTORY_FLAGS)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as exc:
        raise MarksUnusable(_not_a_directory(directory, exc)) from None
    try:
        _check_private(directory, os.fstat(dir_fd))
    except MarksUnusable:
        os.close(dir_fd)
        raise
    return dir_fd


def _check_private(directory: Path, status: os.stat_result) -> None:
    user = os.geteuid()
    if status.st_uid != user:
        raise MarksUnusable(f"{directory} belongs to uid {status.st_uid}, not to uid {user}")
    if status.st_mode & 0o077:
        mode = stat.S_IMODE(status.st_mode)
        raise MarksUnusable(f"{directory} is open to other users (mode {mode:04o}, not 0700)")


def _not_a_directory(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP or path.is_symlink():
        return f"{path} is a symbolic link"
    if exc.errno == errno.ENOTDIR:
        return f"{path} is not a directory"
    return f"{path}: {exc.strerror}"


def _read(directory: Path, name: str, dir_fd: int) -> str | None:
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MarksUnusable(_not_a_file(directory / name, exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MarksUnusable(f"{directory / name} is not a regular file")
        data = os.read(fd, _MAX_MARK_BYTES)
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").strip() or None


def _not_a_file(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return f"{path} is a symbolic link"
    return f"{path}: {exc.strerror}"


def _write(name: str, start: str, dir_fd: int) -> None:
    # A name nobody can guess, created exclusively: nothing planted can stand in for it.
    temporary = f"{name}.{os.urandom(8).hex()}.tmp"
    fd = os.open(temporary, _CREATE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        try:
            write_all(fd, start.encode("utf-8"))
        finally:
            os.close(fd)
        # rename replaces whatever has the name, a symbolic link included, without following it
        os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def _reason(directory: Path, exc: Exception) -> str:
    if isinstance(exc, OSError):
        # a file opened relative to the directory is named by its name alone
        where = directory / exc.filename if isinstance(exc.filename, str) else directory
        return f"{where}: {exc.strerror}"
    return str(exc)
