"""The critical path, on pipelines whose answer is worked out by hand in each docstring.

Times are seconds after T0; a job's span runs from its start minus its queue time to its end.
"""

from __future__ import annotations

from relay.history.critical_path import critical_nodes, critical_path
from relay.history.records import Record
from relay.history.tree import build

from .builders import job, pipeline, stage, step


def path(*records: Record) -> list[str]:
    return critical_path(build("p1", records))


def test_sequential_stages_without_jobs_are_all_on_the_path() -> None:
    """Stages a 0-10, b 10-25, c 25-40 in a pipeline 0-40, no jobs: every stage is a unit.
    c ends last (40); c began at 25, and b ended at 25 (<= 25): b; b began at 10, a ended
    at 10: a; a began at 0, the pipeline's start: stop. Path a, b, c."""
    assert ["a", "b", "c"] == path(
        pipeline(0, 40),
        stage("a", 0, 10),
        stage("b", 10, 25),
        stage("c", 25, 40),
    )


def test_of_parallel_jobs_the_longest_is_on_the_path() -> None:
    """Stage build has jobs short 0-10 and long 0-30; stage test has job check 30-50.
    check ends last (50); it began at 30; of the others, long ended at 30 (<= 30) and short
    at 10: long, the latest; long began at 0, the pipeline's start: stop. Path long, check;
    short is not on it (shortening it would not shorten the pipeline)."""
    assert ["long", "check"] == path(
        pipeline(0, 50),
        stage("build", 0, 30),
        stage("test", 30, 50),
        job("short", 0, 10, stage_id="build"),
        job("long", 0, 30, stage_id="build"),
        job("check", 30, 50, stage_id="test"),
    )


def test_a_job_queued_behind_another_waited_for_it() -> None:
    """deploy ran 100-120 after 40 s in the queue: its span began at 60. compile ended at
    60, lint at 80 (lint ended after deploy began to wait, so deploy did not wait for it):
    compile, the latest ending by 60. compile began at 0: stop. Path compile, deploy; the
    queue time counts as part of deploy's span."""
    assert ["compile", "deploy"] == path(
        pipeline(0, 120),
        job("compile", 0, 60),
        job("lint", 0, 80),
        job("deploy", 100, 120, queue_time_ms=40_000),
    )


def test_without_its_queue_time_the_path_would_be_different() -> None:
    """The same jobs, deploy with no queue time: its span begins at 100, and lint (ended 80)
    is the latest ending by then; lint began at 0: stop. Path lint, deploy."""
    assert ["lint", "deploy"] == path(
        pipeline(0, 120),
        job("compile", 0, 60),
        job("lint", 0, 80),
        job("deploy", 100, 120),
    )


def test_a_pipeline_without_jobs_or_stages_has_an_empty_path() -> None:
    """No unit at all: nothing set the duration but the pipeline itself. Path empty."""
    assert [] == path(pipeline(0, 40))


def test_a_pipeline_without_jobs_has_its_stages_on_the_path() -> None:
    """Stages a 0-30 and b 5-20 (parallel), no jobs: a ends last (30) and began at 0, the
    pipeline's start: stop. Path a."""
    assert ["a"] == path(pipeline(0, 30), stage("a", 0, 30), stage("b", 5, 20))


def test_jobs_without_an_end_are_not_on_the_path() -> None:
    """hung started at 40 and never ended; it is no unit. Of the others, test ends last (60),
    began at 30; build ended at 30: build; build began at 0: stop. Path build, test."""
    assert ["build", "test"] == path(
        pipeline(0, 60),
        job("build", 0, 30),
        job("test", 30, 60),
        job("hung", 40, None),
    )


def test_a_unit_without_a_start_ends_the_walk() -> None:
    """test ends last (60) but has no start: where it began is unknown, so the walk stops
    there. Path test."""
    assert ["test"] == path(pipeline(0, 60), job("build", 0, 30), job("test", None, 60))


def test_steps_are_never_on_the_path() -> None:
    """build 0-30 holds steps checkout 0-5 and make 5-30; the units are jobs only. Path
    build."""
    assert ["build"] == path(
        pipeline(0, 30),
        job("build", 0, 30),
        step("checkout", 0, 5, job_id="build"),
        step("make", 5, 30, job_id="build"),
    )


def test_a_gap_is_crossed_to_the_last_work_before_it() -> None:
    """Nothing ran from 10 to 50 (a manual gate): a ran 0-10, b 50-70. b began at 50; the latest
    ending by then is a (10); a began at 0: stop. Path a, b."""
    assert ["a", "b"] == path(pipeline(0, 70), job("a", 0, 10), job("b", 50, 70))


def test_the_walk_stops_at_the_pipelines_start() -> None:
    """The pipeline started at 20; early (0-10) ended before it, late ran 20-40. late began
    at 20, the pipeline's start: stop, early is not reached. Path late."""
    assert ["late"] == path(pipeline(20, 40), job("early", 0, 10), job("late", 20, 40))


def test_without_a_pipeline_event_the_walk_goes_on_while_units_remain() -> None:
    """No pipeline event, so no start to stop at: late (20-40) began at 20, early ended at 10
    (<= 20): early; early began at 0 and nothing ended by then: stop. Path early, late."""
    assert ["early", "late"] == path(job("early", 0, 10), job("late", 20, 40))


def test_ties_go_to_the_longer_unit_then_the_smaller_id() -> None:
    """x 10-30 and y 0-30 end together, z 0-30 too: y and z began earlier (0) than x (10);
    of y and z, y has the smaller id. y began at 0, the pipeline's start: stop. Path y."""
    assert ["y"] == path(pipeline(0, 30), job("x", 10, 30), job("z", 0, 30), job("y", 0, 30))


def test_a_stage_whose_jobs_are_units_is_not_itself_a_unit() -> None:
    """Stage s (0-30) holds job j (0-20), stage t (30-40) has no job: the units are j and t.
    t ends last (40), began at 30; j ended at 20: j; j began at 0: stop. Path j, t."""
    assert ["j", "t"] == path(
        pipeline(0, 40),
        stage("s", 0, 30),
        stage("t", 30, 40),
        job("j", 0, 20, stage_id="s"),
    )


def test_clock_noise_under_a_millisecond_keeps_the_job_waited_for() -> None:
    """b starts 0.4 ms before a ends (two runners' clocks): a still counts as ended by b's
    start. Path a, b."""
    assert ["a", "b"] == path(pipeline(0, 20), job("a", 0, 10.0004), job("b", 10, 20))


def test_the_nodes_are_the_trees_own() -> None:
    """critical_nodes gives the tree's nodes, so a page can mark them."""
    tree = build("p1", [pipeline(0, 10), job("j", 0, 10)])
    assert [tree.jobs[0]] == critical_nodes(tree)
