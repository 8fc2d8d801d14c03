"""The retry policy: exponential backoff with full jitter, floored by the upstream's word."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from relay.config import RetrySettings


@dataclass(frozen=True)
class Backoff:
    """How long to wait before retry number ``attempt`` (0 for the first retry).

    ``delay = max(min(retry_after, max_wait_s),
                  U(0, 1) * min(max_s, initial_s * multiplier ** attempt))``

    Full jitter spreads the retries of many relays over the whole window, so an intake
    that comes back is not hit by all of them at once; ``retry_after`` (from Retry-After or
    X-RateLimit-Reset) is a floor because the upstream said when it will take more, capped
    by ``max_wait_s`` so that no answer can hold a backlog past its 18-hour window.
    """

    initial_s: float = 1.0
    multiplier: float = 2.0
    max_s: float = 60.0
    max_wait_s: float = 600.0

    @classmethod
    def from_settings(cls, settings: RetrySettings) -> Backoff:
        return cls(
            settings.initial_backoff_s,
            settings.multiplier,
            settings.max_backoff_s,
            settings.max_wait_s,
        )

    def ceiling(self, attempt: int) -> float:
        """The largest delay for ``attempt``, before jitter."""
        # Past ~1000 doublings the float overflows; the cap has long been reached by then.
        exponent = min(attempt, 1000)
        try:
            return min(self.max_s, self.initial_s * self.multiplier**exponent)
        except OverflowError:
            return self.max_s

    def delay_for(
        self,
        attempt: int,
        retry_after: float | None = None,
        uniform: Callable[[], float] = random.random,
    ) -> float:
        delay = uniform() * self.ceiling(attempt)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_wait_s))
        return delay
