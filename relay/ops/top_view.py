"""One frame of ``ci-relay top``, as rich renderables: the same frame live and as plain text.

``frame`` builds it from a ``Watch`` (``relay.ops.top_watch``): a header (the relay, its
delivery state, "unreachable since ..." when it does not answer), rates, the backlog,
the upstream, dead letters and the recent pipelines, then the verdict ``ci-relay status``
would give. Colours only help: every fact is in the text, so a plain frame says it all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from relay.contract.intake import WINDOW_HOURS, WINDOW_S
from relay.ops.status import byte_size, span, verdict
from relay.ops.top_watch import Rate, Watch

PIPELINES_SHOWN = 5
TWO_COLUMNS_WIDTH = 120  # from this many columns, the sections stand side by side
_BAR_WIDTH = 20
_STATE_STYLES = {"delivering": "green", "retrying": "yellow"}  # any other state: red


def frame(watch: Watch, *, now: float, width: int, plain: bool) -> RenderableType:
    """The whole frame at wall time ``now`` for a terminal ``width`` columns wide."""
    parts: list[RenderableType] = [*_header(watch, now)]
    document = watch.document
    if document is None:
        return Group(*parts)
    left = [_rates(watch), _backlog(document, plain)]
    right = [_upstream(watch, document), _dead_letters(watch, document)]
    if width >= TWO_COLUMNS_WIDTH:
        columns = Table.grid(padding=(0, 4))
        columns.add_row(Group(*_spaced(left)), Group(*_spaced(right)))
        parts += ["", columns]
    else:
        parts += _spaced(["", *left, *right])
    parts += ["", _pipelines(watch, now), "", _footer(document, plain)]
    return Group(*parts)


def _spaced(sections: Sequence[RenderableType]) -> list[RenderableType]:
    """The sections with an empty line between each two."""
    spaced: list[RenderableType] = []
    for section in sections:
        if spaced and section != "" and spaced[-1] != "":
            spaced.append("")
        spaced.append(section)
    return spaced


def _header(watch: Watch, now: float) -> list[RenderableType]:
    lines: list[RenderableType] = []
    document = watch.document
    if watch.unreachable_since is not None:
        gone = now - watch.unreachable_since
        lines.append(
            Text(
                f"unreachable since {_clock(watch.unreachable_since)} ({span(gone)}): "
                f"{watch.error}; trying again every {_seconds(watch.interval_s)}",
                style="bold red",
            )
        )
    if document is None:
        lines.append(Text(f"ci-relay top: {watch.url} has not answered yet", style="dim"))
        return lines
    assert watch.latest is not None
    seen = "" if watch.unreachable_since is None else f" · last seen {_clock(watch.latest.wall)}"
    lines.append(
        Text.assemble(
            (f"ci-relay {document['version']}", "bold"),
            f" at {watch.url} · up {span(document['uptime_s'])} · {_clock(now)}{seen}",
        )
    )
    lines += _delivery_lines(document.get("delivery"))
    return lines


def _delivery_lines(delivery: Mapping[str, Any] | None) -> list[RenderableType]:
    if delivery is None:
        return [Text("delivery  not running (upstream.enabled = false)")]
    state = delivery["state"]
    since = delivery["since"]
    line = Text.assemble(
        "delivery  ",
        (state, f"bold {_STATE_STYLES.get(state, 'red')}"),
        f" for {span(-since['in_s'])} (since {since['at']})",
    )
    wait = delivery["next_try_in_s"]
    if wait > 0:
        line.append(f" · next try in {wait:.1f}s" if wait < 10 else f" · next try in {span(wait)}")
    return [line, Text(f"upstream  {delivery['upstream']}", overflow="fold")]


def _section(title: str, *headers: str) -> Table:
    """A section: a bold title, then columns without borders (headers when given)."""
    return Table(
        *headers,
        title=title,
        title_justify="left",
        title_style="bold",
        box=None,
        show_header=bool(headers),
        header_style="bold dim",
        pad_edge=False,
        padding=(0, 2, 0, 0),
    )


def _rates(watch: Watch) -> Table:
    now_span = watch.rate("accepted").span_s
    minute_span = watch.rate("accepted", minute=True).span_s
    # With two readings only (--once), both columns would say the same.
    minute = minute_span > now_span
    headers = [f"last {_window(now_span)}"] + ([f"last {_window(minute_span)}"] if minute else [])
    table = _section("RATES per second", "", *headers)
    for column in table.columns[1:]:
        column.justify = "right"

    def row(label: str, name: str) -> None:
        cells = [_rate(watch.rate(name))]
        if minute:
            cells.append(_rate(watch.rate(name, minute=True)))
        table.add_row(label, *cells)

    row("events accepted", "accepted")
    if watch.document is not None and watch.document.get("delivery") is not None:
        row("events delivered", "delivered")
    refusals = watch.names("refused")
    for reason in refusals:
        row(f"refused {reason}", f"refused:{reason}")
    if not refusals:
        table.add_row("requests refused", *(["0", "0"] if minute else ["0"]))
    hooks = watch.document.get("webhooks", {}) if watch.document is not None else {}
    for source in watch.names("webhooks"):
        if hooks.get(source, {}).get("enabled"):
            row(f"webhooks {source}", f"webhooks:{source}")
    return table


def _backlog(document: Mapping[str, Any], plain: bool) -> Table:
    outbox = document["outbox"]
    table = _section("BACKLOG")
    events, max_events = outbox["events"], outbox["max_events"]
    table.add_row("events", _bar(events, max_events, plain, f"{events:,} of {max_events:,}"))
    size, max_size = outbox["bytes"], outbox["max_bytes"]
    table.add_row(
        "bytes", _bar(size, max_size, plain, f"{byte_size(size)} of {byte_size(max_size)}")
    )
    age = outbox["oldest_pending_age_s"]
    if age is None or events == 0:
        table.add_row("lag", Text.assemble(("0s", "green"), " (nothing pending)"))
    else:
        table.add_row(
            "lag", Text.assemble((span(age), "bold"), " (the oldest pending event's wait)")
        )
    expiry = outbox["next_expiry"]
    if expiry is None:
        table.add_row("oldest end", "- (no pending event has ended)")
        table.add_row("next expiry", "-")
        return table
    table.add_row("oldest end", f"{span(WINDOW_S - expiry['in_s'])} ago (of pending events)")
    warning_s = (document.get("delivery") or {}).get("expiry_warning_s")
    table.add_row(
        "next expiry",
        Text.assemble(
            (f"in {span(expiry['in_s'])}", _expiry_style(expiry["in_s"], warning_s)),
            f" ({expiry['at']}, {WINDOW_HOURS} hours after that end)",
        ),
    )
    return table


def _expiry_style(in_s: float, warning_s: float | None) -> str:
    """Yellow once the relay says expiring (its end is older than the expiry warning), red
    in the last quarter of that margin; green before."""
    margin = WINDOW_S - (warning_s if warning_s is not None else 12 * 3600.0)
    if in_s <= margin / 4:
        return "bold red"
    if in_s <= margin:
        return "yellow"
    return "green"


def _upstream(watch: Watch, document: Mapping[str, Any]) -> Table:
    table = _section("UPSTREAM")
    delivery = document.get("delivery")
    if delivery is None:
        table.add_row("requests", "none: delivery is not running")
        return table
    upstream = delivery.get("upstream_requests", {})
    by_outcome: Mapping[str, Mapping[str, int]] = upstream.get("requests_since_start", {})
    for outcome, by_class in by_outcome.items():
        classes = ", ".join(f"{name} {count:,}" for name, count in by_class.items())
        total = sum(by_class.values())
        recent = _recent(watch.rate(f"upstream:{outcome}", minute=True))
        table.add_row(outcome, f"{total:,} ({classes}){recent}")
    if not by_outcome:
        table.add_row("requests", "none yet")
    latency = upstream.get("latency")
    if latency is not None:
        table.add_row("latency", _latency(latency))
    recent = _recent(watch.rate("retries", minute=True))
    table.add_row("retries", f"{delivery['retries_since_start']:,}{recent}")
    last = delivery["last_delivery"]
    table.add_row(
        "last delivery",
        "never" if last is None else f"{last['events']:,} events {span(-last['in_s'])} ago",
    )
    error = delivery["last_error"]
    if error is not None:
        table.add_row(
            "last error",
            Text.assemble((f"{span(-error['in_s'])} ago", "yellow"), f": {error['answer']}"),
        )
    return table


def _latency(latency: Mapping[str, Any]) -> str:
    window = _window(latency["window_s"])
    if not latency["requests"]:
        return f"no request in the last {window}"
    return (
        f"p50 {_ms(latency['p50_s'])} · p99 {_ms(latency['p99_s'])}"
        f" (last {window}, {_count(latency['requests'], 'request')})"
    )


def _dead_letters(watch: Watch, document: Mapping[str, Any]) -> Table:
    table = _section("DEAD LETTERS", "reason", "now", "since opened")
    for column in table.columns[1:]:
        column.justify = "right"
    now: Mapping[str, int] = document["dead_letters"]
    reasons = sorted(set(now) | set(watch.dead_letters_at_open or {}))
    shown = [r for r in reasons if now.get(r, 0) or watch.dead_letter_change(r)]
    for reason in shown:
        table.add_row(reason, f"{now.get(reason, 0):,}", f"{watch.dead_letter_change(reason):+,}")
    if not shown:
        table.add_row("none", "0", "+0")
    return table


def _pipelines(watch: Watch, now: float) -> RenderableType:
    latest = watch.latest
    pipelines = None if latest is None else latest.pipelines
    if latest is None or not pipelines:
        table = _section("RECENT PIPELINES")
        table.add_row("no recent pipelines")
        return table
    read = latest.pipelines_read
    title = "RECENT PIPELINES" + ("" if read is None else f" (read {span(now - read)} ago)")
    table = _section(title, "name", "status", "duration", "problems")
    table.columns[2].justify = table.columns[3].justify = "right"
    for pipeline in pipelines[:PIPELINES_SHOWN]:
        duration = pipeline.get("duration_s")
        status = str(pipeline.get("status") or "-")
        problems = int(pipeline.get("problems") or 0)
        table.add_row(
            Text(str(pipeline.get("name") or "unknown"), overflow="ellipsis", no_wrap=True),
            Text(status, style=_PIPELINE_STYLES.get(status, "")),
            "-" if duration is None else span(duration),
            Text(f"{problems:,}", style="yellow" if problems else ""),
        )
    return table


_PIPELINE_STYLES = {"success": "green", "error": "red", "failed": "red", "running": "cyan"}


def _footer(document: Mapping[str, Any], plain: bool) -> Text:
    said = verdict(document)
    text = Text(said, style="green" if said == "status: ok" else "bold yellow")
    if not plain:
        text.append("   q quit", style="dim")
    return text


def _bar(value: int, limit: int, plain: bool, said: str) -> Text:
    """``[####................]  20% said``: the share of a limit."""
    share = 0.0 if limit <= 0 else min(1.0, value / limit)
    filled = round(share * _BAR_WIDTH)
    if value and not filled:
        filled = 1  # something pending always shows
    full, empty = ("#", ".") if plain else ("█", "░")
    style = "green" if share < 0.7 else "yellow" if share < 0.9 else "bold red"
    return Text.assemble(
        "[" if plain else "",
        (full * filled, style),
        (empty * (_BAR_WIDTH - filled), "dim"),
        "]" if plain else "",
        f" {share:4.0%}  {said}",
    )


def _rate(rate: Rate) -> str:
    if rate.per_s is None:
        return "-"
    value = rate.per_s
    return f"{value:,.1f}" if 0 < value < 10 else f"{value:,.0f}"


def _recent(rate: Rate) -> str:
    """`` · +12 in the last 1m``, or nothing before two readings."""
    if rate.per_s is None:
        return ""
    return f" · +{round(rate.per_s * rate.span_s):,} in the last {_window(rate.span_s)}"


def _window(seconds: float) -> str:
    """A window's length: ``1m`` for a minute, else ``0.25s``, ``1s``, ``12s``, ``2m 5s``."""
    if 59.5 <= seconds < 60.5:
        return "1m"
    return f"{seconds:.2g}s" if seconds < 9.5 else span(seconds)


def _count(count: int, what: str) -> str:
    return f"{count:,} {what}" if count == 1 else f"{count:,} {what}s"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def _seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%SZ")
