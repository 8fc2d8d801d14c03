"""``ci-relay top``: a live view of a running relay, one ``GET /status`` a second.

The relay is found as ``ci-relay status`` finds it (the settings ``serve`` reads, or
``--url``), and asked with the ingest token the same way (``relay.ops.status_client``: no
proxy, no redirect followed). Each reading is the ``/status`` document; once a minute also
the recent pipelines of ``GET /ui/pipelines.json``, where the relay serves them.
``relay.ops.top_watch`` turns readings into rates, ``relay.ops.top_view`` into a frame.

The live display is rich's ``Live`` (rich is already a dependency of the relay), chosen
because it owns what a full-screen view must get right and a hand-written one gets wrong:
it switches to the terminal's alternate screen and hides the cursor, and its context
manager puts both back on any exit (``q``, Ctrl-C, an error), so the shell is left as it
was; it lays out tables and styled text to the terminal's width, measured again at each
frame (a resize needs nothing), and crops to its height. The same renderables print as
plain text without a terminal, so ``--once`` and CI logs show the very frame a person
sees. curses would need every cell placed by hand and has no plain-text form; Textual is
an application framework (its own event loop, widgets, CSS) for what is a read-only frame
redrawn once a second. ``auto_refresh`` is off: the frame is drawn when a reading
arrives, so no thread of rich's redraws an unchanged screen four times a second.

Keys are read with the terminal in cbreak mode (no echo, no line buffering; Ctrl-C still
interrupts), set only while the view is live and restored in a ``finally``. Readings are
taken by a thread of their own, so that a relay slow to answer never delays ``q``.
Without a terminal (``--once``, or stdout not one) the command reads twice, an interval
apart (rates need two readings), prints one frame and exits with ``ci-relay status``'s
exit status: that of the most urgent condition, 3 when no relay answers.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.live import Live

from relay.config import ServerSettings, load_settings
from relay.contract.exceptions import UserError
from relay.keyfiles import KeyFile
from relay.ops.status import EXIT_UNREACHABLE, exit_status
from relay.ops.status_client import Unreachable, ask, fetch, relay_address
from relay.ops.top_view import frame
from relay.ops.top_watch import Document, Reading, Watch

PIPELINES_PATH = "/ui/pipelines.json"
# Building the recent pipelines' list costs the relay far more than /status: its newest
# 40,000 records made into trees in a worker thread, which holds the GIL against the event
# loop taking runner requests (about 0.3 s of CPU with 20,000 events pending, against
# 0.7 ms for a /status; bench/top_cost.py). It is read at start, then once a minute.
PIPELINES_EVERY_S = 60.0
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C (128 + SIGINT)
_QUIT_KEYS = frozenset(b"qQ")


class Source:
    """The relay to read: its address, its token (read again after a refusal) and the
    latest recent pipelines it served."""

    def __init__(self, server: ServerSettings, address: str, timeout_s: float) -> None:
        self.server = server
        self.address = address
        self.timeout_s = timeout_s
        self.token = KeyFile.ingest_token(server).value
        self._pipelines: Sequence[Document] | None = None
        self._pipelines_read: float | None = None  # wall time
        self._pipelines_at = float("-inf")

    def read(self) -> Reading:
        """One reading: the /status document (and, when due, the pipelines), or why none.

        UserError (the relay refuses the token) goes to the caller, with the token read
        again for the next reading in case the file changed."""
        try:
            document = fetch(self.address, self.token, self.timeout_s)
        except Unreachable as exc:
            return Reading(time.monotonic(), time.time(), None, str(exc))
        except UserError:
            self.token = KeyFile.ingest_token(self.server).value
            raise
        if time.monotonic() - self._pipelines_at >= PIPELINES_EVERY_S:
            self._pipelines_at = time.monotonic()
            self._pipelines = self._recent_pipelines()
            if self._pipelines is not None:
                self._pipelines_read = time.time()
        return Reading(
            time.monotonic(),
            time.time(),
            document,
            pipelines=self._pipelines,
            pipelines_read=self._pipelines_read,
        )

    def _recent_pipelines(self) -> Sequence[Document] | None:
        """The recent pipelines; None when the relay serves none (404); the last ones seen
        when they cannot be read now."""
        try:
            found: Any = ask(self.address, PIPELINES_PATH, self.token, self.timeout_s)
        except Unreachable as exc:
            return None if exc.status == 404 else self._pipelines
        except UserError:
            return self._pipelines
        pipelines = found.get("pipelines") if isinstance(found, dict) else None
        return pipelines if isinstance(pipelines, list) else None


def top(
    config: Path | None, url: str | None, interval_s: float, once: bool, timeout_s: float
) -> int:
    """``ci-relay top``: live on a terminal, else one plain frame; the exit status."""
    if interval_s <= 0:
        raise UserError("--interval must be more than 0 seconds")
    server = load_settings(config).server
    source = Source(server, relay_address(server, url), timeout_s)
    try:
        if once or not sys.stdout.isatty():
            return _once(source, interval_s)
        return _live(source, interval_s)
    except KeyboardInterrupt:  # before the view is live, or in --once
        return EXIT_INTERRUPTED


def _once(source: Source, interval_s: float) -> int:
    """Two readings an interval apart, one plain frame, and ``ci-relay status``'s verdict."""
    watch = Watch(source.address, interval_s)
    first = source.read()
    watch.add(first)
    if first.document is not None:
        time.sleep(interval_s)
        watch.add(source.read())
    console = Console(highlight=False, color_system=None, force_terminal=False, emoji=False)
    with console.capture() as captured:
        console.print(frame(watch, now=time.time(), width=console.width, plain=True))
    # Tables pad their lines to their width: a log or a file gets none of that.
    print("\n".join(line.rstrip() for line in captured.get().splitlines()))
    if watch.unreachable_since is not None or watch.document is None:
        return EXIT_UNREACHABLE
    return exit_status(watch.document)


class _Poller(threading.Thread):
    """Reads the relay every interval from ``due`` on and hands each reading over, waking
    the view up through a pipe (whose writing end it closes when it stops)."""

    def __init__(self, source: Source, interval_s: float, wake: int, due: float) -> None:
        super().__init__(name="top-poller", daemon=True)
        self.source = source
        self.interval_s = interval_s
        self.readings: queue.SimpleQueue[Reading] = queue.SimpleQueue()
        self._wake = wake
        self._due = due
        self._stop = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop.wait(max(0.0, self._due - time.monotonic())):
                self.readings.put(self._read())
                with contextlib.suppress(OSError):  # the view has gone
                    os.write(self._wake, b".")
                self._due = max(self._due + self.interval_s, time.monotonic())
        finally:
            os.close(self._wake)

    def _read(self) -> Reading:
        try:
            return self.source.read()
        except UserError as exc:  # the token changed since: shown, and tried again
            return Reading(time.monotonic(), time.time(), None, str(exc))

    def stop(self) -> None:
        self._stop.set()


class _Ended(Exception):
    """SIGTERM or SIGHUP: leave the view the way ``q`` does."""


def _ended(signum: int, frame_: FrameType | None) -> None:
    raise _Ended(signum)


def _live(source: Source, interval_s: float) -> int:
    """The live view until ``q`` (0), Ctrl-C (130), SIGTERM or SIGHUP (0)."""
    watch = Watch(source.address, interval_s)
    console = Console(highlight=False, emoji=False)
    keys = sys.stdin.fileno() if sys.stdin.isatty() else None
    previous = {sig: signal.signal(sig, _ended) for sig in (signal.SIGTERM, signal.SIGHUP)}
    wake_read, wake_write = os.pipe()
    poller = _Poller(source, interval_s, wake_write, time.monotonic() + interval_s)
    try:
        watch.add(source.read())  # a refused token ends the command here, as status does
        with (
            Live(
                frame(watch, now=time.time(), width=console.width, plain=False),
                console=console,
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live,
            _cbreak(keys),
        ):
            poller.start()
            while True:
                waiting = [wake_read] if keys is None else [wake_read, keys]
                ready, _, _ = select.select(waiting, [], [])
                pressed = os.read(keys, 64) if keys is not None and keys in ready else b""
                if _QUIT_KEYS.intersection(pressed):
                    return 0
                if wake_read in ready:
                    os.read(wake_read, 4096)
                    with contextlib.suppress(queue.Empty):
                        while True:
                            watch.add(poller.readings.get_nowait())
                    shown = frame(watch, now=time.time(), width=console.width, plain=False)
                    live.update(shown, refresh=True)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except _Ended:
        return 0
    finally:
        poller.stop()
        if poller.ident is None:
            os.close(wake_write)  # never started: the poller would have closed it
        os.close(wake_read)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _cbreak(fd: int | None) -> Iterator[None]:
    """The terminal on ``fd`` in cbreak mode for the block (keys come one by one, unechoed;
    Ctrl-C still interrupts), then exactly as it was, however the block ends."""
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
