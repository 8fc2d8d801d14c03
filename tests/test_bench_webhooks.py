"""bench/webhooks.py on a tiny load: it prints its table and both paths store every event."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import orjson
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_webhooks", BENCH / "webhooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


webhooks = _bench_module()


def test_each_generated_hook_is_its_own_pipeline() -> None:
    hooks = webhooks.make_hooks(3, 7)
    assert 3 == len({hook.body for hook in hooks})
    assert 6 == len({hook.delivery for hook in hooks} | {hook.redelivery for hook in hooks})
    # A pipeline event, one per stage (four of the five for seven builds), one per build.
    assert [1 + 4 + 7] * 3 == [hook.events for hook in hooks]
    assert all(hook.events == len(orjson.loads(hook.direct)["data"]) for hook in hooks)


def test_a_tiny_run_prints_the_table_and_stores_every_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results.json"
    argv = ["--hooks", "6", "--warmup", "2", "--builds", "5", "--concurrency", "2"]
    status = webhooks.main([*argv, "--tmpdir", str(tmp_path), "--json", str(results)])

    out = capsys.readouterr().out
    assert 0 == status, out
    assert "| path | concurrency | hooks | hooks/s | events/s | p50 ms | p99 ms | vs direct" in out
    assert "webhook / direct at 2 client(s):" in out
    rows = {row["key"]: row for row in orjson.loads(results.read_bytes())["rows"]}
    assert {"noop", "direct", "webhook", "redelivered", "new_delivery"} == set(rows)
    assert all(6 == row["hooks"] and not row["problems"] for row in rows.values())
    per_hook = rows["webhook"]["events_per_hook"]
    assert 1 + 4 + 5 == per_hook  # five builds over four stages
    # The measured hooks' events, committed by both paths (the outboxes hold the warm-up's
    # too, which the script checks), and none again when the same hooks come back.
    assert 6 * per_hook == rows["direct"]["stored_events"] == rows["webhook"]["stored_events"]
    assert 0 == rows["redelivered"]["stored_events"] == rows["new_delivery"]["stored_events"]
