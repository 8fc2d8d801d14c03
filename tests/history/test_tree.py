"""Pipelines built from their records, the list page's summaries, and their JSON documents."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from relay.history.doctor import Thresholds
from relay.history.tree import build, build_all, pipeline_as_json, rfc3339, summaries_as_json
from relay.history.tree import summarise as summarise_records

from .builders import T0, copy, event, job, pipeline, stage, step

NOW = T0 + 1000.0  # past the default grace (10 min) of every event here


def sent(document: dict[str, object]) -> Any:
    """The document as a page receives it (strict JSON: no NaN, no infinity)."""
    return json.loads(json.dumps(document, allow_nan=False))


def test_jobs_hang_under_their_stage_by_id_else_by_name_else_under_the_pipeline() -> None:
    """A job names its stage by id (which wins over a wrong name), by name alone, or by
    neither (or a stage that is not there): it hangs under the pipeline."""
    tree = build(
        "p1",
        [
            pipeline(),
            stage("s1", 0, 50, name="build"),
            stage("s2", 50, 100, name="test"),
            job("by-id", 0, 10, stage_id="s1", stage_name="test"),
            job("by-name", 50, 60, stage_id="gone", stage_name="test"),
            job("loose", 0, 10, stage_name="nowhere"),
            job("bare", 0, 10),
        ],
    )
    [build_stage, test_stage] = tree.stages
    assert ["by-id"] == [j.id for j in build_stage.children]
    assert ["by-name"] == [j.id for j in test_stage.children]
    assert ["bare", "loose"] == [j.id for j in tree.loose_jobs]
    parents = {j.id: j.parent for j in tree.jobs}
    assert {"by-id": build_stage, "by-name": test_stage, "loose": None, "bare": None} == parents


def test_steps_hang_under_their_job_by_id_else_by_name_else_under_the_pipeline() -> None:
    """A step names its job by id, by name, or hangs under the pipeline."""
    tree = build(
        "p1",
        [
            job("j1", 0, 10, name="compile"),
            step("a", 0, 5, job_id="j1"),
            step("b", 5, 10, job_name="compile"),
            step("c", 0, 1, job_id="other", job_name="other"),
        ],
    )
    assert ["a", "b"] == [s.id for s in tree.jobs[0].children]
    assert ["c"] == [s.id for s in tree.loose_steps]


def test_of_jobs_sharing_a_name_a_step_goes_to_the_one_running_at_its_start() -> None:
    """Two jobs named test (a matrix): a step named by job_name alone goes to the one whose
    span (queue included) holds the step's start."""
    tree = build(
        "p1",
        [
            job("t1", 0, 10, name="test"),
            job("t2", 20, 30, name="test", queue_time_ms=5_000),
            step("s", 16, 18, job_name="test"),
        ],
    )
    assert ["s"] == [s.id for s in tree.jobs[1].children]


def test_children_are_in_start_order() -> None:
    """Each level is listed by start, unknown starts last."""
    tree = build("p1", [job("c", 30, 40), job("a", None, 40), job("b", 10, 40)])
    assert ["b", "c", "a"] == [j.id for j in tree.jobs]


def test_the_latest_finished_copy_is_shown_and_every_copy_kept() -> None:
    """A pipeline sent running then finished then running again (late) shows its finished
    copy; a job sent twice shows the later copy; every copy stays for the doctor."""
    running = pipeline(0, status="running", received=0)
    finished = pipeline(0, 100, status="error", received=101)
    late = pipeline(0, status="running", received=150)
    first = job("j", 0, 10, status="error", received=11)
    second = copy(first, status="success", received_at=12)
    tree = build("p1", [running, finished, late, first, second])
    assert tree.pipeline is not None
    assert finished is tree.pipeline.record
    assert [running, finished, late] == tree.pipeline.copies
    assert second is tree.jobs[0].record
    assert [first, second] == tree.jobs[0].copies


def test_without_its_event_a_pipeline_still_has_a_tree() -> None:
    """Children only: no pipeline node, status unknown, the name its children give most,
    times from its children."""
    tree = build(
        "p1",
        [
            job("a", 5, 10, pipeline_name="ci"),
            job("b", 0, 30, pipeline_name="ci"),
            job("c", 2, 3, pipeline_name="CI"),
        ],
    )
    assert tree.pipeline is None
    assert ("ci", "unknown") == (tree.name, tree.status)
    assert (T0, T0 + 30) == (tree.start, tree.end)


def test_build_keeps_only_the_pipelines_own_records_and_known_levels() -> None:
    """Records of another pipeline, and of a level that is none of the four, are left out."""
    tree = build(
        "p1",
        [
            pipeline(),
            job("mine", 0, 1),
            job("theirs", 0, 1, pipeline_id="p2"),
            event("x", "y", 0, 1),
        ],
    )
    assert ["mine"] == [j.id for j in tree.jobs]
    assert 3 == len(tree.records)


def test_build_all_makes_one_tree_per_pipeline_id_even_one_only_children_name() -> None:
    """p2 sent no pipeline event, only a job: it still has a tree."""
    trees = build_all([pipeline(), job("a", 0, 1), job("b", 0, 1, pipeline_id="p2")])
    assert ["p1", "p2"] == [t.unique_id for t in trees]


def test_summaries_are_newest_first_with_counts() -> None:
    """One summary per id, newest start first (received_at for one without any start),
    with the pipeline's name and status (unknown without its event), its jobs, its
    problems and its records counted by fate."""
    records = [
        pipeline(0, 100, id="old"),
        job("j1", 0, 50, pipeline_id="old"),
        job("j1", 0, 50, pipeline_id="old", fate="dead_lettered", reason="invalid"),
        job("j2", 50, 100, pipeline_id="old", pipeline_name="other"),
        job("k", 60, 70, pipeline_id="orphaned", pipeline_name="nightly"),
        pipeline(None, status="running", id="nostart", received=150, fate="pending"),
    ]
    summaries = summarise_records(records, now=NOW)
    assert ["nostart", "orphaned", "old"] == [s.unique_id for s in summaries]
    nostart, orphaned, old = summaries
    assert ("ci", "success", T0, T0 + 100, 100.0) == (
        old.name,
        old.status,
        old.start,
        old.end,
        old.duration_s,
    )
    assert 2 == old.jobs
    assert 1 == old.problems  # j2's pipeline_name
    expected_fates = {"pending": 0, "delivered": 3, "dead_lettered": 1, "not_sent": 0}
    assert expected_fates == old.fates
    assert ("nightly", "unknown", 1) == (orphaned.name, orphaned.status, orphaned.problems)
    assert (None, None) == (nostart.start, nostart.duration_s)
    assert T0 + 150 == nostart.received_at


def test_summary_problems_follow_the_thresholds() -> None:
    """With a grace longer than the wait so far, a job without its pipeline is no orphan yet."""
    records = [job("k", 60, 70, pipeline_name="nightly")]
    [summary] = summarise_records(records, now=NOW, thresholds=Thresholds(grace_s=3600))
    assert 0 == summary.problems


def test_the_list_document() -> None:
    """GET /ui/pipelines.json: {"pipelines": [...]}, times as RFC3339 and epoch seconds."""
    summaries = summarise_records([pipeline(0, 90), job("j", 0, 90)], now=NOW)
    document = sent(summaries_as_json(summaries))
    expected = {
        "pipelines": [
            {
                "unique_id": "p1",
                "name": "ci",
                "status": "success",
                "start": "2024-05-01T10:00:00.000Z",
                "start_s": T0,
                "end": "2024-05-01T10:01:30.000Z",
                "end_s": T0 + 90,
                "duration_s": 90.0,
                "jobs": 1,
                "problems": 0,
                "fates": {"pending": 0, "delivered": 2, "dead_lettered": 0, "not_sent": 0},
                "received_at": "2024-05-01T10:01:31.000Z",
                "received_at_s": T0 + 91,
            }
        ]
    }
    assert expected == document


def test_the_pipeline_document_nests_the_tree_and_marks_the_critical_path() -> None:
    """GET /ui/pipelines/{unique_id}.json: the pipeline, stages holding jobs holding steps,
    jobs and steps under nothing, the critical path's ids, and the problems."""
    tree = build(
        "p1",
        [
            pipeline(0, 60),
            stage("s", 0, 60, name="build"),
            job("fast", 0, 10, stage_id="s"),
            job("slow", 0, 60, stage_id="s", queue_time_ms=0),
            step("make", 0, 60, job_id="slow"),
            job("stray", 5, 6, pipeline_name="other"),
            step("lost", 1, 2, job_id="nope"),
        ],
    )
    document = sent(pipeline_as_json(tree, now=NOW))
    assert ["slow"] == document["critical_path"]
    assert [
        {
            "rule": "pipeline-name-mismatch",
            "level": "job",
            "id": "stray",
            "detail": "job 'stray' (stray) gives pipeline_name 'other'; its pipeline is named 'ci'",
        },
        {
            "rule": "unknown-parent",
            "level": "step",
            "id": "lost",
            "detail": "step 'lost' (lost) names job_id nope, not in Datadog "
            "10 min after the pipeline's end",
        },
    ] == document["problems"]
    [build_stage] = document["stages"]
    assert ["fast", "slow"] == [j["id"] for j in build_stage["jobs"]]
    assert [False, True] == [j["critical"] for j in build_stage["jobs"]]
    assert ["make"] == [s["id"] for s in build_stage["jobs"][1]["steps"]]
    assert ["stray"] == [j["id"] for j in document["jobs"]]
    assert ["lost"] == [s["id"] for s in document["steps"]]


def test_a_node_in_the_pipeline_document() -> None:
    """Each node: level, id, name, status, times both ways, queue time, url, error, fate,
    reason, critical, and how many copies arrived."""
    tree = build(
        "p1",
        [
            pipeline(0, 30, status="error"),
            job(
                "j",
                10,
                30,
                status="error",
                queue_time_ms=2500,
                fate="dead_lettered",
                reason="invalid",
            ),
        ],
    )
    document = sent(pipeline_as_json(tree, now=NOW))
    [node] = document["jobs"]
    assert {
        "level": "job",
        "id": "j",
        "name": "j",
        "status": "error",
        "start": "2024-05-01T10:00:10.000Z",
        "start_s": T0 + 10,
        "end": "2024-05-01T10:00:30.000Z",
        "end_s": T0 + 30,
        "duration_s": 20.0,
        "queue_time_ms": 2500,
        "url": "https://ci.example/j",
        "error": "boom",
        "fate": "dead_lettered",
        "reason": "invalid",
        "critical": True,
        "copies": 1,
        "steps": [],
    } == node
    assert "2024-05-01T10:00:00.000Z" == document["start"]
    assert document["pipeline"] is not None


def test_the_pipeline_document_of_a_pipeline_that_never_arrived() -> None:
    """No pipeline event: "pipeline" is null, the status unknown."""
    document = sent(pipeline_as_json(build("p1", [job("j", 0, 1)]), now=NOW))
    assert (None, "unknown", "ci") == (document["pipeline"], document["status"], document["name"])


@pytest.mark.parametrize(
    "offset_s",
    [0.0, 0.25, 0.0004, 0.9996, 59.9999, 86_399.9995, -T0, -T0 - 0.5, 30 * 365 * 86_400.123],
)
def test_rfc3339_is_utc_to_the_millisecond_as_datetime_gives_it(offset_s: float) -> None:
    """Epoch seconds become RFC3339 in UTC, rounded to the millisecond (a rounding that
    carries into the next second, day or year included), as datetime formats them."""
    moment = T0 + offset_s
    rounded = datetime.fromtimestamp(round(moment * 1000) / 1000, UTC)
    expected = rounded.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert expected == rfc3339(moment)


def test_rfc3339_of_no_time_or_an_impossible_one_is_none() -> None:
    """None, a year past 9999, NaN: no string (the epoch number is still in the document)."""
    assert [None, None, None] == [rfc3339(None), rfc3339(1e13), rfc3339(math.nan)]
    assert "2024-05-01T10:00:00.250Z" == rfc3339(T0 + 0.25)
