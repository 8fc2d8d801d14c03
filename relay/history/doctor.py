"""The doctor: mistakes across a pipeline's events that Datadog would drop, misfile or keep open.

Each rule (docs/doctor.md says why Datadog cares and how to fix each at the source) looks at
one pipeline tree (``relay.history.tree``) and yields ``Problem(rule, level, id, detail)``,
``level`` and ``id`` naming the event at fault:

- ``orphan``: a stage, job or step whose pipeline never reached Datadog (never arrived, or
  was only dead-lettered) ``grace_s`` after the child's end (its ``received_at`` without one).
- ``pipeline-name-mismatch``: a child whose ``pipeline_name`` differs from its pipeline's name.
- ``outside-parent``: a child that starts before, or ends after, its pipeline by more than
  ``clock_tolerance_s``; inside its pipeline, a job outside the stage it hangs under, a
  step outside its job (one problem per child, the pipeline checked first).
- ``never-finished``: a pipeline with no finished event reaching Datadog (only ``running``
  ones, or a finished one dead-lettered) ``running_window_s`` after its start (its first
  ``received_at`` without one).
- ``duplicate-finished``: a pipeline finished more than once (copies with ``partial_retry``
  and dead-lettered copies not counted).
- ``unknown-parent``: a job naming a ``stage_id``, or a step a ``job_id`` or ``stage_id``,
  that never reached Datadog, once the pipeline is finished and ``grace_s`` past its end.

A dead-lettered copy counts as not sent for the rules about what Datadog receives. Every
function takes ``now`` (epoch seconds) instead of reading a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, get_args

from relay.history.records import LEVELS, Record

if TYPE_CHECKING:
    from relay.history.tree import Node, Pipeline

Rule = Literal[
    "orphan",
    "pipeline-name-mismatch",
    "outside-parent",
    "never-finished",
    "duplicate-finished",
    "unknown-parent",
]
RULES: Final[tuple[Rule, ...]] = get_args(Rule)


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake: the rule, the level and id of the event at fault, and what is wrong."""

    rule: Rule
    level: str
    id: str
    detail: str


@dataclass(frozen=True, slots=True)
class Thresholds:
    """How long to wait before a missing event is a problem, and how much skew to allow."""

    grace_s: float = 600.0
    clock_tolerance_s: float = 1.0
    # Shorter than the history keeps records (a day), so that the rule fires while the
    # running event is still there to show.
    running_window_s: float = 12 * 3600.0


DEFAULT_THRESHOLDS: Final = Thresholds()


def examine(
    pipeline: Pipeline, *, now: float, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> list[Problem]:
    """Every problem of one pipeline, by rule (in ``RULES`` order), level, then id."""
    found = [
        *_orphans(pipeline, now, thresholds),
        *_name_mismatches(pipeline),
        *_outside_parents(pipeline, thresholds),
        *_never_finished(pipeline, now, thresholds),
        *_duplicate_finished(pipeline),
        *_unknown_parents(pipeline, now, thresholds),
    ]
    return sorted(found, key=_order)


def examine_all(
    pipelines: Iterable[Pipeline], *, now: float, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> list[Problem]:
    """Every problem of every pipeline (``tree.build_all(records)`` makes them)."""
    return [p for pipeline in pipelines for p in examine(pipeline, now=now, thresholds=thresholds)]


def counts_by_rule(problems: Iterable[Problem]) -> dict[str, int]:
    """How many problems each rule found, every rule present (zero included), in ``RULES``
    order: a stable set of labels for /metrics and /status."""
    counts: dict[str, int] = dict.fromkeys(RULES, 0)
    for problem in problems:
        counts[problem.rule] += 1
    return counts


# -- the rules


def _orphans(pipeline: Pipeline, now: float, thresholds: Thresholds) -> Iterator[Problem]:
    own = pipeline.pipeline
    if own is not None and _sent(own.copies):
        return
    why = "never arrived" if own is None else f"was dead-lettered ({_reasons(own.copies)})"
    for child in pipeline.children():
        ended = child.end is not None
        since = child.end if child.end is not None else _first_received(child.copies)
        if now - since > thresholds.grace_s:
            moment = f"the {child.level}'s end" if ended else "its arrival"
            yield _problem(
                "orphan",
                child,
                f"{_what(child)} names pipeline {pipeline.unique_id}, whose pipeline event "
                f"{why} within {_span(thresholds.grace_s)} of {moment}",
            )


def _name_mismatches(pipeline: Pipeline) -> Iterator[Problem]:
    own = pipeline.pipeline
    if own is None:
        return
    for child in pipeline.children():
        named = child.record.pipeline_name
        if named is not None and named != own.name:
            yield _problem(
                "pipeline-name-mismatch",
                child,
                f"{_what(child)} gives pipeline_name {named!r}; its pipeline is named {own.name!r}",
            )


def _outside_parents(pipeline: Pipeline, thresholds: Thresholds) -> Iterator[Problem]:
    for child in pipeline.children():
        how = _sticking_out(child, pipeline.pipeline, thresholds.clock_tolerance_s)
        if how:
            yield _problem("outside-parent", child, f"{_what(child)} {how}")


def _sticking_out(child: Node, own: Node | None, tolerance_s: float) -> str:
    """How the child sticks out of its pipeline, else of its stage or job ("" if it does not)."""
    if own is not None:
        how = _outside(child.record, own.record, tolerance_s)
        if how:
            return f"{how} its pipeline"
    parent = child.parent
    if parent is not None:
        how = _outside(child.record, parent.record, tolerance_s)
        if how:
            return f"{how} the {parent.level} {parent.name!r} it belongs to"
    return ""


def _never_finished(pipeline: Pipeline, now: float, thresholds: Thresholds) -> Iterator[Problem]:
    own = pipeline.pipeline
    if own is None:
        return
    finished = [r for r in own.copies if r.status != "running"]
    if _sent(finished):
        return
    running = [r for r in own.copies if r.status == "running"]
    since = own.start if own.start is not None else _first_received(own.copies)
    if now - since <= thresholds.running_window_s:
        return
    if finished:
        why = f"its finished event was dead-lettered ({_reasons(finished)})"
    else:
        why = f"{len(running)} running event(s) and no finished one arrived"
    yield _problem(
        "never-finished",
        own,
        f"pipeline {own.name!r} started {_span(now - since)} ago; {why}",
    )


def _duplicate_finished(pipeline: Pipeline) -> Iterator[Problem]:
    own = pipeline.pipeline
    if own is None:
        return
    finished = [
        r
        for r in own.copies
        if r.status != "running" and r.fate != "dead_lettered" and not r.partial_retry
    ]
    if len(finished) < 2:
        return
    shapes = {(r.status, r.start, r.end) for r in finished}
    how = "identical copies" if len(shapes) == 1 else _differences(finished)
    yield _problem(
        "duplicate-finished",
        own,
        f"pipeline {own.name!r} was sent finished {len(finished)} times "
        f"with unique_id {own.id}, without partial_retry ({how})",
    )


def _unknown_parents(pipeline: Pipeline, now: float, thresholds: Thresholds) -> Iterator[Problem]:
    own = pipeline.pipeline
    if own is None or own.end is None or not _sent(r for r in own.copies if r.status != "running"):
        return  # not finished in Datadog's eyes: its parts may still come (or it is orphan's)
    if now - own.end <= thresholds.grace_s:
        return
    stages = _ids_sent(pipeline.stages)
    jobs = _ids_sent(pipeline.jobs)
    for child in [*pipeline.jobs, *pipeline.steps]:
        missing = _missing_parents(child.record, stages, jobs)
        if missing:
            yield _problem(
                "unknown-parent",
                child,
                f"{_what(child)} names {' and '.join(missing)}, not in Datadog "
                f"{_span(thresholds.grace_s)} after the pipeline's end",
            )


def _missing_parents(record: Record, stages: set[str], jobs: set[str]) -> list[str]:
    """The ids the child names that are not among those sent: ``["job_id X", ...]``."""
    missing = []
    if record.level == "step" and record.job_id and record.job_id not in jobs:
        missing.append(f"job_id {record.job_id}")
    if record.stage_id and record.stage_id not in stages:
        missing.append(f"stage_id {record.stage_id}")
    return missing


# -- helpers


def _problem(rule: Rule, node: Node, detail: str) -> Problem:
    return Problem(rule=rule, level=node.level, id=node.id, detail=detail)


def _order(problem: Problem) -> tuple[int, int, str]:
    level = LEVELS.index(problem.level) if problem.level in LEVELS else len(LEVELS)
    return (RULES.index(problem.rule), level, problem.id)


def _sent(copies: Iterable[Record]) -> bool:
    """Whether any copy reaches (or reached) Datadog: every fate but a dead letter."""
    return any(r.fate != "dead_lettered" for r in copies)


def _ids_sent(nodes: Iterable[Node]) -> set[str]:
    return {node.id for node in nodes if _sent(node.copies)}


def _first_received(copies: Iterable[Record]) -> float:
    return min(r.received_at for r in copies)


def _reasons(copies: Iterable[Record]) -> str:
    reasons = sorted({r.reason or "no reason" for r in copies})
    return ", ".join(reasons)


def _outside(child: Record, parent: Record, tolerance_s: float) -> str:
    """How the child sticks out of the parent ("" when it does not)."""
    start, parent_start = child.start, parent.start
    if start is not None and parent_start is not None and parent_start - start > tolerance_s:
        return f"starts {_span(parent_start - start)} before"
    end, parent_end = child.end, parent.end
    if end is not None and parent_end is not None and end - parent_end > tolerance_s:
        return f"ends {_span(end - parent_end)} after"
    return ""


def _differences(copies: list[Record]) -> str:
    parts = []
    for field, values in (
        ("status", {r.status for r in copies}),
        ("start", {r.start for r in copies}),
        ("end", {r.end for r in copies}),
    ):
        if len(values) > 1:
            parts.append(field)
    return "they differ in " + ", ".join(parts)


def _what(node: Node) -> str:
    return f"{node.level} {node.name!r} ({node.id})"


def _span(seconds: float) -> str:
    """A duration for people: 0.5 s, 45 s, 10 min, 12.5 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
