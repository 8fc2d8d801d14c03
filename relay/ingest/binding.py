"""The listening sockets, bound before the relay makes or promises anything.

``serve`` binds its address first: a port already in use is then one line saying which
setting chooses the port and, when this machine can tell, which process holds it, before
an outbox file is created or a warning about the API key is printed for a relay that is
about to exit. The sockets are bound but not listening; aiohttp listens on them once the
application is ready (``web.SockSite``), so no connection is accepted before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path

from relay.contract.exceptions import UserError

_PROC = Path("/proc")
_LISTEN = "0A"  # the TCP state LISTEN in /proc/net/tcp
_MAX_COMMAND = 120


class CannotListen(UserError):
    """The address cannot be bound; the message says why and how to change it (exit 2)."""


def bind(host: str, port: int) -> list[socket.socket]:
    """One bound socket per address ``host`` resolves to (every address for ``""``), as
    asyncio's ``create_server`` makes them; CannotListen if one cannot be bound."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CannotListen(_explain(host, port, f"the host cannot be resolved: {exc}")) from None
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise CannotListen(_explain(host, port, _why(exc, port))) from None
            sock.setblocking(False)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def _explain(host: str, port: int, why: str) -> str:
    return (
        f"cannot listen on {host or '*'}:{port}: {why}; choose another address with "
        "server.host and server.port (CI_RELAY_SERVER__HOST, CI_RELAY_SERVER__PORT)"
    )


def _why(exc: OSError, port: int) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno != errno.EADDRINUSE:
        return reason
    holder = holder_of(port)
    return f"{reason} (by {holder})" if holder else reason


def holder_of(port: int) -> str | None:
    """``pid N: command`` of the process listening on TCP ``port``, when /proc tells it (the
    same user, or root); None otherwise."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for pid_dir in _PROC.iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (pid_dir / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return f"pid {pid_dir.name}: {_command(pid_dir)}"
    return None


def _listening_inodes(port: int) -> set[str]:
    """``socket:[inode]`` of every TCP socket listening on ``port`` (IPv4 and IPv6)."""
    found = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
            for line in lines:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == _LISTEN and int(local.rpartition(":")[2], 16) == port:
                    found.add(f"socket:[{inode}]")
    return found


def _command(pid_dir: Path) -> str:
    try:
        words = (pid_dir / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    # One line, whatever the arguments hold (a script given with -c spans many).
    command = " ".join(" ".join(w.decode(errors="replace").split()) for w in words if w)
    return command[:_MAX_COMMAND] + ("..." if len(command) > _MAX_COMMAND else "") or "?"
