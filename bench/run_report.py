"""The report of ``bench/run``: each benchmark's figures beside their same-run baselines.

Pure functions only (no process, clock or file), so that canned outputs can be fed to them:
markdown tables parsed from a script's stdout, headline figures picked from those tables or
from the script's JSON, warnings picked from its output, and the whole report rendered as
markdown from the machine's description and each benchmark's outcome.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# A number as the scripts print it: 19,972 / 0.52 / -3 / 1.2e+03.
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?", re.IGNORECASE)
_WARNING = re.compile(r"^\s*(note|warning)\b", re.IGNORECASE)
_FAILED_CHECK = re.compile(r"^- (.+): FAIL\s*$")


@dataclass(frozen=True)
class Figure:
    """One headline figure and the baseline it is compared with in the same run."""

    name: str
    value: str
    baseline_label: str = "-"
    baseline: str = "-"
    ratio: float | None = None


@dataclass(frozen=True)
class Table:
    """A markdown table found in a script's output, with the text line that introduces it."""

    caption: str
    header: list[str]
    rows: list[list[str]]
    text: str

    def row(self, pattern: str) -> dict[str, str] | None:
        """The first row whose first cell matches ``pattern`` (a regex), keyed by header."""
        for cells in self.rows:
            if cells and re.search(pattern, cells[0]):
                return dict(zip(self.header, cells, strict=False))
        return None


@dataclass
class Outcome:
    """How one benchmark went: its status, what it printed that matters, its figures."""

    name: str
    command: str
    status: str  # ok, targets missed, failed, timed out, skipped
    reason: str = ""
    seconds: float = 0.0
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    output: str = ""


def number(cell: str) -> float | None:
    """The value of a table cell; the median of a "min / median / max" spread."""
    found = [float(n.replace(",", "")) for n in _NUMBER.findall(cell)]
    if len(found) == 3 and cell.count("/") >= 2:
        return found[1]
    if len(found) == 1:
        return found[0]
    return None


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, or None when either is unknown or the baseline is zero."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _is_separator(line: str) -> bool:
    return bool(re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*\|?", line.strip()))


def parse_tables(text: str) -> list[Table]:
    """Every markdown table in ``text``, each with the nearest text line above it as its
    caption and the bullet notes right below it kept in its text."""
    lines = text.splitlines()
    tables: list[Table] = []
    i = 0
    while i < len(lines):
        if not (
            lines[i].lstrip().startswith("|") and i + 1 < len(lines) and _is_separator(lines[i + 1])
        ):
            i += 1
            continue
        start, header = i, _cells(lines[i])
        i += 2
        rows = []
        while i < len(lines) and lines[i].lstrip().startswith("|"):
            rows.append(_cells(lines[i]))
            i += 1
        end = i
        while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("- ")):
            if lines[i].strip():
                end = i + 1
            i += 1
        caption = _caption(lines, start)
        body = "\n".join(line for line in lines[start:end] if line.strip())
        tables.append(Table(caption, header, rows, body))
        i = end
    return tables


def _caption(lines: Sequence[str], start: int) -> str:
    for line in reversed(lines[max(0, start - 3) : start]):
        text = line.strip()
        if text.startswith("|"):
            return ""
        if text:
            return text.lstrip("#").strip()
    return ""


def warnings_in(stdout: str, stderr: str) -> list[str]:
    """Saturation notes, warnings and failed checks that a script printed."""
    found: list[str] = []
    for line in [*stdout.splitlines(), *stderr.splitlines()]:
        text = line.strip()
        if _WARNING.match(text):
            found.append(text)
        elif failed := _FAILED_CHECK.match(text):
            found.append(f"check failed: {failed[1]}")
    for table in parse_tables(stdout):
        for cells in table.rows:
            if "FAIL" in cells:
                found.append(f"check failed: {' | '.join(cells)}")
    return list(dict.fromkeys(found))


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _pair(
    name: str,
    value_row: Mapping[str, str] | None,
    baseline_row: Mapping[str, str] | None,
    column: str,
    ratio_cell: str | None = None,
) -> list[Figure]:
    """A figure from one column of two rows (value, baseline) of the same table."""
    if value_row is None or baseline_row is None or column not in value_row:
        return []
    value, base = value_row[column], baseline_row.get(column, "-")
    shown = number(ratio_cell) if ratio_cell is not None else ratio(number(value), number(base))
    label = next(iter(baseline_row.values()), "-")
    return [Figure(name, value, label, base, shown)]


# --------------------------------------------------------------------------- per benchmark


def ingest_figures(stdout: str, data: Any) -> list[Figure]:
    """bench/ingest.py's JSON: relay against no-op per wrk scenario, and each big body's
    answer time against the valid tags body's."""
    if not isinstance(data, dict):
        return []
    runs = data.get("runs", [])
    figures: list[Figure] = []
    for scenario in dict.fromkeys(run["scenario"] for run in runs):
        mine = {run["server"]: run for run in runs if run["scenario"] == scenario}
        relay, noop = mine.get("relay"), mine.get("noop")
        if relay is None or noop is None:
            continue
        for key, unit in (("req_per_s", "req/s"), ("events_per_s", "events/s")):
            if key == "events_per_s" and relay["events_per_request"] == 1:
                continue
            figures.append(
                Figure(
                    f"{scenario}: {relay['label']}, {unit}",
                    _fmt(relay[key]),
                    noop["label"],
                    _fmt(noop[key]),
                    ratio(relay[key], noop[key]),
                )
            )
        p99 = [
            (run.get("measured") or {}).get("latency_ms", {}).get("p99") for run in (relay, noop)
        ]
        if None not in p99:
            figures.append(
                Figure(
                    f"{scenario}: {relay['label']}, p99 ms",
                    _fmt(p99[0]),
                    noop["label"],
                    _fmt(p99[1]),
                    ratio(p99[0], p99[1]),
                )
            )
    big = [run for run in data.get("big_runs", []) if run.get("seconds")]
    valid = next((run for run in big if run["key"] == "tags"), None)
    for run in big:
        if valid is None or run is valid:
            continue
        ms, base = (1000 * statistics.median(r["seconds"]) for r in (run, valid))
        figures.append(
            Figure(
                f"big: {run['title']}, answer ms (median)",
                _fmt(ms),
                valid["title"],
                _fmt(base),
                ratio(ms, base),
            )
        )
    return figures


def ingest_warnings(data: Any) -> list[str]:
    """Correctness problems from bench/ingest.py's JSON (its missed targets are FAIL rows of
    its targets table, found with the other tables' FAIL cells)."""
    if not isinstance(data, dict):
        return []
    found: list[str] = []
    for name, problems in data.get("problems", {}).items():
        found += [f"problem: {name}: {problem}" for problem in problems]
    return found


def drain_figures(stdout: str, data: Any) -> list[Figure]:
    """bench/drain.py's JSON: the relay's drain rate against posting from memory, and the
    memory scenarios' peak RSS (no baseline: their bound is a target)."""
    if not isinstance(data, list) or len(data) < 2:
        return []
    base, relay = data[0], data[1]
    rates = [r["events"] / r["seconds"] if r["seconds"] else 0.0 for r in (relay, base)]
    figures = [
        Figure(
            f"drain of {relay['events']:,} events, events/s",
            _fmt(rates[0]),
            base["name"],
            _fmt(rates[1]),
            ratio(rates[0], rates[1]),
        )
    ]
    for run in data[2:]:
        rss = run.get("peak_rss_mb")
        shown = "-" if rss is None else f"{rss:,.0f} MB"
        figures.append(Figure(f"{run['name']}, peak RSS", shown, "target", "< 150 MB"))
    return figures


def _first(tables: Sequence[Table], column: str) -> Table | None:
    return next((t for t in tables if column in t.header), None)


def instructions_figures(stdout: str, data: Any) -> list[Figure]:
    """bench/ingest_instructions.py: instructions per request, each relay against no-op."""
    table = _first(parse_tables(stdout), "instructions/request")
    if table is None:
        return []
    noop = table.row(r"^noop$")
    return _each_against(table, noop, "{}: instructions/request", table.header[1])


def parse_figures(stdout: str, data: Any) -> list[Figure]:
    """bench/parse.py: each way's median ms per body against the re-encoding baseline."""
    table = _first(parse_tables(stdout), "median ms")
    if table is None:
        return []
    baseline = table.row(r"\(baseline\)")
    return _each_against(table, baseline, "{}, ms per body", "median ms")


def _each_against(
    table: Table, baseline: dict[str, str] | None, name: str, column: str
) -> list[Figure]:
    """Every row of ``table`` but the baseline's, each against it in ``column``; ``name``
    formats a row's first cell into the figure's name."""
    figures: list[Figure] = []
    for cells in table.rows:
        row = dict(zip(table.header, cells, strict=False))
        if row != baseline:
            figures += _pair(name.format(cells[0]), row, baseline, column)
    return figures


def replay_figures(stdout: str, data: Any) -> list[Figure]:
    """bench/replay.py: the chunked replay against one transaction, medians of the runs."""
    table = _first(parse_tables(stdout), "replay s")
    if table is None:
        return []
    chunked, whole = table.row(r"^chunked$"), table.row(r"^one-transaction$")
    figures: list[Figure] = []
    for column in ("replay s", "503", "p99 ms", "max ms"):
        figures += _pair(f"chunked replay: runners' {column}", chunked, whole, column)
    return figures


def connections_figures(stdout: str, data: Any) -> list[Figure]:
    """bench/connections.py: the guarded runner against aiohttp's, with the per-run ratio."""
    table = _first(parse_tables(stdout), "req/s")
    if table is None:
        return []
    guarded, plain, ratios = (table.row(p) for p in (r"guarded", r"baseline", r"^ratio$"))
    figures: list[Figure] = []
    for column in table.header[1:]:
        cell = ratios.get(column) if ratios else None
        figures += _pair(f"guarded runner: {column}", guarded, plain, column, cell)
    return figures


def run_overhead_figures(stdout: str, data: Any) -> list[Figure]:
    """bench/run_overhead.py: wall time of the wrapper and of the CLI's import against the
    interpreter's start, medians."""
    table = _first(parse_tables(stdout), "median")
    if table is None:
        return []
    # The interpreter's own start, not `true`, is the floor of a wrapper written in Python.
    python = table.row(r"^python -c pass$")
    return [
        *_pair("`ci-relay run -- true`, median ms", table.row(r"^ci-relay run"), python, "median"),
        *_pair("`import relay.cli`, median ms", table.row(r"^import relay.cli$"), python, "median"),
    ]


def sidecar_figures(stdout: str, data: Any) -> list[Figure]:
    """bench/sidecar.py: draining against idle, relay against no-op, a full outbox's start
    against an empty one's, this revision against the one before (when measured)."""
    figures: list[Figure] = []
    for table in parse_tables(stdout):
        if "median" not in table.header:
            continue
        where = f" ({m[1]})" if (m := re.search(r"\((\w+)\)$", table.caption)) else ""
        pairs = [
            ("draining: 1-event req/s", "idle: 1-event req/s", "ratio draining/idle"),
            ("draining: p99", "idle: p99", "p99 ratio"),
            ("relay peak RSS", "no-op peak RSS", None),
            ("this: drained", "before: drained", "this / before"),
            *(
                (f"this: {part} CPU per 1000 events", f"before: {part} CPU per 1000 events", None)
                for part in ("relay event loop", "relay's other threads (SQLite)", "intake")
            ),
        ]
        for cells in table.rows:
            full = re.fullmatch(r"(\w+), ([\d,]+) events: (.+)", cells[0])
            if full:
                pairs.append((cells[0], f"{full[1]}, empty outbox: {full[3]}", None))
        for value, baseline, ratio_row in pairs:
            row = table.row(f"^{re.escape(value)}$")
            if row is None:
                continue
            base = table.row(f"^{re.escape(baseline)}$") or {"figure": "-"}
            r = table.row(f"^{re.escape(ratio_row)}$") if ratio_row else None
            cell = r.get("median") if r else None
            figures += _pair(f"{value}{where}, {row.get('unit', '')}", row, base, "median", cell)
    return figures


Extractor = Callable[[str, Any], list[Figure]]

EXTRACTORS: dict[str, Extractor] = {
    "ingest": ingest_figures,
    "ingest_instructions": instructions_figures,
    "drain": drain_figures,
    "parse": parse_figures,
    "replay": replay_figures,
    "connections": connections_figures,
    "connections-slow": connections_figures,
    "sidecar": sidecar_figures,
    "run_overhead": run_overhead_figures,
}


def analyse(outcome: Outcome, stdout: str, stderr: str, data: Any) -> Outcome:
    """Fill ``outcome`` with the tables, figures and warnings of a benchmark's output."""
    outcome.tables = parse_tables(stdout)
    outcome.output = as_section(stdout)
    extract = EXTRACTORS.get(outcome.name)
    outcome.figures = extract(stdout, data) if extract else []
    outcome.warnings = warnings_in(stdout, stderr)
    if outcome.name == "ingest":
        outcome.warnings += ingest_warnings(data)
    if outcome.status == "ok" and outcome.tables and not outcome.figures:
        outcome.warnings.append("no headline figure found in the output (its tables follow)")
    return outcome


# --------------------------------------------------------------------------- rendering


def as_section(stdout: str) -> str:
    """A script's stdout to sit under a level-2 heading: its headings moved two levels
    down, and a blank line around each table so that it renders as one."""
    out: list[str] = []
    in_table = False
    for line in stdout.rstrip().splitlines():
        is_row = line.lstrip().startswith("|")
        if is_row != in_table and line.strip() and out and out[-1].strip():
            out.append("")
        in_table = is_row
        out.append(f"##{line}" if line.startswith("#") else line)
    return "\n".join(out)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_table(outcomes: Sequence[Outcome]) -> str:
    """One row per headline figure: its value, the same-run baseline and their ratio."""
    lines = [
        "| benchmark | figure | value | baseline | baseline value | ratio |",
        "|---|---|---:|---|---:|---:|",
    ]
    for outcome in outcomes:
        if not outcome.figures:
            lines.append(f"| {outcome.name} | ({outcome.status}) | - | - | - | - |")
        for f in outcome.figures:
            lines.append(
                f"| {outcome.name} | {_escape(f.name)} | {_escape(f.value)} "
                f"| {_escape(f.baseline_label)} | {_escape(f.baseline)} | {_ratio(f.ratio)} |"
            )
    return "\n".join(lines)


def render(
    machine: Mapping[str, str], header: Mapping[str, str], outcomes: Sequence[Outcome]
) -> str:
    """The whole report: header, machine, summary, then each benchmark's own tables."""
    out = ["# ci-relay benchmark report", ""]
    out += [f"- {key}: {value}" for key, value in header.items()]
    out += ["", "## Machine", "", "| | |", "|---|---|"]
    out += [f"| {key} | {_escape(value)} |" for key, value in machine.items()]
    out += [
        "",
        "## Summary",
        "",
        "Each figure beside its baseline measured in the same run; ratio = value / baseline "
        "(where a script takes its ratio per run, the median of those). Spreads are "
        "min / median / max over the runs.",
        "",
        summary_table(outcomes),
    ]
    for outcome in outcomes:
        out += ["", f"## {outcome.name}", ""]
        out.append(
            f"- `{outcome.command}`: {outcome.status}"
            + (f" ({outcome.reason})" if outcome.reason else "")
            + (f", {outcome.seconds:.0f} s" if outcome.seconds else "")
        )
        out += [f"- warning: {w}" for w in outcome.warnings]
        if outcome.output:
            out += ["", outcome.output]
    return "\n".join(out) + "\n"
