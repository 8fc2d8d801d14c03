"""The retry policy: exponential backoff with full jitter, floored by the upstream's wait."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.delivery.backoff import Backoff

POLICY = Backoff(initial_s=1.0, multiplier=2.0, max_s=60.0, max_wait_s=600.0)


@pytest.mark.parametrize(
    ("attempt", "uniform", "retry_after", "expected"),
    [
        # attempt 0: the window is initial_s; jitter picks a point in it
        (0, 1.0, None, 1.0),
        (0, 0.5, None, 0.5),
        (0, 0.0, None, 0.0),
        # the window doubles per attempt
        (1, 1.0, None, 2.0),
        (3, 0.5, None, 4.0),
        # and stops growing at max_s
        (6, 1.0, None, 60.0),
        (50, 1.0, None, 60.0),
        (10_000, 0.25, None, 15.0),
        # Retry-After is a floor: never retry before the upstream said
        (0, 0.1, 30.0, 30.0),
        # but does not shorten a longer jittered wait
        (6, 1.0, 5.0, 60.0),
        # and is obeyed only up to max_wait_s, however long the upstream asks for
        (0, 0.1, 600.0, 600.0),
        (0, 0.1, 86_000.0, 600.0),
    ],
)
def test_delay_table(
    attempt: int, uniform: float, retry_after: float | None, expected: float
) -> None:
    """delay = max(min(retry_after, max_wait_s), U * min(max_s, initial_s * multiplier**n))."""
    assert expected == POLICY.delay_for(attempt, retry_after, uniform=lambda: uniform)


@given(
    attempt=st.integers(min_value=0, max_value=100_000),
    u=st.floats(min_value=0.0, max_value=1.0),
    retry_after=st.none() | st.floats(min_value=0.0, max_value=1e9),
)
def test_delay_is_bounded(attempt: int, u: float, retry_after: float | None) -> None:
    """Whatever the attempt, a delay is between the capped floor and max(cap, capped floor)."""
    delay = POLICY.delay_for(attempt, retry_after, uniform=lambda: u)
    floor = min(retry_after or 0.0, POLICY.max_wait_s)
    assert floor <= delay <= max(POLICY.max_s, floor)


def test_default_jitter_spreads_delays() -> None:
    """With real randomness, many delays for one attempt are spread, not identical."""
    delays = {POLICY.delay_for(4) for _ in range(100)}
    assert len(delays) > 90
    assert all(0.0 <= d <= 16.0 for d in delays)
