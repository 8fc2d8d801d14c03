"""The outbox file before SQLite writes to it: the lock, and checks that it is a sound outbox.

Every start-up refusal is an ``OutboxError`` whose message names the path and the cause,
and none of these checks writes to a file that is not, or not yet known to be, a sound
ci-relay outbox: SQLite would otherwise add tables to a stranger's database, switch it to
WAL, or turn a damaged file into a new empty one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from relay.contract.exceptions import UserError
from relay.store import queries
from relay.store.disk_space import DiskSpace, needed_to_open

# Stamped in the database header (PRAGMA application_id): "ciR1".
APPLICATION_ID = 0x63695231
SQLITE_MAGIC = b"SQLite format 3\x00"
# The tables of an outbox made before the header was stamped.
_OUTBOX_TABLES = frozenset({"events", "dead_letters", "schema_migrations"})
# SQLite calls the progress handler every this many virtual machine steps.
_PROGRESS_STEPS = 10_000
SIDECARS = ("-wal", "-shm")
# SQLite's result codes a full file system can give: SQLITE_FULL when a write finds no room,
# an I/O error when growing the -shm or -wal fails, "cannot open" when no inode is left.
_DISK_CODES = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN})
# SQLite's primary result codes for failures that can pass without anyone mending the file
# (a full or failing disk, a lock held elsewhere): never a reason to call the file damaged.
TRANSIENT_CODES = _DISK_CODES | {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_PROTOCOL,
}
# The modes of what the relay creates for its outbox, whatever the umask: its owner's only.
PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600


class OutboxError(UserError):
    """The outbox file cannot be used; the message names the path and the cause."""


class OutboxLocked(OutboxError):
    """Another ``ci-relay serve`` holds the outbox."""


class OutboxDamaged(OutboxError):
    """SQLite found the file damaged; ``cause`` says how."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class OutboxMissing(OutboxError):
    """There is no outbox at the path, and the command must not create one."""


class OutboxDiskFull(OutboxError):
    """The file system holding the outbox has no room to open it; the file itself is sound."""


def disk_full(path: Path, exc: sqlite3.Error, doing: str = "opened") -> OutboxDiskFull | None:
    """The refusal for SQLite's ``exc`` when the outbox's file system has no room for it:
    SQLITE_FULL, or an I/O or open error with less free than opening needs (or no inode);
    None when the cause is elsewhere. ``doing``: what the outbox cannot be ("written")."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in _DISK_CODES:
        return None
    try:
        space = DiskSpace.of(path)
    except OSError:
        return None
    needed = needed_to_open(path)
    if code & 0xFF != sqlite3.SQLITE_FULL and space.free >= needed and space.free_inodes > 0:
        return None
    return OutboxDiskFull(
        f"outbox {path} cannot be {doing}: "
        f"{space.described(needed if doing == 'opened' else None)}; "
        "free space there, then try again (the outbox is not damaged: keep it where it is)"
    )


def store_error(path: Path, exc: sqlite3.Error, doing: str) -> OutboxError:
    """The refusal for SQLite's ``exc`` while ``doing`` (e.g. "read") the outbox: a full
    disk, the disk failing a read or write, or else a damaged file.

    Only a damaged file is to be moved aside: an outbox that cannot be opened for want of
    space, or on a failing disk, still holds its events.
    """
    full = disk_full(path, exc)
    if full is not None:
        return full
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_IOERR:
        return OutboxError(
            f"cannot {doing} outbox {path}: {exc}; the disk, the file system or a quota "
            "refused a read or write (the kernel log says which), and the file may be sound"
        )
    if code in TRANSIENT_CODES:
        return OutboxError(f"cannot {doing} outbox {path}: {exc}")
    return damaged(path, str(exc))


@dataclass(frozen=True, slots=True)
class Inspection:
    """What the start-up checks found in an existing outbox file."""

    legacy: bool  # an outbox made before the header was stamped
    checked: bool  # False when the quick check ran out of time
    schema_version: int = 0  # the newest migration the file records (0: none)


def sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


class ServeLock:
    """An exclusive ``flock`` on ``<outbox>.lock`` holding the owner's PID.

    The kernel drops it when the process dies, SIGKILL included, so a stale lock file never
    blocks a start. Dead-letter commands do not take it: SQLite's own locking serialises them.
    """

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.path = sidecar(outbox, ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutboxLocked(
                f"outbox {self.outbox} is in use by another ci-relay serve (pid {holder})"
            ) from None
        # The PID is for the refusal message only: on a full disk the lock holds without it.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _open(self) -> int:
        """The lock file, created 0600 whatever the umask."""
        fd = -1
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
            make_private(fd, PRIVATE_FILE)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            raise OutboxError(f"cannot lock outbox {self.outbox}: {_cause(exc)}") from None
        return fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def prepare_directory(path: Path) -> None:
    """Create the outbox's directory and every missing parent, each 0700 whatever the umask."""
    missing: list[Path] = []
    directory = path.parent
    while not directory.is_dir() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    try:
        for directory in reversed(missing):
            _make_private_directory(directory)
    except OSError as exc:
        raise OutboxError(f"cannot create the directory of outbox {path}: {_cause(exc)}") from None


def _make_private_directory(directory: Path) -> None:
    try:
        os.mkdir(directory, PRIVATE_DIRECTORY)
    except FileExistsError:
        if directory.is_dir():  # made meanwhile by someone else: its mode is theirs
            return
        raise
    # mkdir's mode passes through the umask: under 000 a parent made by Path.mkdir(parents=True)
    # was 0777, under 277 even the owner could not write. Set it exactly.
    os.chmod(directory, PRIVATE_DIRECTORY)


def make_private(fd: int, mode: int) -> None:
    """Give the open file ``mode`` exactly if it has another one (the umask masked it, or a
    file found in place was readable by others)."""
    if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
        os.fchmod(fd, mode)


def existing_size(path: Path) -> int | None:
    """The file's size, or None if there is no file; an error if it cannot be opened for writing."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutboxError(f"cannot open outbox {path}: {_cause(exc)}") from None
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def create_private(path: Path) -> None:
    """Create the outbox file (or take the one in place) 0600 whatever the umask; SQLite gives
    its -wal and -shm the same mode."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, PRIVATE_FILE)
        try:
            make_private(fd, PRIVATE_FILE)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutboxError(f"cannot create outbox {path}: {_cause(exc)}") from None


def inspect(path: Path, check_s: float | None) -> Inspection:
    """Refuse a file that is not a sound ci-relay outbox, reading it only.

    ``check_s`` bounds SQLite's quick check; None skips it. A check that runs out of time
    passes: a large file is still opened, and ``ci-relay outbox check`` can finish the job.
    """
    try:
        with open(path, "rb") as file:
            magic = file.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        raise OutboxMissing(f"no outbox at {path}") from None
    except OSError as exc:
        raise OutboxError(f"cannot read outbox {path}: {_cause(exc)}") from None
    if not magic:
        raise OutboxMissing(f"no outbox at {path} (the file is empty)")
    if magic != SQLITE_MAGIC:
        raise OutboxError(f"outbox {path} is not a SQLite database; refusing to use it")
    try:
        conn = open_read_only(path)
    except sqlite3.Error as exc:
        raise disk_full(path, exc) or OutboxError(f"cannot read outbox {path}: {exc}") from None
    try:
        legacy = identify(conn, path)
        checked = check_s is None or _quick_check(conn, path, check_s)
        version = _schema_version(conn)
    except sqlite3.Error as exc:
        raise store_error(path, exc, "read") from None
    finally:
        conn.close()
    return Inspection(legacy=legacy, checked=checked, schema_version=version)


def read_only_uri(path: Path) -> str:
    """The URI of a connection that cannot write to the file.

    Without a -wal beside it, the file holds the whole database and no process is writing
    to it: ``immutable`` then reads it without creating the -wal and -shm a WAL database
    otherwise needs, so a file that is refused is left exactly as it was found.
    """
    immutable = "" if sidecar(path, "-wal").exists() else "&immutable=1"
    return f"file:{quote(str(path))}?mode=ro{immutable}"


def open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write to the file (``mode=ro``)."""
    return sqlite3.connect(read_only_uri(path), uri=True, timeout=10)


def integrity_problems(conn: sqlite3.Connection, quick: bool = False) -> list[str]:
    """SQLite's integrity or quick check: the problems it found, [] when the file is sound."""
    pragma = queries.QUICK_CHECK if quick else queries.INTEGRITY_CHECK
    rows = [str(problem) for (problem,) in conn.execute(pragma)]
    return [] if rows == ["ok"] else rows


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What ``ci-relay outbox check`` found: SQLite's problems, or the counts of a sound file."""

    problems: list[str]
    events: int = 0
    dead_letters: int = 0


def check(path: Path) -> CheckReport:
    """SQLite's full integrity check of the outbox, read-only, then its counts if it is sound."""
    try:
        inspect(path, None)
    except OutboxDamaged as exc:
        return CheckReport([exc.cause])
    try:
        conn = open_read_only(path)
    except sqlite3.Error as exc:
        raise disk_full(path, exc) or OutboxError(f"cannot read outbox {path}: {exc}") from None
    try:
        problems = integrity_problems(conn)
        if problems:
            return CheckReport(problems)
        events = queries.fetch_now(conn, queries.COUNT_EVENTS).first("events")
        (dead,) = conn.execute(queries.COUNT_DEAD_LETTERS).fetchone()
        return CheckReport([], events, dead)
    except sqlite3.Error as exc:
        refusal = store_error(path, exc, "read")
        if isinstance(refusal, OutboxDamaged):
            return CheckReport([refusal.cause])
        raise refusal from None
    finally:
        conn.close()


def damaged(path: Path, cause: str) -> OutboxDamaged:
    cause = " ".join(cause.split())  # one line, whatever SQLite's message holds
    return OutboxDamaged(
        f"outbox {path} is damaged ({cause}); keep it for salvage with "
        "'ci-relay outbox move-aside', then start again",
        cause,
    )


def identify(conn: sqlite3.Connection, path: Path) -> bool:
    """True for an outbox made before the header was stamped, False for a stamped one;
    OutboxError for another program's database."""
    (app_id,) = conn.execute(queries.APPLICATION_ID).fetchone()
    if app_id == APPLICATION_ID:
        return False
    tables = {name for (name,) in conn.execute(queries.TABLES)}
    if app_id == 0 and (tables >= _OUTBOX_TABLES or _has_our_ledger(conn, tables)):
        return True
    shown = ", ".join(sorted(tables)) or "none"
    raise OutboxError(
        f"{path} is a SQLite database but not a ci-relay outbox (application_id {app_id}, "
        f"tables: {shown}); refusing to use it"
    )


def _has_our_ledger(conn: sqlite3.Connection, tables: set[str]) -> bool:
    # The migration ledger alone (a newer ci-relay's file, refused later as SchemaTooNew),
    # told from other tools' schema_migrations tables by its columns.
    if "schema_migrations" not in tables:
        return False
    columns = queries.fetch_now(conn, queries.LEDGER_COLUMNS).column("name")
    return columns == ["version", "name", "applied_at"]


def _schema_version(conn: sqlite3.Connection) -> int:
    # Read here, before any write connection: a newer version's file must be refused as it is
    # (a write connection's close would checkpoint its -wal into it).
    if "schema_migrations" not in {name for (name,) in conn.execute(queries.TABLES)}:
        return 0
    version: int = queries.fetch_now(conn, queries.NEWEST_APPLIED).first("version")
    return version


def _quick_check(conn: sqlite3.Connection, path: Path, check_s: float) -> bool:
    deadline = time.monotonic() + check_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_STEPS)
    try:
        problems = integrity_problems(conn, quick=True)
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            return False
        raise
    finally:
        conn.set_progress_handler(None, 0)
    if problems:
        raise damaged(path, "; ".join(" ".join(p.split()) for p in problems[:3]))
    return True


def move_aside(path: Path, now: float | None = None) -> Path:
    """Rename the outbox and its -wal and -shm to ``<name>.damaged-<UTC time>``; the new path.

    The -wal keeps its place beside the renamed file, so a salvage (``sqlite3 .recover``)
    still sees the transactions it holds.
    """
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    target = path.with_name(f"{path.name}.damaged-{stamp:%Y%m%dT%H%M%SZ}")
    if target.exists():
        raise OutboxError(f"cannot move outbox {path} aside: {target} exists")
    try:
        os.rename(path, target)
        for suffix in SIDECARS:
            with contextlib.suppress(FileNotFoundError):
                os.rename(sidecar(path, suffix), sidecar(target, suffix))
    except OSError as exc:
        raise OutboxError(f"cannot move outbox {path} aside: {_cause(exc)}") from None
    return target


def _cause(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    cause = f"{exc.strerror or exc}{where}"
    if exc.errno != errno.ENOSPC or not exc.filename:
        return cause
    try:
        space = DiskSpace.of(Path(os.fsdecode(exc.filename)).parent)
    except OSError:
        return cause
    return f"{cause}; {space.described()}; free space there, then try again"
