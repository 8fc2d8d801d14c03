"""How to get each event's stored bytes from a request body: re-encode, or slice the original.

    python bench/parse.py [--rounds 15] [--loops 20]

Times, on the same 1000-event body (about 480 KB) and interleaved in one run, the JSON work
of a request apart from validation: parsing the body for validation plus producing each
event's stored bytes. Baseline: orjson parse + orjson re-encode of each event. Printed as a
markdown table of milliseconds per body (min / median / max over the rounds) and the ratio
of medians against the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relay.contract.body import event_bytes, loads  # noqa: E402
from relay.testing.samples import LEVELS, event, request  # noqa: E402


def reencode(body: bytes) -> tuple[Any, list[bytes]]:
    """Baseline: orjson parse, then orjson re-encodes each event (integers > 64 bits lost)."""
    document = orjson.loads(body)
    return document, [orjson.dumps(item) for item in document["data"]]


def slice_original(body: bytes) -> tuple[Any, list[bytes]]:
    """The relay's way: strict parse with the depth limit, then each event's original bytes."""
    return loads(body), event_bytes(body)


def parse_only(body: bytes) -> tuple[Any, list[bytes]]:
    """The floor: orjson parse alone, no stored bytes."""
    return orjson.loads(body), []


WAYS: list[tuple[str, Callable[[bytes], tuple[Any, list[bytes]]]]] = [
    ("orjson parse + orjson re-encode (baseline)", reencode),
    ("strict parse + original slices (relay)", slice_original),
    ("orjson parse alone (floor)", parse_only),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--loops", type=int, default=20, help="bodies per timed round")
    args = parser.parse_args(argv)
    body = orjson.dumps(request(*[event(LEVELS[i % len(LEVELS)]) for i in range(1000)]))
    expected = [orjson.loads(item) for item in reencode(body)[1]]
    assert expected == [orjson.loads(item) for item in slice_original(body)[1]]
    times: dict[str, list[float]] = {name: [] for name, _ in WAYS}
    for _ in range(args.rounds):
        for name, way in WAYS:
            start = time.perf_counter()
            for _ in range(args.loops):
                way(body)
            times[name].append((time.perf_counter() - start) / args.loops * 1000)
    baseline = statistics.median(times[WAYS[0][0]])
    print(f"1000-event body of {len(body):,} bytes; {args.rounds} rounds of {args.loops}\n")
    print("| way | min ms | median ms | max ms | median vs baseline |")
    print("|---|---:|---:|---:|---:|")
    for name, found in times.items():
        median = statistics.median(found)
        print(
            f"| {name} | {min(found):.2f} | {median:.2f} | {max(found):.2f} "
            f"| {median / baseline:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
