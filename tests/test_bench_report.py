"""bench/run's report writer on canned outputs of the benchmark scripts (pure functions)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from run_report import (
    Figure,
    Outcome,
    analyse,
    as_section,
    number,
    parse_tables,
    render,
    warnings_in,
)

PARSE_OUT = """\
1000-event body of 483,017 bytes; 5 rounds of 5

| way | min ms | median ms | max ms | median vs baseline |
|---|---:|---:|---:|---:|
| orjson parse + orjson re-encode (baseline) | 6.01 | 8.00 | 11.52 | 1.00 |
| strict parse + original slices (relay) | 7.52 | 12.00 | 16.45 | 1.50 |
"""

CONNECTIONS_OUT = """\
| server | req/s | server CPU µs per request |
|---|---:|---:|
| aiohttp AppRunner (baseline) | 1,000.00 / 2,000.00 / 3,000.00 | 40.00 / 50.00 / 60.00 |
| relay runner (guarded) | 900.00 / 1,800.00 / 2,700.00 | 45.00 / 55.00 / 65.00 |
| ratio | 0.80 / 0.95 / 1.10 | 1.00 / 1.05 / 1.20 |
"""

SIDECAR_OUT = """\
`sidecar.py --runs 1` on 2 CPUs

### Ingest while 50,000 events drain (this)

| figure | unit | min | median | max | runs |
|---|---|---:|---:|---:|---:|
| idle: 1-event req/s | req/s | 4,000.00 | 4,000.00 | 4,000.00 | 1 |
| draining: 1-event req/s | req/s | 3,000.00 | 3,000.00 | 3,000.00 | 1 |
| ratio draining/idle | x | 0.70 | 0.70 | 0.70 | 1 |

- run 0: the backlog emptied before the run ended

### Start: first 202 after listening

| figure | unit | min | median | max | runs |
|---|---|---:|---:|---:|---:|
| this, empty outbox: listening -> first 202 | ms | 4.00 | 4.00 | 4.00 | 1 |
| this, 50,000 events: listening -> first 202 | ms | 6.00 | 6.00 | 6.00 | 1 |

- target: <= 10 ms
"""

INGEST_JSON = {
    "runs": [
        {
            "scenario": "single",
            "server": "noop",
            "label": "no-op aiohttp",
            "events_per_request": 1,
            "req_per_s": 20000.0,
            "events_per_s": 20000.0,
            "measured": {"latency_ms": {"p50": 2.0, "p99": 4.0}},
        },
        {
            "scenario": "single",
            "server": "relay",
            "label": "relay (FULL)",
            "events_per_request": 1,
            "req_per_s": 10000.0,
            "events_per_s": 10000.0,
            "measured": {"latency_ms": {"p50": 4.0, "p99": 8.0}},
        },
    ],
    "big_runs": [
        {"key": "tags", "title": "valid tags", "seconds": [0.5, 0.4, 0.6]},
        {"key": "ints", "title": "invalid ints", "seconds": [0.2]},
    ],
    "targets": [
        {"target": "1-event p99 latency < 25 ms", "measured": "8.00 ms", "pass": True},
        {"target": "1000-event requests >= 40,000", "measured": "1 events/s", "pass": False},
    ],
    "problems": {"single / relay (FULL)": ["warm-up run: 3 of 90 answers were not 202"]},
}


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("19,972", 19972.0),
        ("0.56 / 0.70 / 0.82", 0.70),
        ("8,907/12,219/20,369", 12219.0),
        ("61 MB", 61.0),
        ("-", None),
    ],
)
def test_number_reads_values_and_spread_medians(cell: str, expected: float | None) -> None:
    """A cell's number is read with thousands separators, and a min/median/max spread
    gives its median."""
    assert expected == number(cell)


def test_tables_keep_caption_rows_and_notes_below() -> None:
    """Each table is found with the line above it as caption and its bullet notes kept."""
    tables = parse_tables(SIDECAR_OUT)
    assert ["Ingest while 50,000 events drain (this)", "Start: first 202 after listening"] == [
        t.caption for t in tables
    ]
    assert ["figure", "unit", "min", "median", "max", "runs"] == tables[0].header
    assert 3 == len(tables[0].rows)
    assert tables[0].text.endswith("- run 0: the backlog emptied before the run ended")
    assert tables[1].text.endswith("- target: <= 10 ms")


def test_parse_figures_beside_the_baseline_row() -> None:
    """bench/parse.py's relay row is reported against its baseline row, with their ratio."""
    outcome = analyse(Outcome("parse", "python bench/parse.py", "ok"), PARSE_OUT, "", None)
    assert [
        Figure(
            "strict parse + original slices (relay), ms per body",
            "12.00",
            "orjson parse + orjson re-encode (baseline)",
            "8.00",
            1.5,
        )
    ] == outcome.figures


def test_connections_ratio_is_the_per_run_median() -> None:
    """The guarded runner's figures carry the script's per-run ratio, not a ratio of medians."""
    outcome = analyse(Outcome("connections", "c", "ok"), CONNECTIONS_OUT, "", None)
    assert [
        ("guarded runner: req/s", 0.95),
        ("guarded runner: server CPU µs per request", 1.05),
    ] == [(f.name, f.ratio) for f in outcome.figures]
    assert "1,000.00 / 2,000.00 / 3,000.00" == outcome.figures[0].baseline


def test_sidecar_pairs_draining_with_idle_and_full_start_with_empty() -> None:
    """bench/sidecar.py's tables give draining against idle and a full outbox's start
    against an empty one's."""
    outcome = analyse(Outcome("sidecar", "s", "ok"), SIDECAR_OUT, "", None)
    assert [
        ("draining: 1-event req/s (this), req/s", "3,000.00", "4,000.00", 0.7),
        ("this, 50,000 events: listening -> first 202, ms", "6.00", "4.00", 1.5),
    ] == [(f.name, f.value, f.baseline, f.ratio) for f in outcome.figures]


def test_ingest_json_gives_relay_against_noop_and_problems() -> None:
    """bench/ingest.py's JSON gives the relay against the no-op server per scenario, the
    invalid big body against the valid one, and each correctness problem as a warning."""
    outcome = analyse(Outcome("ingest", "i", "targets missed"), "", "", INGEST_JSON)
    assert [
        ("single: relay (FULL), req/s", "10,000", "20,000", 0.5),
        ("single: relay (FULL), p99 ms", "8.00", "4.00", 2.0),
        ("big: invalid ints, answer ms (median)", "200", "500", 0.4),
    ] == [(f.name, f.value, f.baseline, f.ratio) for f in outcome.figures]
    assert [
        "problem: single / relay (FULL): warm-up run: 3 of 90 answers were not 202"
    ] == outcome.warnings


def test_warnings_are_notes_and_failed_checks() -> None:
    """Notes, warnings and FAIL checks (bullets or table cells) are picked from the output."""
    stdout = (
        "note: the no-op baseline (single) kept its CPU only 50% busy\n"
        "- drain rate >= 30,000 events/s: FAIL\n"
        "- peak RSS < 150 MB: PASS\n"
        "| scenario | peak RSS MB | < 150 MB |\n|---|---:|---|\n| big | 200 | FAIL |\n"
    )
    assert [
        "note: the no-op baseline (single) kept its CPU only 50% busy",
        "check failed: drain rate >= 30,000 events/s",
        "Warning: something odd",
        "check failed: big | 200 | FAIL",
    ] == warnings_in(stdout, "Warning: something odd\nprogress line\n")


def test_render_has_machine_summary_and_skipped_reason() -> None:
    """The report lists the machine, one summary row per figure and a skipped benchmark's
    reason."""
    parse = analyse(Outcome("parse", "python bench/parse.py", "ok", seconds=3), PARSE_OUT, "", None)
    skipped = Outcome("connections", "python bench/connections.py", "skipped", "wrk not on PATH")
    report = render({"cores": "2", "CPU": "AMD EPYC"}, {"commit": "abc"}, [parse, skipped])
    assert "| CPU | AMD EPYC |" in report
    assert (
        "| parse | strict parse + original slices (relay), ms per body | 12.00 "
        "| orjson parse + orjson re-encode (baseline) | 8.00 | 1.50 |"
    ) in report
    assert "| connections | (skipped) | - | - | - | - |" in report
    assert "- `python bench/connections.py`: skipped (wrk not on PATH)" in report
    assert "- `python bench/parse.py`: ok, 3 s" in report
    assert "5 rounds of 5\n\n| way | min ms |" in report


def test_section_moves_headings_down_and_sets_tables_apart() -> None:
    """A script's own headings sit below the report's, and its tables get blank lines
    around them so that they render."""
    stdout = "## ingest\nmachine: 2 cores\n| a | b |\n|---|---|\n| 1 | 2 |\n- check: PASS\n"
    assert (
        "#### ingest\nmachine: 2 cores\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- check: PASS"
        == as_section(stdout)
    )
