"""GET /openapi.json: the relay's own OpenAPI document, and schemathesis run against it."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import positive_data_acceptance

from relay.config import OutboxSettings
from relay.contract.intake import PIPELINE_PATH
from relay.contract.schema import Event
from relay.keyfiles import KeyFile
from relay.ops.openapi import OPENAPI_PATH, REF, document
from relay.testing.samples import event, request
from tests.helpers import serving_in_thread

# Every operation with valid requests; those that take input with invalid ones too.
CASES = [
    pytest.param(path, method.upper(), mode, id=f"{method.upper()} {path} {mode.value}")
    for path, operations in document()["paths"].items()
    for method, operation in operations.items()
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE or "requestBody" in operation
]
# A body the schema takes can still be refused with 400: JSON Schema cannot say that an end
# must follow its start, nor that it is at most 18 hours old (docs/contract.md). The 400 it
# gets is checked against the document like any other answer.
NOT_CHECKED = [positive_data_acceptance]


@dataclass
class Live:
    """A running relay's base URL, and the document it serves as schemathesis loaded it."""

    base_url: str
    schema: BaseSchema


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """A relay running until the test ends, and its document aimed at it."""
    settings_ = OutboxSettings(path=tmp_path / "outbox.db", synchronous="NORMAL")
    with serving_in_thread(settings_) as base_url:
        yield Live(base_url, schemathesis.openapi.from_url(base_url + OPENAPI_PATH, timeout=10))


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_no_answer_is_a_5xx_or_off_the_document(
    live: Live, path: str, method: str, mode: GenerationMode
) -> None:
    """Requests generated from the document, valid and not, never get a 5xx nor an answer
    (status, content type, headers, body) that the document does not describe."""
    operation = live.schema[path][method]

    @settings(
        max_examples=40,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.call_and_validate(excluded_checks=NOT_CHECKED)

    run()


def test_the_document_is_served_and_its_request_schema_is_the_validating_models() -> None:
    """GET /openapi.json answers the OpenAPI 3.1 document, whose event schema is pydantic's
    schema of relay.schema.Event, the model that validates every event."""
    expected = Event.model_json_schema(ref_template=REF)
    expected.pop("$defs")
    schemas = document()["components"]["schemas"]
    assert expected == schemas["Event"]
    assert "3.1.0" == document()["openapi"]


def test_the_relay_serves_the_document(tmp_path: Path) -> None:
    """GET /openapi.json on a running relay answers 200 with the document as JSON."""
    with serving_in_thread(OutboxSettings(path=tmp_path / "outbox.db")) as base_url:
        answer = requests.get(base_url + OPENAPI_PATH, timeout=10)
    assert (200, "application/json") == (answer.status_code, answer.headers["Content-Type"][:16])
    assert document() == answer.json()


def gzipped(size: int) -> bytes:
    """A gzip body that inflates to ``size`` bytes."""
    return gzip.compress(b" " * size)


REFUSALS = [
    pytest.param({"Content-Type": "text/plain"}, b"{}", 400, id="400-content-type"),
    pytest.param({}, b"[1,", 400, id="400-not-json"),
    pytest.param({"Content-Encoding": "gzip"}, gzipped(6 * 1024 * 1024), 413, id="413"),
    pytest.param({"Content-Encoding": "br"}, b"{}", 415, id="415"),
]


@pytest.mark.parametrize(("headers", "body", "status"), REFUSALS)
def test_refusals_schemathesis_does_not_provoke_match_the_document(
    live: Live, headers: dict[str, str], body: bytes, status: int
) -> None:
    """A wrong content type, a body that is not JSON, one too large once inflated, an
    unknown encoding: each answer is a status the document lists, with the body it says."""
    operation = live.schema[PIPELINE_PATH]["POST"]
    answer = requests.post(
        live.base_url + PIPELINE_PATH,
        data=body,
        headers={"Content-Type": "application/json"} | headers,
        timeout=30,
    )
    assert status == answer.status_code
    assert str(status) in document()["paths"][PIPELINE_PATH]["post"]["responses"]
    operation.validate_response(answer)


def test_a_full_outbox_answer_matches_the_document(tmp_path: Path) -> None:
    """503 for a full outbox is listed in the document, with its error body and the
    Retry-After header the document requires."""
    settings_ = OutboxSettings(path=tmp_path / "outbox.db", max_events=1)
    with serving_in_thread(settings_) as base_url:
        schema = schemathesis.openapi.from_url(base_url + OPENAPI_PATH, timeout=10)
        operation = schema[PIPELINE_PATH]["POST"]
        answers = [
            requests.post(base_url + PIPELINE_PATH, json=request(event("job")), timeout=30)
            for _ in range(2)
        ]
    assert [202, 503] == [answer.status_code for answer in answers]
    assert answers[1].headers["Retry-After"].isdigit()
    for answer in answers:
        operation.validate_response(answer)


@pytest.mark.parametrize("path", [PIPELINE_PATH, "/metrics", "/status"])
def test_a_missing_ingest_token_answer_matches_the_document(tmp_path: Path, path: str) -> None:
    """With an ingest token set, a request without it gets the 403 the document lists."""
    settings_ = OutboxSettings(path=tmp_path / "outbox.db")
    token = KeyFile("server.ingest_token", SecretStr("a-token-of-the-test"), None)
    with serving_in_thread(settings_, ingest_token=token) as base_url:
        schema = schemathesis.openapi.from_url(base_url + OPENAPI_PATH, timeout=10)
        method = "POST" if path == PIPELINE_PATH else "GET"
        answer = requests.request(method, base_url + path, json=request(event("job")), timeout=30)
        schema[path][method].validate_response(answer)
    assert 403 == answer.status_code
