"""``ci-relay top`` in a pseudo-terminal against real relays and the stand-in intake: what
it shows (a healthy relay, an outage and its recovery, a relay that stops and comes back),
the terminal it leaves behind (``q``, Ctrl-C), and ``--once``; then the parts it is built
from, without processes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import signal
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import Histogram
from rich.console import Console

from relay import __version__, meters
from relay.ops.status import LatencyWindow
from relay.ops.top_view import frame
from relay.ops.top_watch import Reading, Watch
from relay.testing.process import RelayProcess, relay_free_env, write_config
from relay.testing.samples import request
from tests.fake_intake import Accept, FakeIntake, Status
from tests.helpers import API_KEY, JSON, ci_relay, closed_port, jobs

ROWS, COLUMNS = 50, 130
INTERVAL = "0.25"
WAIT_S = 15.0
# CSI sequences, OSC strings, charset choices and the few one-character escapes.
_ESCAPE = re.compile(
    r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78])"
)
ALT_SCREEN_ON, ALT_SCREEN_OFF = "\x1b[?1049h", "\x1b[?1049l"
CURSOR_HIDDEN, CURSOR_SHOWN = "\x1b[?25l", "\x1b[?25h"
HOME = "\x1b[H"


def _controlling_terminal() -> None:
    """In the child, after setsid: its standard input, the pty, as controlling terminal,
    so that Ctrl-C typed on it is SIGINT to the child's process group."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """``ci-relay top ARGS`` on a pseudo-terminal of its own (ROWS x COLUMNS): what it wrote,
    its frames as text, keys typed to it, and the terminal's modes seen from outside."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.output = bytearray()
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.before = termios.tcgetattr(self.slave)
        self.after: list[Any] = []
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in relay_free_env().items() if k not in ("COLUMNS", "LINES")}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "top",
            *self.args,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env | {"TERM": "xterm-256color"},
            start_new_session=True,
            preexec_fn=_controlling_terminal,
        )
        asyncio.get_running_loop().add_reader(self.master, self._read)

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            self.output += os.read(self.master, 1 << 16)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def frames(self) -> list[str]:
        """Each frame drawn so far, escape codes left out."""
        return [_ESCAPE.sub("", part) for part in self.text.split(HOME)[1:]]

    def latest(self) -> str:
        drawn = self.frames()
        return drawn[-1] if drawn else ""

    async def until(self, holds: Callable[[str], bool], what: str) -> str:
        """The first frame, from the latest on, of which ``holds`` is true."""
        deadline = time.monotonic() + WAIT_S
        while not holds(shown := self.latest()):
            assert self.running, self.text
            assert time.monotonic() < deadline, f"no frame with {what} in {WAIT_S} s: {shown}"
            await asyncio.sleep(0.05)
        return shown

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def modes(self) -> list[Any]:
        return termios.tcgetattr(self.slave)

    async def ended(self) -> int:
        assert self.process is not None
        status = await asyncio.wait_for(self.process.wait(), WAIT_S)
        await asyncio.sleep(0.1)  # the last bytes it wrote
        self._read_all()
        self.after = self.modes()
        return status

    def _read_all(self) -> None:
        os.set_blocking(self.master, False)
        with contextlib.suppress(OSError):
            while chunk := os.read(self.master, 1 << 16):
                self.output += chunk

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        if self.process is not None and self.process.returncode is None:
            self.process.kill()  # only this test's own child, by its pid
        os.close(self.master)
        os.close(self.slave)


@asynccontextmanager
async def top_on_a_terminal(*args: str) -> AsyncIterator[Terminal]:
    terminal = Terminal(*args)
    try:
        await terminal.start()
        yield terminal
    finally:
        terminal.close()


def cbreak(modes: list[Any]) -> bool:
    """Keys one by one, unechoed, Ctrl-C still a signal."""
    local = modes[3]
    return not local & (termios.ECHO | termios.ICANON) and bool(local & termios.ISIG)


def left_as_it_was(terminal: Terminal) -> None:
    """The terminal's modes as before the command, the alternate screen left as often as
    entered, and the cursor shown after it was last hidden."""
    assert terminal.before == terminal.after
    text = terminal.text
    assert 1 == text.count(ALT_SCREEN_ON) == text.count(ALT_SCREEN_OFF), text[-300:]
    assert text.rfind(CURSOR_SHOWN) > text.rfind(CURSOR_HIDDEN) >= 0
    assert text.rfind(ALT_SCREEN_OFF) > text.rfind(HOME)


def config(tmp_path: Path, intake: FakeIntake, port: int = 0) -> Path:
    return write_config(
        tmp_path / "relay.toml",
        server={"port": port},
        outbox={"path": str(tmp_path / "outbox.db")},
        upstream={"url": intake.url, "api_key": API_KEY},
        flusher={"flush_interval_s": 0.05},
        retry={"initial_backoff_s": 0.05, "max_backoff_s": 0.2},
    )


def url(relay: RelayProcess) -> str:
    return f"http://127.0.0.1:{relay.port}"


async def post(relay: RelayProcess, count: int, prefix: str = "job") -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.post(relay.url, data=orjson.dumps(request(*jobs(count, prefix))), headers=JSON) as r,
    ):
        assert 202 == r.status


def seconds(shown: str) -> float:
    """A span as the view prints it (45s, 2m 3s) in seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms])", shown))


def field(shown: str, label: str) -> str:
    """The text after ``label`` in a frame, up to the next column (3 spaces) or the line's
    end: sections may stand side by side."""
    found = re.search(rf"(?:^|  ){label}\s\s+(\S.*?)(?=   |\s*$)", shown, re.MULTILINE)
    assert found is not None, f"no {label} in {shown}"
    return found[1]


def lag(shown: str) -> float:
    return seconds(field(shown, "lag").split(" (")[0])


def rates(shown: str, label: str) -> list[float]:
    """The numbers on ``label``'s row of the rates (nothing before two readings)."""
    found = re.search(rf"^{label}((?:\s+(?:[\d,.]+|-)(?=\s|$))+)", shown, re.MULTILINE)
    assert found is not None, f"no {label} in {shown}"
    return [float(v.replace(",", "")) for v in found[1].split() if v != "-"]


async def test_a_healthy_relay_live_then_q_and_the_terminal_is_as_it_was(tmp_path: Path) -> None:
    """Live: the relay delivering, its events accepted and delivered, status ok, the
    terminal in cbreak mode meanwhile; `q` ends it with 0 and the terminal as it was. Piped
    (stdout not a terminal), the same command prints one plain frame and exits 0."""
    async with FakeIntake(Accept()) as intake, RelayProcess(config(tmp_path, intake)) as relay:
        await post(relay, 3)
        await intake.wait_for_events(3, timeout_s=WAIT_S)
        async with top_on_a_terminal("--url", url(relay), "--interval", INTERVAL) as terminal:
            shown = await terminal.until(lambda f: "status: ok" in f, "a healthy relay")
            live_modes = terminal.modes()
            terminal.type(b"q")
            status = await terminal.ended()
        piped = await ci_relay("top", "--url", url(relay), "--interval", INTERVAL)

    assert 0 == status
    assert cbreak(live_modes)
    left_as_it_was(terminal)
    assert f"ci-relay {__version__} at {url(relay)}" in shown
    assert "delivering for" in field(shown, "delivery")
    assert field(shown, "last delivery").startswith("3 events ")
    assert field(shown, "delivered").startswith("1 (2xx 1)")
    assert "0s (nothing pending)" == field(shown, "lag")
    assert "q quit" in shown
    assert (0, "") == (piped.status, piped.stderr)
    assert "\x1b" not in piped.stdout
    assert "status: ok" == piped.stdout.splitlines()[-1]
    for section in ("RATES per second", "BACKLOG", "UPSTREAM", "DEAD LETTERS", "RECENT PIPELINES"):
        assert section in piped.stdout


async def test_an_outage_then_its_recovery(tmp_path: Path) -> None:
    """The intake answers 503: retrying, the lag growing, retries counted, and --once exits
    10 as status does. Then it accepts: events delivered at a rate above 0, lag back to 0."""
    async with (
        FakeIntake(Status(503)) as intake,
        RelayProcess(config(tmp_path, intake)) as relay,
        top_on_a_terminal("--url", url(relay), "--interval", INTERVAL) as terminal,
    ):
        await post(relay, 20)
        early = await terminal.until(
            lambda f: "retrying for" in f and lag(f) >= 1, "retrying, a lag"
        )
        later = await terminal.until(lambda f: lag(f) >= lag(early) + 2, "the lag grown")
        once = await ci_relay("top", "--once", "--url", url(relay), "--interval", INTERVAL)
        intake.default = Accept()
        recovered = await terminal.until(
            lambda f: "delivering for" in f and "nothing pending" in f, "recovery"
        )
        delivering = await terminal.until(
            lambda f: max(rates(f, "events delivered"), default=0) > 0, "a delivery rate"
        )
        terminal.type(b"q")
        assert 0 == await terminal.ended()

    assert int(field(later, "retries").split()[0]) > int(field(early, "retries").split()[0]) > 0
    assert "503: answered by the fake intake" in field(later, "last error")
    assert "status: retrying" in later
    assert "0%  20 of 1,000,000" in later
    assert 10 == once.status
    assert "retrying for" in once.stdout
    assert 0 == lag(recovered)
    assert "20 events" in field(delivering, "last delivery")
    assert "status: ok" in delivering


async def test_a_relay_that_stops_is_unreachable_then_seen_again(tmp_path: Path) -> None:
    """The relay stops: "unreachable since ..." and the view keeps trying; a new relay on
    the same port is shown again, with what it delivers."""
    port = closed_port()
    async with FakeIntake(Accept()) as intake:
        path = config(tmp_path, intake, port)
        async with (
            RelayProcess(path) as first,
            top_on_a_terminal("--url", url(first), "--interval", INTERVAL) as terminal,
        ):
            await terminal.until(lambda f: "delivering for" in f, "the first relay")
            await first.terminate()
            gone = await terminal.until(lambda f: "unreachable since" in f, "unreachable")
            await asyncio.sleep(0.6)  # still trying, still drawing
            assert terminal.running
            async with RelayProcess(path) as second:
                again = await terminal.until(
                    lambda f: "unreachable" not in f and "delivering for" in f, "it again"
                )
                await post(second, 2, "again")
                await terminal.until(
                    lambda f: field(f, "last delivery").startswith("2 events"), "its delivery"
                )
                terminal.type(b"q")
                assert 0 == await terminal.ended()

    assert f"no relay answers at http://127.0.0.1:{port}" in gone
    assert "last seen" in gone
    assert "status: ok" in again


async def test_ctrl_c_ends_the_view_with_the_terminal_as_it_was(tmp_path: Path) -> None:
    """Ctrl-C typed on the terminal (SIGINT, while nothing answers): exit 130, the
    terminal's modes, screen and cursor as they were."""
    async with top_on_a_terminal(
        "--url", f"http://127.0.0.1:{closed_port()}", "--interval", INTERVAL
    ) as terminal:
        await terminal.until(lambda f: "unreachable since" in f, "unreachable")
        assert cbreak(terminal.modes())
        terminal.type(b"\x03")
        status = await terminal.ended()
    assert 128 + signal.SIGINT == status
    left_as_it_was(terminal)


async def test_a_relay_without_the_page_shows_no_recent_pipelines() -> None:
    """A relay that answers /ui/pipelines.json with 404 (no page routed): the frame says
    "no recent pipelines", and the command goes on as usual."""

    async def status(_: web.Request) -> web.Response:
        return web.json_response(_document(5, 0))

    app = web.Application()
    app.router.add_get("/status", status)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        ran = await ci_relay("top", "--once", "--url", f"http://{host}:{port}", "--interval", "0.1")
    finally:
        await runner.cleanup()
    assert (0, "") == (ran.status, ran.stderr)
    assert "RECENT PIPELINES\nno recent pipelines" in ran.stdout
    assert "delivery  not running" in ran.stdout


async def test_once_without_a_relay_exits_3(tmp_path: Path) -> None:
    """--once with nothing listening: the frame says unreachable, exit 3 as status."""
    ran = await ci_relay("top", "--once", "--url", f"http://127.0.0.1:{closed_port()}")
    assert 3 == ran.status
    assert ran.stdout.startswith("unreachable since ")
    assert "no relay answers at http://127.0.0.1:" in ran.stdout


# --- the parts, without processes -------------------------------------------------------


def test_latency_quantiles_are_those_of_the_last_minute() -> None:
    """p50/p99 from the buckets' counts less those of a minute ago, interpolated in their
    bucket; before a minute, since the start; none without a request."""
    histogram: Histogram = meters.upstream_seconds()
    window = LatencyWindow(histogram, started_at=1000.0)
    assert (0, None) == (window.quantiles(1001.0)["requests"], window.quantiles(1001.0)["p50_s"])
    for _ in range(100):
        histogram.observe(2.0)  # the slow minute
    early = window.quantiles(1030.0)
    assert (100, 30.0) == (early["requests"], early["window_s"])
    assert 1.0 < early["p50_s"] <= 2.5  # type: ignore[operator]
    window.quantiles(1062.0)  # a reading kept after the slow observations
    for _ in range(98):
        histogram.observe(0.02)
    for _ in range(2):
        histogram.observe(20.0)
    late = window.quantiles(1125.0)
    assert (100, 63.0) == (late["requests"], late["window_s"])
    assert 0.01 < late["p50_s"] <= 0.025  # type: ignore[operator]
    assert 20.0 == late["p99_s"]  # 10 s, and half the 10 s to 30 s bucket
    for _ in range(200):
        histogram.observe(100.0)  # past the last bound: counted in +Inf only
    assert 60.0 == window.quantiles(1190.0)["p99_s"]


def _document(accepted: int, delivered: int, started_at: str = "t0") -> dict[str, Any]:
    return {
        "version": "0",
        "started_at": started_at,
        "uptime_s": 1.0,
        "outbox": {
            "accepted_since_start": accepted,
            "events": accepted - delivered,
            "bytes": 0,
            "max_events": 10,
            "max_bytes": 10,
            "oldest_pending_age_s": None,
            "next_expiry": None,
        },
        "delivery": None,
        "dead_letters": {"rejected": 1},
        "conditions": [],
    }


def test_rates_come_from_counters_and_restart_with_the_relay() -> None:
    """The last interval's rate and the minute's, per second; a relay that restarted (its
    counters at 0 again) gives no negative rate; dead letters change from the opening."""
    watch = Watch("http://relay", 1.0)
    for second, accepted in enumerate((0, 10, 30, 60)):
        watch.add(Reading(float(second), 0.0, _document(accepted, 0)))
    assert 30.0 == watch.rate("accepted").per_s
    assert 20.0 == watch.rate("accepted", minute=True).per_s
    restarted = _document(5, 0, started_at="t1") | {"dead_letters": {"rejected": 3}}
    watch.add(Reading(4.0, 0.0, restarted))
    assert watch.rate("accepted").per_s is None
    assert 2 == watch.dead_letter_change("rejected")
    watch.add(Reading(5.0, 5.0, None, "refused"))
    console = Console(width=80, color_system=None, record=True)
    console.print(frame(watch, now=9.0, width=80, plain=True))
    assert console.export_text().startswith("unreachable since 00:00:05Z (4s): refused")
