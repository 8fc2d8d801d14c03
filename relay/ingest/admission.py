"""How many bytes of request bodies the relay parses, validates and stores at once.

Parsing a body builds objects several times its size (a 0.5 MB 1000-event body peaks near
8 MB), and bodies above ``PARSE_INLINE_MAX_BYTES`` are parsed in threads side by side, so
memory would grow with the number of runners posting at once. ``ParseBudget`` bounds it:
a body takes its size from the budget before it is parsed and gives it back once stored.
A body that does not fit waits, first come first served, for at most ``wait_s``; then the
runner gets 503 with ``Retry-After``. A body larger than the whole budget goes alone.
"""

from __future__ import annotations

import asyncio
from collections import deque

from relay.contract.exceptions import RelayError


class Busy(RelayError):
    """No room in the budget within the wait: the runner should come back later."""


class ParseBudget:
    """A budget of body bytes in the parse-validate-store stretch; see the module docstring."""

    def __init__(self, max_bytes: int, wait_s: float) -> None:
        self.max_bytes = max_bytes
        self.wait_s = wait_s
        self.held = 0  # bytes of the bodies between acquire and release
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def take(self, size: int) -> bool:
        """Take ``size`` bytes now if they fit and nobody waits; False otherwise."""
        if self._waiters or not self._fits(size):
            return False
        self.held += size
        return True

    async def acquire(self, size: int) -> None:
        """Take ``size`` bytes, waiting in turn for at most ``wait_s``; Busy past that."""
        if self.take(size):
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, granted)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self.wait_s):
                await granted
        except BaseException as exc:
            if granted.done() and not granted.cancelled():
                self.release(size)  # granted just as the wait ended: give it back
            else:
                self._waiters.remove(entry)
                self._grant()  # a smaller body behind this one may fit now
            if isinstance(exc, TimeoutError):
                raise Busy(
                    f"the relay is busy parsing other bodies ({self.held} bytes, its bound "
                    f"server.max_parsing_bytes is {self.max_bytes}); retry later"
                ) from None
            raise

    @property
    def waiting(self) -> int:
        """How many bodies wait for room."""
        return len(self._waiters)

    def release(self, size: int) -> None:
        """Give back what ``acquire`` took, and let the waiting bodies in that now fit."""
        self.held -= size
        self._grant()

    def _fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.max_bytes

    def _grant(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            size, granted = self._waiters.popleft()
            self.held += size
            granted.set_result(None)
