"""Page load time: a pipeline of 1,000 jobs with their steps, in a real headless Chromium.

Starts ``ci-relay serve --dry-run`` on a fresh outbox, posts one pipeline of ``--stages``
stages, ``--jobs`` jobs (spread over the stages, some queued) and ``--steps`` steps per job,
waits until the history holds every event, then measures, ``--runs`` times each:

- the JSON: ``GET /ui/pipelines/{unique_id}.json`` (the tree, critical path and problems
  built by the relay) and ``GET /ui/pipelines.json``, timed from this script over loopback;
- the page: ``/ui/pipelines/{unique_id}`` opened in Debian's Chromium (Selenium, the system
  chromedriver), from the start of the navigation until every bar is drawn, as the page's
  own ``performance.mark("ci-relay:drawn")`` tells (navigation start = 0), and the same seen
  from outside (``driver.get`` until the waterfall says it drew them all).

    python bench/ui_load.py [--jobs 1000] [--steps 2] [--runs 5] [--json results.json]

Prints a markdown table (min, median, max in milliseconds), the machine and the command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.testing.process import RelayProcess, write_config
from relay.testing.samples import event, request, rfc3339
from tests.ui.browser import chromium, wait

PIPELINE_ID = "bench-ui-load"
CHUNK = 1000  # events per request
SETTLE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Timing:
    """One measured thing, in milliseconds over the runs."""

    what: str
    runs: list[float]
    size_bytes: int | None = None

    @property
    def row(self) -> str:
        low, mid, high = min(self.runs), statistics.median(self.runs), max(self.runs)
        size = "" if self.size_bytes is None else f"{self.size_bytes / 1e6:.2f} MB"
        return f"| {self.what} | {low:.0f} | {mid:.0f} | {high:.0f} | {size} |"


def _at(moment: float) -> str:
    return rfc3339(datetime.fromtimestamp(moment, UTC))


def pipeline(stages: int, jobs: int, steps: int, seed: int = 7) -> list[dict[str, Any]]:
    """A finished pipeline: stages one after another, their jobs side by side (every fourth
    one queued), each job's steps one after another."""
    chance = random.Random(seed)
    child = {"pipeline_unique_id": PIPELINE_ID, "pipeline_name": "big"}
    per_stage = -(-jobs // stages)
    t0 = time.time() - 3 * 3600
    events: list[dict[str, Any]] = []
    clock = t0
    for s in range(stages):
        stage_id, stage_end = f"stage-{s}", clock
        for j in range(s * per_stage, min(jobs, (s + 1) * per_stage)):
            queued = chance.uniform(1, 30) if j % 4 == 0 else 0.0
            start = clock + queued
            lengths = [chance.uniform(5, 60) for _ in range(steps)] or [chance.uniform(5, 60)]
            end = start + sum(lengths)
            job_id = f"job-{j:05d}"
            events.append(
                event(
                    "job",
                    **child,
                    id=job_id,
                    name=f"job {j}",
                    stage_id=stage_id,
                    start=_at(start),
                    end=_at(end),
                    **({"queue_time": int(queued * 1000)} if queued else {}),
                )
            )
            moment = start
            for k, length in enumerate(lengths[:steps]):
                events.append(
                    event(
                        "step",
                        **child,
                        id=f"{job_id}-step-{k}",
                        name=f"step {k}",
                        job_id=job_id,
                        start=_at(moment),
                        end=_at(moment + length),
                    )
                )
                moment += length
            stage_end = max(stage_end, end)
        events.append(
            event(
                "stage",
                **child,
                id=stage_id,
                name=f"stage {s}",
                start=_at(clock),
                end=_at(stage_end),
            )
        )
        clock = stage_end
    events.append(
        event("pipeline", unique_id=PIPELINE_ID, name="big", start=_at(t0), end=_at(clock))
    )
    return events


async def post_all(client: aiohttp.ClientSession, url: str, events: list[dict[str, Any]]) -> None:
    for first in range(0, len(events), CHUNK):
        body = orjson.dumps(request(*events[first : first + CHUNK]))
        headers = {"Content-Type": "application/json"}
        async with client.post(url, data=body, headers=headers) as answer:
            if answer.status != 202:
                raise RuntimeError(f"the relay answered {answer.status}: {await answer.text()}")


async def settled(client: aiohttp.ClientSession, base: str, expected: int) -> None:
    """Wait until the pipeline's JSON holds every event and none is pending."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        async with client.get(f"{base}/ui/pipelines.json") as answer:
            document = await answer.json()
        fates: dict[str, int] = next(
            (p["fates"] for p in document["pipelines"] if p["unique_id"] == PIPELINE_ID), {}
        )
        if sum(fates.values()) == expected and fates.get("pending", 0) == 0:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the history did not settle {expected} events in {SETTLE_TIMEOUT_S} s")


async def time_json(client: aiohttp.ClientSession, url: str, runs: int, what: str) -> Timing:
    times: list[float] = []
    size = 0
    for _ in range(runs):
        began = time.perf_counter()
        async with client.get(url) as answer:
            body = await answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{url}: {answer.status}")
        times.append((time.perf_counter() - began) * 1000)
        size = len(body)
    return Timing(what, times, size)


def time_page(url: str, bars: int, runs: int, profile: Path) -> list[Timing]:
    """Open the waterfall ``runs`` times (after one warm-up) in one browser."""
    drawn_marks: list[float] = []
    outside: list[float] = []
    with chromium(profile) as driver:
        for run in range(runs + 1):
            driver.get("about:blank")
            began = time.perf_counter()
            driver.get(url)
            wait(driver, 120).until(
                lambda d: (
                    d.execute_script("return document.getElementById('waterfall').dataset.bars")
                    == str(bars)
                )
            )
            took = (time.perf_counter() - began) * 1000
            mark: float = wait(driver).until(
                lambda d: d.execute_script(
                    "const [m] = performance.getEntriesByName('ci-relay:drawn');"
                    "return m ? m.startTime : null;"
                )
            )
            if run:  # the first opens a cold browser
                outside.append(took)
                drawn_marks.append(mark)
    return [
        Timing("page: navigation start to bars drawn (the page's mark)", drawn_marks),
        Timing("page: driver.get to bars drawn (seen from outside)", outside),
    ]


async def measure(args: argparse.Namespace, workdir: Path) -> tuple[list[Timing], int]:
    events = pipeline(args.stages, args.jobs, args.steps)
    config = write_config(
        workdir / "relay.toml",
        server={"port": 0},
        outbox={"path": str(workdir / "outbox.db"), "synchronous": "NORMAL"},
        flusher={"flush_interval_s": 0.05},
    )
    async with (
        RelayProcess(config, arguments=("--dry-run",)) as relay,
        aiohttp.ClientSession() as client,
    ):
        base = f"http://127.0.0.1:{relay.port}"
        await post_all(client, relay.url, events)
        await settled(client, base, len(events))
        page = f"{base}/ui/pipelines/{PIPELINE_ID}"
        timings = [
            await time_json(client, f"{page}.json", args.runs, "JSON: GET /ui/pipelines/{id}.json"),
            await time_json(
                client, f"{base}/ui/pipelines.json", args.runs, "JSON: GET /ui/pipelines.json"
            ),
        ]
        timings += await asyncio.to_thread(
            time_page, page, len(events), args.runs, workdir / "profile"
        )
        await relay.terminate()
    return timings, len(events)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=2, help="steps per job")
    parser.add_argument("--stages", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ui-load-") as folder:
        timings, events = asyncio.run(measure(args, Path(folder)))
    print(
        f"One pipeline: {args.stages} stages, {args.jobs} jobs, {args.steps} steps per job "
        f"({events} events, {events} bars); {args.runs} runs each.\n"
    )
    print("| measured | min ms | median ms | max ms | size |")
    print("|---|---|---|---|---|")
    for timing in timings:
        print(timing.row)
    print(f"\n{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(
        "command: python bench/ui_load.py " + " ".join(argv if argv is not None else sys.argv[1:])
    )
    if args.json:
        args.json.write_text(orjson.dumps([asdict(t) for t in timings]).decode(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
