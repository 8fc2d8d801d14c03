"""Pipelines as trees of their events, and the list of recent pipelines (``GET /ui``).

``build(unique_id, records)`` makes the tree of one pipeline: its own event (``None`` when it
never arrived: the tree still exists, its name and status taken from its children or
unknown), its stages, their jobs, the jobs' steps. A job hangs under the stage its
``stage_id`` names, else the stage its ``stage_name`` names, else directly under the
pipeline; a step under the job its ``job_id`` names, else its ``job_name``, else directly
under the pipeline. Several records of one level and id (a ``running`` then a finished
pipeline, a resent job) make one node: it shows the latest finished copy (by
``received_at``, then arrival order), else the latest one, and keeps every copy for the
doctor (``relay.history.doctor``). Records of a level outside ``LEVELS`` are left out.

``summarise(records, now=...)`` gives the list page one ``PipelineSummary`` per pipeline id
seen, newest first; ``summaries_as_json`` and ``pipeline_as_json`` give the JSON documents
of ``GET /ui/pipelines.json`` and ``GET /ui/pipelines/{unique_id}.json``.

The documents (every key always present, ``null`` where unknown)::

    pipelines.json   {"pipelines": [summary, ...]}
    summary          {"unique_id", "name", "status", TIMES, "jobs", "problems",
                      "fates": {"pending", "delivered", "dead_lettered", "not_sent"},
                      "received_at", "received_at_s"}
    {unique_id}.json {"unique_id", "name", "status", TIMES,
                      "pipeline": node | null,
                      "stages": [node + {"jobs": [node + {"steps": [node]}]}],
                      "jobs": [jobs under no stage], "steps": [steps under no job],
                      "critical_path": [id, ...], "problems": [{"rule", "level", "id", "detail"}]}
    node             {"level", "id", "name", "status", TIMES, "queue_time_ms", "url", "error",
                      "fate", "reason", "critical", "copies"}
    TIMES            "start", "start_s", "end", "end_s", "duration_s"

The top-level name, status and times are the pipeline's; without its event, the name its
children give most, ``unknown``, and the span of its children. ``copies`` is how many
events of that level and id arrived.

Times in the JSON documents come twice: ``start`` / ``end`` as RFC3339 strings in UTC with
milliseconds (``2024-05-01T10:00:00.000Z``, for display), and ``start_s`` / ``end_s`` as
epoch seconds (numbers, for a script to place bars on a time axis); each is ``null`` when
unknown. ``duration_s`` is ``end_s - start_s`` (``null`` unless both are known). A job
waited ``queue_time_ms`` before its ``start_s``: its queued part begins at
``start_s - queue_time_ms / 1000``.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import get_args

from relay.history import critical_path, doctor
from relay.history.records import LEVELS, Fate, Record

FATES: tuple[str, ...] = get_args(Fate)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
JsonObject = dict[str, object]
# What a child names as its parent: (id, name), either possibly None.
_Reference = Callable[[Record], tuple[str | None, str | None]]


@dataclass(eq=False, slots=True)
class Node:
    """One pipeline, stage, job or step: the copy shown, every copy, and what hangs under it.

    ``parent`` is the stage (of a job) or job (of a step) it hangs under; ``None`` under the
    pipeline itself.
    """

    record: Record
    copies: list[Record]
    children: list[Node] = field(default_factory=list)
    parent: Node | None = None

    @property
    def level(self) -> str:
        return self.record.level

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def start(self) -> float | None:
        return self.record.start

    @property
    def end(self) -> float | None:
        return self.record.end

    @property
    def queued_from(self) -> float | None:
        """When it began to wait: its start minus its queue time (its start without one)."""
        start, queue_ms = self.record.start, self.record.queue_time_ms
        if start is None or not queue_ms:
            return start
        return start - queue_ms / 1000.0


@dataclass(eq=False, slots=True)
class Pipeline:
    """The tree of one pipeline id, in start order at every level.

    ``stages`` hold their jobs as children, jobs their steps. ``jobs`` and ``steps`` list every
    job and step; ``loose_jobs`` and ``loose_steps`` those that hang directly under the
    pipeline (no stage, no job found for them). ``records`` is every record of the id.
    """

    unique_id: str
    pipeline: Node | None
    stages: list[Node]
    jobs: list[Node]
    steps: list[Node]
    loose_jobs: list[Node]
    loose_steps: list[Node]
    records: list[Record]

    def children(self) -> Iterator[Node]:
        """Every stage, job and step."""
        yield from self.stages
        yield from self.jobs
        yield from self.steps

    @property
    def name(self) -> str | None:
        """The pipeline's name, else the ``pipeline_name`` its children give most often."""
        if self.pipeline is not None:
            return self.pipeline.name
        named = Counter(c.record.pipeline_name for c in self.children() if c.record.pipeline_name)
        return named.most_common(1)[0][0] if named else None

    @property
    def status(self) -> str:
        return self.pipeline.status if self.pipeline is not None else "unknown"

    @property
    def start(self) -> float | None:
        """The pipeline's start; without its event, the earliest start of its children."""
        if self.pipeline is not None:
            return self.pipeline.start
        return min((c.start for c in self.children() if c.start is not None), default=None)

    @property
    def end(self) -> float | None:
        """The pipeline's end; without its event, the latest end of its children."""
        if self.pipeline is not None:
            return self.pipeline.end
        return max((c.end for c in self.children() if c.end is not None), default=None)

    @property
    def received_at(self) -> float:
        """When the relay took the first of its records."""
        return min((r.received_at for r in self.records), default=0.0)


@dataclass(frozen=True, slots=True)
class PipelineSummary:
    """One line of the list page. ``fates`` counts the pipeline's records by fate."""

    unique_id: str
    name: str | None
    status: str
    start: float | None
    end: float | None
    duration_s: float | None
    jobs: int
    problems: int
    fates: dict[str, int]
    received_at: float


def build(unique_id: str, records: Iterable[Record]) -> Pipeline:
    """The tree of pipeline ``unique_id`` from its records (records of others are ignored)."""
    return _build(unique_id, [r for r in records if r.pipeline_id == unique_id])


def build_all(records: Iterable[Record]) -> list[Pipeline]:
    """One tree per pipeline id seen among the records (ids only children name included)."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(record.pipeline_id, []).append(record)
    return [_build(unique_id, mine) for unique_id, mine in groups.items()]


def summarise(
    records: Iterable[Record],
    *,
    now: float,
    thresholds: doctor.Thresholds = doctor.DEFAULT_THRESHOLDS,
) -> list[PipelineSummary]:
    """One summary per pipeline id seen, newest first (by start, else by ``received_at``)."""
    pipelines = build_all(records)
    summaries = [_summary(p, doctor.examine(p, now=now, thresholds=thresholds)) for p in pipelines]
    return sorted(summaries, key=_newest_first)


def summaries_as_json(summaries: Sequence[PipelineSummary]) -> JsonObject:
    """The document of ``GET /ui/pipelines.json``: ``{"pipelines": [...]}``, in the given order."""
    return {"pipelines": [_summary_json(s) for s in summaries]}


def pipeline_as_json(
    pipeline: Pipeline,
    *,
    now: float,
    thresholds: doctor.Thresholds = doctor.DEFAULT_THRESHOLDS,
) -> JsonObject:
    """The document of ``GET /ui/pipelines/{unique_id}.json``: the tree, its critical path
    (ids in time order; each node says ``critical``) and its problems."""
    critical = critical_path.critical_nodes(pipeline)
    on_path = {id(node) for node in critical}
    problems = doctor.examine(pipeline, now=now, thresholds=thresholds)
    return {
        "unique_id": pipeline.unique_id,
        "name": pipeline.name,
        "status": pipeline.status,
        **_times(pipeline.start, pipeline.end),
        "pipeline": None if pipeline.pipeline is None else _node_json(pipeline.pipeline, on_path),
        "stages": [_node_json(stage, on_path) for stage in pipeline.stages],
        "jobs": [_node_json(job, on_path) for job in pipeline.loose_jobs],
        "steps": [_node_json(step, on_path) for step in pipeline.loose_steps],
        "critical_path": [node.id for node in critical],
        "problems": [problem_json(p) for p in problems],
    }


def problem_json(problem: doctor.Problem) -> JsonObject:
    """``{"rule", "level", "id", "detail"}``."""
    return {
        "rule": problem.rule,
        "level": problem.level,
        "id": problem.id,
        "detail": problem.detail,
    }


def rfc3339(epoch_s: float | None) -> str | None:
    """``2024-05-01T10:00:00.000Z`` (UTC, rounded to the millisecond); ``None`` for ``None``
    and for a time no RFC3339 date can hold (outside years 1 to 9999, not a number)."""
    if epoch_s is None:
        return None
    try:
        return _stamp(epoch_s)
    except (ValueError, OverflowError):
        return None


# A pipeline's times recur (a step ends as the next one starts): formatted once each.
@functools.lru_cache(maxsize=8192)
def _stamp(epoch_s: float) -> str:
    seconds, millis = divmod(round(epoch_s * 1000), 1000)
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{_day(days)}T{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


@functools.lru_cache(maxsize=64)
def _day(days_since_epoch: int) -> str:
    """``2024-05-01``: the date so many days after 1970-01-01 (a few days recur, cached)."""
    return date.fromordinal(_EPOCH_ORDINAL + days_since_epoch).isoformat()


# -- building


def _build(unique_id: str, records: list[Record]) -> Pipeline:
    """The tree of records that all name ``unique_id`` as their pipeline."""
    by_level: dict[str, list[Record]] = {level: [] for level in LEVELS}
    for record in records:
        if record.level in by_level:
            by_level[record.level].append(record)
    own = [r for r in by_level["pipeline"] if r.id == unique_id]
    pipelines = _nodes(own)
    stages, jobs, steps = (_nodes(by_level[level]) for level in ("stage", "job", "step"))
    loose_jobs = _attach(jobs, stages, lambda r: (r.stage_id, r.stage_name))
    loose_steps = _attach(steps, jobs, lambda r: (r.job_id, r.job_name))
    return Pipeline(
        unique_id=unique_id,
        pipeline=pipelines[0] if pipelines else None,
        stages=stages,
        jobs=jobs,
        steps=steps,
        loose_jobs=loose_jobs,
        loose_steps=loose_steps,
        records=records,
    )


def _nodes(records: list[Record]) -> list[Node]:
    """One node per id, in display order."""
    copies: dict[str, list[Record]] = {}
    for record in records:
        copies.setdefault(record.id, []).append(record)
    nodes = [Node(record=_shown(group), copies=group) for group in copies.values()]
    return sorted(nodes, key=_display_order)


def _shown(copies: Sequence[Record]) -> Record:
    """The copy to show: the latest finished one, else the latest (ties: the last received)."""
    if len(copies) == 1:
        return copies[0]
    ranked = max(
        enumerate(copies), key=lambda ic: (ic[1].status != "running", ic[1].received_at, ic[0])
    )
    return ranked[1]


def _display_order(node: Node) -> tuple[bool, float, str, str]:
    """By start (unknown starts last), then name, then id."""
    record = node.record
    start = record.start
    return (start is None, 0.0 if start is None else start, record.name or "", record.id)


def _attach(
    children: list[Node],
    parents: list[Node],
    reference: _Reference,
) -> list[Node]:
    """Hang each child under the parent its reference names (by id, else by name); return the
    children that found none, which hang under the pipeline."""
    by_id = {node.id: node for node in parents}
    by_name: dict[str, list[Node]] = {}
    for node in parents:
        by_name.setdefault(node.name, []).append(node)
    loose: list[Node] = []
    for child in children:
        parent_id, parent_name = reference(child.record)
        parent = by_id.get(parent_id) if parent_id else None
        if parent is None and parent_name:
            parent = _by_name(by_name.get(parent_name, []), child)
        if parent is None:
            loose.append(child)
        else:
            child.parent = parent
            parent.children.append(child)
    return loose


def _by_name(candidates: list[Node], child: Node) -> Node | None:
    """Of the parents bearing the name, the one whose span holds the child's start (the first
    in display order when none or several do)."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    start = child.start
    if start is not None:
        for parent in candidates:
            if _holds(parent, start):
                return parent
    return candidates[0]


def _holds(parent: Node, moment: float) -> bool:
    begin, end = parent.queued_from, parent.end
    return begin is not None and end is not None and begin <= moment <= end


# -- summaries and JSON


def _summary(pipeline: Pipeline, problems: list[doctor.Problem]) -> PipelineSummary:
    start, end = pipeline.start, pipeline.end
    fates = dict.fromkeys(FATES, 0)
    fates.update(Counter(r.fate for r in pipeline.records))
    return PipelineSummary(
        unique_id=pipeline.unique_id,
        name=pipeline.name,
        status=pipeline.status,
        start=start,
        end=end,
        duration_s=_duration(start, end),
        jobs=len(pipeline.jobs),
        problems=len(problems),
        fates=fates,
        received_at=pipeline.received_at,
    )


def _newest_first(summary: PipelineSummary) -> tuple[float, str]:
    moment = summary.start if summary.start is not None else summary.received_at
    return (-moment, summary.unique_id)


def _duration(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 3)


def _times(start: float | None, end: float | None) -> JsonObject:
    return {
        "start": rfc3339(start),
        "start_s": start,
        "end": rfc3339(end),
        "end_s": end,
        "duration_s": _duration(start, end),
    }


def _summary_json(summary: PipelineSummary) -> JsonObject:
    return {
        "unique_id": summary.unique_id,
        "name": summary.name,
        "status": summary.status,
        **_times(summary.start, summary.end),
        "jobs": summary.jobs,
        "problems": summary.problems,
        "fates": dict(summary.fates),
        "received_at": rfc3339(summary.received_at),
        "received_at_s": summary.received_at,
    }


def _node_json(node: Node, on_path: set[int]) -> JsonObject:
    record = node.record
    start, end = record.start, record.end
    document: JsonObject = {
        "level": record.level,
        "id": record.id,
        "name": record.name,
        "status": record.status,
        "start": rfc3339(start),
        "start_s": start,
        "end": rfc3339(end),
        "end_s": end,
        "duration_s": _duration(start, end),
        "queue_time_ms": record.queue_time_ms,
        "url": record.url,
        "error": record.error,
        "fate": record.fate,
        "reason": record.reason,
        "critical": id(node) in on_path,
        "copies": len(node.copies),
    }
    if record.level == "stage":
        document["jobs"] = [_node_json(job, on_path) for job in node.children]
    elif record.level == "job":
        document["steps"] = [_node_json(step, on_path) for step in node.children]
    return document
