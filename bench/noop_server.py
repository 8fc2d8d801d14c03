"""The benchmark's baseline: an aiohttp server that reads each body and answers 202 ``{}``.

It is the relay minus everything the relay does (validation, the outbox commit, its
middleware), served the same way: one process, ``uvloop.run`` when uvloop is importable
(as ``relay/cli.py`` does), an AppRunner without access log or automatic decompression.

    python bench/noop_server.py --port PORT [--host 127.0.0.1]

It prints one JSON line ``{"event": "listening", "port": N, "loop": ...}`` and serves
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import orjson
from aiohttp import web

PIPELINE_PATH = "/api/v2/ci/pipeline"
# The relay's default server.max_body_bytes, so both accept the same bodies.
MAX_BODY_BYTES = 5 * 1024 * 1024
_ACCEPTED = b"{}"


async def post_pipeline(request: web.Request) -> web.Response:
    """Read the whole body, do nothing with it, answer as the relay does."""
    await request.read()
    return web.Response(status=202, body=_ACCEPTED, content_type="application/json")


async def serve(host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post(PIPELINE_PATH, post_pipeline)
    runner = web.AppRunner(app, auto_decompress=False, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_port = runner.addresses[0][1]
    line = {"event": "listening", "port": bound_port, "loop": type(loop).__module__}
    sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
    sys.stdout.flush()
    await stop.wait()
    await runner.cleanup()
    return 0


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return int(uvloop.run(coro))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    args = parser.parse_args(argv)
    return _run(serve(args.host, args.port))


if __name__ == "__main__":
    raise SystemExit(main())
