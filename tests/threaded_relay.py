"""The relay's HTTP API served from a thread of its own, for tests whose clients are blocking.

hypothesis's ``@given`` and schemathesis call their test function synchronously; the relay
(``tests.helpers.serving``: real HTTP on 127.0.0.1 over a real SQLite outbox) runs on an
event loop in a background thread meanwhile, and stops when the block ends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from relay.config import OutboxSettings
from relay.keyfiles import KeyFile
from tests.helpers import serving

_START_TIMEOUT_S = 20.0


@contextmanager
def relay_in_thread(settings: OutboxSettings, ingest_token: KeyFile | None = None) -> Iterator[str]:
    """The base URL (``http://127.0.0.1:PORT``) of a relay served until the block ends."""
    started = threading.Event()
    base_url: list[str] = []
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        async with serving(settings, ingest_token=ingest_token) as running:
            base_url.append(running.base_url)
            started.set()
            await stop.wait()

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # reported to the test below, not lost in the thread
            failure.append(exc)
        finally:
            started.set()
            loop.close()

    thread = threading.Thread(target=run, name="relay", daemon=True)
    thread.start()
    started.wait(_START_TIMEOUT_S)
    if failure or not base_url:
        thread.join(_START_TIMEOUT_S)
        raise RuntimeError(f"the relay did not start: {failure}")
    try:
        yield base_url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(_START_TIMEOUT_S)
    if failure:
        raise failure[0]
