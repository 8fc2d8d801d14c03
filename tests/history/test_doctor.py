"""The doctor's rules: for each, a case it finds and a near miss it leaves alone.

Times are seconds after T0; the default thresholds are a 10-minute grace, a 1-second clock
tolerance and a 12-hour window for running pipelines.
"""

from __future__ import annotations

from relay.history.doctor import (
    RULES,
    Problem,
    Thresholds,
    counts_by_rule,
    examine,
    examine_all,
)
from relay.history.records import Record
from relay.history.tree import build, build_all

from .builders import T0, copy, job, pipeline, stage, step

HOUR = 3600.0


def problems(*records: Record, now: float, thresholds: Thresholds | None = None) -> list[Problem]:
    tree = build("p1", records)
    if thresholds is None:
        return examine(tree, now=T0 + now)
    return examine(tree, now=T0 + now, thresholds=thresholds)


def rules(*records: Record, now: float) -> list[tuple[str, str, str]]:
    return [(p.rule, p.level, p.id) for p in problems(*records, now=now)]


# -- orphan


def test_children_whose_pipeline_never_arrived_are_orphans_after_the_grace() -> None:
    """No pipeline event, 10 min and 1 s after the last child's end: each is an orphan."""
    found = problems(
        stage("s", 0, 60),
        job("j", 0, 60, stage_id="s"),
        step("x", 0, 60, job_id="j"),
        now=60 + 601,
    )
    assert [("orphan", "stage", "s"), ("orphan", "job", "j"), ("orphan", "step", "x")] == [
        (p.rule, p.level, p.id) for p in found
    ]
    assert (
        "job 'j' (j) names pipeline p1, whose pipeline event never arrived within 10 min "
        "of the job's end"
    ) == found[1].detail


def test_a_child_without_an_end_waits_from_its_arrival() -> None:
    """A job with no end, received at 100: an orphan only 10 min after that."""
    lost = job("j", 0, None, received=100)
    assert [] == rules(lost, now=100 + 599)
    [found] = problems(lost, now=100 + 601)
    assert found.detail.endswith("within 10 min of its arrival")


def test_within_the_grace_a_child_is_no_orphan_yet() -> None:
    """599 s after the job's end its pipeline may still come."""
    assert [] == rules(job("j", 0, 60), now=60 + 599)


def test_a_running_pipeline_event_is_enough_to_make_no_orphans() -> None:
    """The pipeline said it was running: its children are not orphans (if it never finishes,
    never-finished says so)."""
    assert [] == rules(pipeline(0, status="running"), job("j", 0, 60), now=60 + 700)


def test_children_of_a_dead_lettered_pipeline_are_orphans() -> None:
    """The pipeline arrived but was dead-lettered: Datadog has its children alone."""
    found = problems(
        pipeline(0, 60, fate="dead_lettered", reason="expired"), job("j", 0, 60), now=700
    )
    assert [("orphan", "j")] == [(p.rule, p.id) for p in found]
    assert "was dead-lettered (expired)" in found[0].detail


# -- pipeline-name-mismatch


def test_a_child_giving_another_pipeline_name_is_a_mismatch() -> None:
    """The job says its pipeline is "CI"; the pipeline is named "ci"."""
    found = problems(pipeline(), job("j", 0, 10, pipeline_name="CI"), now=200)
    assert [("pipeline-name-mismatch", "job", "j")] == [(p.rule, p.level, p.id) for p in found]
    assert "job 'j' (j) gives pipeline_name 'CI'; its pipeline is named 'ci'" == found[0].detail


def test_children_giving_the_pipelines_name_match() -> None:
    """Same name: nothing; without the pipeline's event, nothing to compare either."""
    assert [] == rules(pipeline(), job("j", 0, 10, pipeline_name="ci"), now=200)
    assert [] == rules(job("j", 0, 10, pipeline_name="CI"), now=20)


# -- outside-parent


def test_a_child_outside_its_pipeline_by_more_than_the_tolerance() -> None:
    """The pipeline ran 10-100; a job starting at 8.5 (1.5 s early) and one ending at 102
    (2 s late) stick out."""
    found = problems(pipeline(10, 100), job("early", 8.5, 50), job("late", 50, 102), now=200)
    assert [
        ("outside-parent", "early", "job 'early' (early) starts 1.5 s before its pipeline"),
        ("outside-parent", "late", "job 'late' (late) ends 2.0 s after its pipeline"),
    ] == [(p.rule, p.id, p.detail) for p in found]


def test_a_step_outside_its_job_inside_the_pipeline() -> None:
    """The step ends 5 s after its job, still within the pipeline: it sticks out of its job."""
    found = problems(
        pipeline(0, 100),
        job("j", 0, 50, name="build"),
        step("x", 10, 55, job_id="j"),
        now=200,
    )
    assert [("outside-parent", "step", "x")] == [(p.rule, p.level, p.id) for p in found]
    assert found[0].detail.endswith("ends 5.0 s after the job 'build' it belongs to")


def test_clock_skew_within_the_tolerance_is_not_outside() -> None:
    """0.9 s early and 0.9 s late are clock skew between hosts; a running pipeline has no end
    to be late for."""
    assert [] == rules(pipeline(10, 100), job("j", 9.1, 100.9), now=200)
    assert [] == rules(pipeline(10, status="running"), job("j", 10, 500), now=600)


# -- never-finished


def test_a_pipeline_running_past_the_window_never_finished() -> None:
    """Running since T0, 12 h and 1 s later, no finished event."""
    found = problems(pipeline(0, status="running"), now=12 * HOUR + 1)
    assert [("never-finished", "pipeline", "p1")] == [(p.rule, p.level, p.id) for p in found]
    assert (
        "pipeline 'ci' started 12.0 h ago; 1 running event(s) and no finished one arrived"
        == found[0].detail
    )


def test_a_running_pipeline_without_a_start_counts_from_its_arrival() -> None:
    """No start: the window runs from when the relay took the running event."""
    running = pipeline(None, status="running", received=HOUR)
    assert [] == rules(running, now=12 * HOUR + 10)
    assert [("never-finished", "pipeline", "p1")] == rules(running, now=13 * HOUR + 10)


def test_a_dead_lettered_finished_event_leaves_the_pipeline_running() -> None:
    """Datadog never got the end: the pipeline stays running there."""
    found = problems(
        pipeline(0, status="running"),
        pipeline(0, 100, fate="dead_lettered", reason="invalid"),
        now=13 * HOUR,
    )
    assert [("never-finished", "p1")] == [(p.rule, p.id) for p in found]
    assert found[0].detail.endswith("its finished event was dead-lettered (invalid)")


def test_a_pipeline_within_its_window_or_finished_is_fine() -> None:
    """11 h of running is allowed; a finished event ends it however late."""
    assert [] == rules(pipeline(0, status="running"), now=11 * HOUR)
    assert [] == rules(
        pipeline(0, status="running"), pipeline(0, 13 * HOUR, received=13 * HOUR), now=14 * HOUR
    )


# -- duplicate-finished


def test_a_pipeline_finished_twice_is_a_duplicate() -> None:
    """The same unique_id finished twice, once as error then as success (a rerun reusing it)."""
    first = pipeline(0, 100, status="error")
    found = problems(first, copy(first, status="success", end=200, received_at=201), now=300)
    assert [("duplicate-finished", "pipeline", "p1")] == [(p.rule, p.level, p.id) for p in found]
    assert (
        "pipeline 'ci' was sent finished 2 times with unique_id p1, without partial_retry "
        "(they differ in status, end)"
    ) == found[0].detail


def test_identical_finished_copies_are_a_duplicate_too() -> None:
    """The same event posted twice (a retried request) is named as such."""
    first = pipeline(0, 100)
    found = problems(first, copy(first, received_at=150), now=300)
    assert "(identical copies)" in found[0].detail


def test_running_then_finished_or_a_partial_retry_or_a_dead_letter_is_no_duplicate() -> None:
    """One finished copy and its running one; a second copy flagged partial_retry; a second
    copy that was dead-lettered (Datadog never got it)."""
    finished = pipeline(0, 100)
    assert [] == rules(pipeline(0, status="running"), finished, now=300)
    assert [] == rules(finished, copy(finished, partial_retry=True), now=300)
    assert [] == rules(finished, copy(finished, fate="dead_lettered"), now=300)


# -- unknown-parent


def test_children_naming_parents_that_never_arrived() -> None:
    """The pipeline ended at 100; 10 min and 1 s later, a job names stage id s9 and a step
    names job id j9, neither of which arrived."""
    found = problems(
        pipeline(0, 100),
        stage("s1", 0, 100),
        job("j1", 0, 50, stage_id="s9", stage_name="build"),
        step("x", 0, 10, job_id="j9", stage_id="s1"),
        now=100 + 601,
    )
    assert [("unknown-parent", "job", "j1"), ("unknown-parent", "step", "x")] == [
        (p.rule, p.level, p.id) for p in found
    ]
    assert "job 'j1' (j1) names stage_id s9, not in Datadog 10 min after the pipeline's end" == (
        found[0].detail
    )


def test_parents_that_arrived_or_may_still_arrive_are_not_unknown() -> None:
    """Parents present; a parent named by name only; within the grace; the pipeline still
    running: nothing."""
    present = [pipeline(0, 100), stage("s1", 0, 100), job("j1", 0, 50, stage_id="s1")]
    assert [] == rules(*present, step("x", 0, 10, job_id="j1"), now=800)
    assert [] == rules(pipeline(0, 100), job("j1", 0, 50, stage_name="build"), now=800)
    assert [] == rules(pipeline(0, 100), job("j1", 0, 50, stage_id="s9"), now=100 + 599)
    assert [] == rules(pipeline(0, status="running"), job("j1", 0, 50, stage_id="s9"), now=800)


def test_children_of_a_pipeline_datadog_never_got_are_orphans_not_unknown_parents() -> None:
    """The finished pipeline was dead-lettered: its job is an orphan, and no more than that."""
    dead = pipeline(0, 100, fate="dead_lettered", reason="expired")
    assert [("orphan", "job", "j1")] == rules(dead, job("j1", 0, 50, stage_id="s9"), now=800)


# -- across pipelines


def test_problems_come_in_rule_order_then_level_then_id() -> None:
    """The order is stable whatever the records' order."""
    found = problems(
        pipeline(0, 100),
        job("b", 0, 10, pipeline_name="x"),
        step("a", 0, 10, pipeline_name="x"),
        job("a", -5, 10),
        now=200,
    )
    assert [
        ("pipeline-name-mismatch", "job", "b"),
        ("pipeline-name-mismatch", "step", "a"),
        ("outside-parent", "job", "a"),
    ] == [(p.rule, p.level, p.id) for p in found]


def test_counts_by_rule_name_every_rule() -> None:
    """Every rule is counted, zero included, in the documented order."""
    trees = build_all(
        [
            pipeline(0, 100),
            job("j", 0, 10, pipeline_name="x"),
            job("k", 0, 10, pipeline_id="p2"),
            job("l", 0, 10, pipeline_id="p2"),
        ]
    )
    counts = counts_by_rule(examine_all(trees, now=T0 + 1000))
    assert list(RULES) == list(counts)
    assert {
        "orphan": 2,
        "pipeline-name-mismatch": 1,
        "outside-parent": 0,
        "never-finished": 0,
        "duplicate-finished": 0,
        "unknown-parent": 0,
    } == counts


def test_thresholds_are_parameters() -> None:
    """A shorter grace makes an orphan sooner; a wider tolerance forgives more skew."""
    orphan = job("j", 0, 60)
    assert [] == problems(orphan, now=120)
    assert ["orphan"] == [p.rule for p in problems(orphan, now=120, thresholds=Thresholds(30))]
    skewed = [pipeline(10, 100), job("j", 5, 100)]
    wide = Thresholds(clock_tolerance_s=10)
    assert [] == problems(*skewed, now=200, thresholds=wide)
