"""The free space of the file system that holds the outbox, and what opening the outbox needs.

A full disk at start must be told from a damaged file: SQLite reports both as errors of
the file, and only a damaged file is to be moved aside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# SQLite's -shm (the index of the -wal) takes 32 KiB before a WAL database can be read; a
# write then needs the -wal's header and a frame (a page and its header) at least.
SHM_BYTES = 32 * 1024
_WAL_HEADER_BYTES = 32
_FRAME_HEADER_BYTES = 24
_DEFAULT_PAGE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class DiskSpace:
    """What the file system holding a path has left, for this process."""

    mount: Path  # where that file system is mounted
    free: int  # bytes
    free_inodes: int

    @classmethod
    def of(cls, path: Path) -> DiskSpace:
        """The space of the file system holding ``path`` (a file or a directory)."""
        directory = path if path.is_dir() else path.parent
        found = os.statvfs(directory)
        # root may also write the blocks reserved for it (ext4 keeps 5%).
        blocks = found.f_bfree if os.geteuid() == 0 else found.f_bavail
        inodes = found.f_ffree if os.geteuid() == 0 else found.f_favail
        return cls(_mount_point(directory), blocks * found.f_frsize, inodes)

    def described(self, opening_needs: int | None = None) -> str:
        """E.g. ``the file system at /var/lib is full (12 KiB free, no free inode)``, with
        ``; opening the outbox needs at least 36 KiB`` inside the brackets when given."""
        inodes = ", no free inode" if self.free_inodes == 0 else ""
        needs = ""
        if opening_needs is not None:
            needs = f"; opening the outbox needs at least {size_shown(opening_needs)}"
        free = size_shown(self.free)
        return f"the file system at {self.mount} is full ({free} free{inodes}{needs})"


def _mount_point(directory: Path) -> Path:
    directory = directory.resolve()
    while not os.path.ismount(directory):
        directory = directory.parent
    return directory


def size_shown(count: int) -> str:
    """``count`` bytes for a person: bytes, KiB, MiB or GiB."""
    if count < 1024:
        return f"{count} bytes"
    if count < 1024 * 1024:
        return f"{count // 1024} KiB"
    if count < 1024**3:
        return f"{count / 1024**2:.1f} MiB"
    return f"{count / 1024**3:.1f} GiB"


def needed_to_open(path: Path) -> int:
    """The bytes SQLite must be able to add to open the outbox and commit once: what its
    -shm lacks of 32 KiB, and a -wal header with one frame of the file's page size."""
    try:
        shm = path.with_name(path.name + "-shm").stat().st_size
    except FileNotFoundError:
        shm = 0
    frame = _page_size(path) + _FRAME_HEADER_BYTES
    return max(0, SHM_BYTES - shm) + _WAL_HEADER_BYTES + frame


def _page_size(path: Path) -> int:
    # The header's bytes 16-17, big-endian; 1 means 65536. 4096 (SQLite's default) when
    # the file cannot say.
    try:
        with open(path, "rb") as file:
            header = file.read(18)
    except OSError:
        return _DEFAULT_PAGE_BYTES
    size = int.from_bytes(header[16:18], "big") if len(header) == 18 else 0
    return 65536 if size == 1 else size if size >= 512 else _DEFAULT_PAGE_BYTES
