"""The relay as a real subprocess (``python -m relay serve``), with its JSON log lines.

For the tests that need a real process (crash, signals, start-up) and for the benchmarks;
``write_config`` writes the TOML file such a process reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from relay.contract.intake import PIPELINE_PATH

START_TIMEOUT_S = 20.0
# The relay's own variables: a relay started for a test or a benchmark reads its settings from
# the file it is given, never from the machine's environment.
RELAY_VARIABLES = ("DD_", "CI_RELAY_")


def relay_free_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (the process's environment by default) without the relay's own variables."""
    return {
        k: v
        for k, v in (os.environ if env is None else env).items()
        if not k.startswith(RELAY_VARIABLES)
    }


def write_config(path: Path, **groups: dict[str, Any]) -> Path:
    """A TOML config file with the given groups, e.g. ``outbox={"path": "..."}``."""
    lines: list[str] = []
    for group, values in groups.items():
        lines.append(f"[{group}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml(value)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return orjson.dumps(str(value)).decode()


class RelayProcess:
    """A started ``ci-relay serve``: its port, its JSON log lines, and signals to end it."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        arguments: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.arguments = tuple(arguments)  # after serve --config, e.g. --dry-run
        self.preexec_fn = preexec_fn  # runs in the child before exec, e.g. to set rlimits
        self.env = relay_free_env()
        self.env.update(env or {})
        self.logs: list[dict[str, Any]] = []
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PIPELINE_PATH}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def start(self) -> RelayProcess:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--config",
            str(self.config),
            *self.arguments,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env | {"CI_RELAY_LOG__FORMAT": "json"},
            preexec_fn=self.preexec_fn,
        )
        self._reader = asyncio.create_task(self._read_logs())
        waiter = asyncio.create_task(self._listening.wait())
        await asyncio.wait(
            {waiter, self._reader}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if not self._listening.is_set():
            waiter.cancel()
            await self.kill()
            raise RuntimeError(f"relay did not start: {self.logs[-5:]}")
        return self

    async def _read_logs(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        async for line in self._proc.stdout:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                entry = {"event": "raw", "text": line.decode(errors="replace").rstrip()}
            self.logs.append(entry)
            if entry.get("event") == "listening":
                self.port = int(entry["port"])
                self._listening.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log lines whose event is ``name``."""
        return [entry for entry in self.logs if entry.get("event") == name]

    async def signal(self, signum: signal.Signals) -> None:
        assert self._proc is not None
        if self._proc.returncode is None:
            # Gone already, but not yet reaped by the event loop: nothing left to signal.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signum)

    async def kill(self) -> int:
        """SIGKILL: no chance to flush or close anything."""
        await self.signal(signal.SIGKILL)
        return await self.wait()

    async def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then the exit status."""
        await self.signal(signal.SIGTERM)
        return await self.wait(timeout_s)

    async def wait(self, timeout_s: float = 30.0) -> int:
        assert self._proc is not None
        status = await asyncio.wait_for(self._proc.wait(), timeout_s)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout_s)
        return status

    async def __aenter__(self) -> RelayProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.returncode is None:
            await self.kill()
