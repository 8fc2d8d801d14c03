"""The critical path of a pipeline: the chain of work that set its duration.

The events say when each piece of work waited and ran, not what it waited for (the model's
``dependencies`` are not kept), so the path is read from the times, walking back from the
end:

1. The *units* are the jobs, and the stages that have no job (a provider without jobs, or
   a stage whose jobs never arrived), that have an end. A unit *spans* from its start minus
   its queue time (``start - queue_time_ms / 1000``: it waited, then ran) to its end. Jobs
   without an end are not units; steps are never units (they run inside their job, whose
   span covers them; the waterfall shows which step took the time).
2. The path's last unit is the one that ended last.
3. From the moment the current unit's span began, the previous unit is the one, not yet on
   the path, that ended latest at or before that moment (within a millisecond): the work
   it waited for, or, after a gap, the last work that was still going on.
4. The walk stops when the current unit's span begins at or before the pipeline's start
   (its own event's start; without that event, it goes on until no unit is left), when
   no unit ended by then, or when the current unit has no start.

Ties between units that end at the same moment go to the one whose span began earlier
(the longer one), then to the smaller id. The path is returned in time order, first unit
first. A pipeline with no unit has an empty path.
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.history.tree import Node, Pipeline

# Times are epoch seconds from RFC3339 strings with at most millisecond precision in
# practice; a unit that ends within this of a moment ended "at" it.
EPSILON_S = 0.001


def critical_path(pipeline: Pipeline) -> list[str]:
    """The ids of the units on the critical path, first unit first."""
    return [node.id for node in critical_nodes(pipeline)]


def critical_nodes(pipeline: Pipeline) -> list[Node]:
    """The units on the critical path (jobs, or stages without jobs), first unit first."""
    units = sorted(_units(pipeline), key=_latest_first)
    if not units:
        return []
    negated_ends = [-_end(unit) for unit in units]  # ascending, for bisect
    own = pipeline.pipeline
    floor = own.start if own is not None else None
    chosen = [0]
    taken = {0}
    while True:
        moment = units[chosen[-1]].queued_from
        if moment is None or (floor is not None and moment <= floor + EPSILON_S):
            break
        found = _latest_ending_by(negated_ends, moment, taken)
        if found is None:
            break
        chosen.append(found)
        taken.add(found)
    return [units[index] for index in reversed(chosen)]


def _units(pipeline: Pipeline) -> list[Node]:
    """Jobs with an end, and stages with an end none of whose jobs is a unit."""
    jobs = [job for job in pipeline.jobs if job.end is not None]
    with_jobs = {id(job.parent) for job in jobs if job.parent is not None}
    stages = [s for s in pipeline.stages if s.end is not None and id(s) not in with_jobs]
    return jobs + stages


def _latest_first(unit: Node) -> tuple[float, float, str]:
    """Latest end first; then the earliest span start (unknown last); then the id."""
    began = unit.queued_from
    return (-_end(unit), math.inf if began is None else began, unit.id)


def _end(unit: Node) -> float:
    end = unit.end
    if end is None:  # units are chosen for their end
        raise ValueError(f"{unit.level} {unit.id} has no end")
    return end


def _latest_ending_by(negated_ends: list[float], moment: float, taken: set[int]) -> int | None:
    """The index of the first unit (latest end first) ending by ``moment`` and not taken."""
    index = bisect.bisect_left(negated_ends, -(moment + EPSILON_S))
    while index in taken:
        index += 1
    return index if index < len(negated_ends) else None
