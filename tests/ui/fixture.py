"""The pipeline the page's tests post, with the answers worked out by hand.

Pipeline ``web-app`` (error) runs from t=0 to t=100 s, ten minutes ago:

=====  ==========  ======  ================  ===========  =============================
level  id          status  runs (s)          queued (s)   under
=====  ==========  ======  ================  ===========  =============================
stage  st-build    success 0 - 40                         the pipeline
stage  st-test     error   40 - 100                       the pipeline
job    jb-compile  success 5 - 40            5 (from 0)   st-build
job    jb-unit     error   40 - 55                        st-test; pipeline_name wrong
job    jb-lint     success 60 - 100          20 (from 40) st-test
step   sp-checkout success 5 - 10                         jb-compile
step   sp-make     success 10 - 40                        jb-compile
step   sp-pytest   error   40 - 55                        jb-unit
step   sp-ruff     success 60 - 100                       jb-lint
=====  ==========  ======  ================  ===========  =============================

The critical path (``relay.history.critical_path``): the units are the three jobs (both
stages have jobs). The last to end is ``jb-lint`` (100). Its span begins when it began to
wait, 60 - 20 = 40; the unit that ended latest by 40 is ``jb-compile`` (40; ``jb-unit``
ended at 55, after). ``jb-compile``'s span begins at 5 - 5 = 0, the pipeline's start: the
walk stops. The path is ``jb-compile``, ``jb-lint``; the failed ``jb-unit`` is not on it
(were the queue times ignored, ``jb-lint`` would start at 60 and ``jb-unit``, ending at 55,
would wrongly join the path).

The one problem: ``jb-unit`` names its pipeline ``web-app-nightly`` (pipeline-name-mismatch).
Every child lies inside its pipeline and its parent, and every parent arrived.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from relay.testing.samples import event, rfc3339

PIPELINE_ID = "pl-web-app-1"
PIPELINE_NAME = "web-app"
CRITICAL = ("jb-compile", "jb-lint")
QUEUED = {"jb-compile": (0.0, 5.0), "jb-lint": (40.0, 60.0)}  # (from, until) in seconds
MISMATCHED_JOB = "jb-unit"
SPAN_S = 100.0


@dataclass(frozen=True)
class Bar:
    """What a bar of the waterfall must carry."""

    level: str
    id: str
    status: str
    critical: bool


BARS = (
    Bar("pipeline", PIPELINE_ID, "error", False),
    Bar("stage", "st-build", "success", False),
    Bar("stage", "st-test", "error", False),
    Bar("job", "jb-compile", "success", True),
    Bar("job", "jb-unit", "error", False),
    Bar("job", "jb-lint", "success", True),
    Bar("step", "sp-checkout", "success", False),
    Bar("step", "sp-make", "success", False),
    Bar("step", "sp-pytest", "error", False),
    Bar("step", "sp-ruff", "success", False),
)


def _at(base: float, offset_s: float) -> str:
    return rfc3339(datetime.fromtimestamp(base + offset_s, UTC))


def web_app(base: float | None = None) -> list[dict[str, Any]]:
    """The events of the table above, ``base`` (ten minutes ago by default) being t=0."""
    t0 = time.time() - 600 if base is None else base
    child = {"pipeline_unique_id": PIPELINE_ID, "pipeline_name": PIPELINE_NAME}

    def span(start: float, end: float) -> dict[str, str]:
        return {"start": _at(t0, start), "end": _at(t0, end)}

    def job(id_: str, stage: str, start: float, end: float, **more: Any) -> dict[str, Any]:
        named = {"id": id_, "name": id_.removeprefix("jb-"), "stage_id": stage}
        return event("job", **(child | named | span(start, end) | more))

    def step(id_: str, job_id: str, start: float, end: float, **more: Any) -> dict[str, Any]:
        named = {"id": id_, "name": id_.removeprefix("sp-"), "job_id": job_id}
        return event("step", **(child | named | span(start, end) | more))

    failed = {"status": "error", "error": {"message": "3 tests failed", "type": "TestFailure"}}
    return [
        event(
            "pipeline", unique_id=PIPELINE_ID, name=PIPELINE_NAME, status="error", **span(0, 100)
        ),
        event("stage", id="st-build", name="build", **child, **span(0, 40)),
        event("stage", id="st-test", name="test", status="error", **child, **span(40, 100)),
        job("jb-compile", "st-build", 5, 40, queue_time=5000),
        job("jb-unit", "st-test", 40, 55, **(failed | {"pipeline_name": "web-app-nightly"})),
        job("jb-lint", "st-test", 60, 100, queue_time=20000),
        step("sp-checkout", "jb-compile", 5, 10),
        step("sp-make", "jb-compile", 10, 40),
        step("sp-pytest", "jb-unit", 40, 55, status="error"),
        step("sp-ruff", "jb-lint", 60, 100),
    ]


def small(unique_id: str, name: str, status: str = "success") -> list[dict[str, Any]]:
    """A pipeline of one job, ending a minute ago."""
    t0 = time.time() - 180
    times = {"start": _at(t0, 0), "end": _at(t0, 120)}
    child = {"pipeline_unique_id": unique_id, "pipeline_name": name}
    return [
        event("pipeline", unique_id=unique_id, name=name, status=status, **times),
        event("job", id=f"{unique_id}-job", name="build", **child, **times),
    ]
