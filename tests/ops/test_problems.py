"""The doctor's findings counted by rule in /metrics and /status (relay.ops.problems)."""

from __future__ import annotations

import orjson

from relay.ops.status import render
from relay.testing.samples import event, request
from tests.helpers import JSON, RunningRelay


async def test_a_name_mismatch_is_counted_in_metrics_and_status(relay: RunningRelay) -> None:
    """A job naming its pipeline differently: one pipeline-name-mismatch, zero elsewhere."""
    pipeline = event("pipeline", name="deploy")
    unique_id = pipeline["attributes"]["resource"]["unique_id"]
    job = event("job", pipeline_unique_id=unique_id, pipeline_name="Deploy")
    body = orjson.dumps(request(pipeline, job))
    async with relay.client.post(relay.url, data=body, headers=JSON) as answer:
        assert 202 == answer.status
    async with relay.client.get(f"{relay.base_url}/metrics") as answer:
        metrics = (await answer.text()).splitlines()
    async with relay.client.get(f"{relay.base_url}/status") as answer:
        status = await answer.json()
    assert 'ci_relay_pipeline_problems{rule="pipeline-name-mismatch"} 1.0' in metrics
    assert 'ci_relay_pipeline_problems{rule="orphan"} 0.0' in metrics
    assert 1 == status["problems"]["pipeline-name-mismatch"]
    shown = render(status, relay.base_url)
    assert "problems      1 pipeline-name-mismatch (see /ui, docs/doctor.md)" in shown.splitlines()
