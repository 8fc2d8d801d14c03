"""``GET /openapi.json``: an OpenAPI 3.1 document of the relay's endpoints, built from code.

The request schema is pydantic's JSON Schema of the very models that validate a body
(``relay.contract.schema``); the answers' schemas come from the types their handlers build them
with: the error shape (``relay.errors``), the probes' verdict (``relay.ops.probes``) and the
status document (``relay.ops.status``). Nothing in it is written out by hand but the list of
paths, their answers and what each answer means.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.json_schema import models_json_schema

from relay import __version__
from relay.contract.intake import MAX_EVENTS_PER_REQUEST, PIPELINE_PATH
from relay.contract.schema import Event
from relay.errors import ErrorBody
from relay.ingest.webhook_sources import GITLAB, SOURCES, Source, WebhookAnswer
from relay.ops.probes import ProbeBody
from relay.ops.retry import RETRY_PATH, RetryAnswer
from relay.ops.status import StatusDocument

OPENAPI_PATH = "/openapi.json"
REF = "#/components/schemas/{model}"
_JSON = "application/json"
# The relay's answer to a request it stored: an empty JSON object, as the intake's.
_ACCEPTED_SCHEMA: dict[str, Any] = {"type": "object", "maxProperties": 0}


class PipelineRequest(BaseModel):
    """The body of ``POST /api/v2/ci/pipeline``: one event, or an array of 1 to 1000."""

    # As relay.schema's models: strict, unknown fields ignored (and kept in what is stored).
    model_config = ConfigDict(strict=True, extra="ignore")

    data: Event | Annotated[list[Event], Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)]


def _schemas() -> dict[str, Any]:
    """Every named schema: the request's models and the answers' types."""
    _, request = models_json_schema([(PipelineRequest, "validation")], ref_template=REF)
    schemas: dict[str, Any] = dict(request["$defs"])
    for name, shape in (
        ("ErrorBody", ErrorBody),
        ("ProbeBody", ProbeBody),
        ("StatusDocument", StatusDocument),
        ("WebhookAnswer", WebhookAnswer),
        ("RetryAnswer", RetryAnswer),
    ):
        schema = TypeAdapter(shape).json_schema(ref_template=REF, mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    return schemas


def _json(schema: str | dict[str, Any], description: str, **headers: Any) -> dict[str, Any]:
    """An answer with a JSON body of ``schema`` (a component's name, or a schema)."""
    body = {"$ref": REF.format(model=schema)} if isinstance(schema, str) else schema
    answer: dict[str, Any] = {"description": description, "content": {_JSON: {"schema": body}}}
    if headers:
        answer["headers"] = headers
    return answer


def _error(description: str, **headers: Any) -> dict[str, Any]:
    return _json("ErrorBody", description, **headers)


_RETRY_AFTER = {
    "description": "Seconds to wait before sending the request again.",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}


def _forbidden() -> dict[str, Any]:
    return _error(
        "An ingest token is set (server.ingest_token) and the request does not carry it, "
        "in DD-API-KEY or as Authorization: Bearer."
    )


def _ingest() -> dict[str, Any]:
    return {
        "post": {
            "operationId": "sendPipelineEvents",
            "summary": "Send pipeline events, answered once they are stored",
            "description": (
                "Datadog's intake request, answered locally: the events are validated whole "
                "and committed to the outbox before the answer. The body may be sent with "
                "Content-Encoding gzip or deflate."
            ),
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": {"$ref": REF.format(model="PipelineRequest")}}},
            },
            "responses": {
                "202": _json(_ACCEPTED_SCHEMA, "The events are stored; the relay delivers them."),
                "400": _error(
                    "Not a valid request: each problem names its JSON path (at most 100), or "
                    "the body is not JSON, not application/json, or not valid HTTP or gzip."
                ),
                "403": _forbidden(),
                "413": _error("The body, or its decompressed form, exceeds the size limit."),
                "415": _error("A Content-Encoding other than gzip or deflate."),
                "500": _error("The relay failed to handle the request (a bug; see its log)."),
                "503": _error(
                    "The relay cannot take the events now: the outbox is full or its file "
                    "fails, or bodies beyond server.max_parsing_bytes waited too long.",
                    **{"Retry-After": _RETRY_AFTER},
                ),
            },
        }
    }


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "description": description, "schema": {"type": "string"}}


def _webhook(source: Source) -> dict[str, Any]:
    secret = (
        f"{source.check_header}: the hook's secret token, as webhooks.gitlab_token holds it."
        if source is GITLAB
        else f"{source.check_header}: sha256= and the hex HMAC-SHA256 of the raw body with "
        "webhooks.github_secret."
    )
    return {
        "post": {
            "operationId": f"receive{source.title}Webhook",
            "summary": f"{source.title} webhooks, answered 2xx once what they make is stored",
            "description": (
                f"{source.title}'s webhook ({', '.join(source.kinds)}) as events: authenticated, "
                "mapped, deduplicated by delivery and by object status, committed to the outbox "
                "before the answer (docs/webhooks.md). Served only when "
                f"{source.setting} is set. The ingest token is not required."
            ),
            "parameters": [
                _header(source.kind_header, "The delivery's kind; other kinds are ignored."),
                _header(source.delivery_header, "The delivery's id, for deduplication."),
                _header(source.check_header, secret),
            ],
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": _json(
                    "WebhookAnswer",
                    "Nothing new stored: a kind or status the relay makes no event of "
                    "(ignored, with the reason), or a delivery stored before (duplicate).",
                ),
                "202": _json(
                    "WebhookAnswer",
                    "Stored: its new events are committed (stored), or content that cannot "
                    "become a valid event is kept as a dead letter (dead_lettered).",
                ),
                "400": _error(
                    "The body is not JSON, not application/json, or not the kind its header says."
                ),
                "401": _error(f"{source.check_header} is missing or wrong; nothing stored."),
                "404": _error(f"{source.setting} is not set: the relay takes no such webhooks."),
                "413": _error("The body, or its decompressed form, exceeds the size limit."),
                "415": _error("A Content-Encoding other than gzip or deflate."),
                "500": _error("The relay failed to handle the webhook (a bug; see its log)."),
                "503": _error(
                    "The relay cannot store it now: the outbox is full or its file fails.",
                    **{"Retry-After": _RETRY_AFTER},
                ),
            },
        }
    }


def _get(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"operationId": operation_id, "summary": summary, "responses": responses}}


def _paths() -> dict[str, Any]:
    probe_failing = "A check fails; the body says which and why."
    return {
        PIPELINE_PATH: _ingest(),
        **{source.path: _webhook(source) for source in SOURCES},
        RETRY_PATH: {
            "post": {
                "operationId": "retryNow",
                "summary": "Try delivery at once (the upstream is fixed)",
                "description": (
                    "Ends a backoff, or an unauthorized or rejecting pause: delivery tries at "
                    "once and its state follows the upstream's answer. Asked again within a "
                    "second, or without an API key, nothing more happens (trying is false)."
                ),
                "responses": {
                    "202": _json("RetryAnswer", "What delivery was doing, and whether it tries."),
                    "403": _forbidden(),
                    "409": _error("Delivery is not running in this relay: nothing to retry."),
                },
            }
        },
        "/health": _get(
            "getHealth",
            "Liveness: the event loop answers and the outbox writer lives",
            {
                "200": _json("ProbeBody", "Alive."),
                "503": _json("ProbeBody", probe_failing),
            },
        ),
        "/ready": _get(
            "getReady",
            "Readiness for runners: a request would be stored now",
            {
                "200": _json("ProbeBody", "Ready."),
                "503": _json("ProbeBody", probe_failing),
            },
        ),
        "/metrics": _get(
            "getMetrics",
            "The relay's metrics in the Prometheus text format",
            {
                "200": {
                    "description": "The metrics (docs/metrics.md lists them).",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "403": _forbidden(),
            },
        ),
        "/status": _get(
            "getStatus",
            "What the relay holds and does, and what needs an operator",
            {"200": _json("StatusDocument", "The status document."), "403": _forbidden()},
        ),
        OPENAPI_PATH: _get(
            "getOpenAPI",
            "This document",
            {"200": _json({"type": "object"}, "The OpenAPI document.")},
        ),
    }


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the relay's endpoints (built once)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ci-relay",
            "version": __version__,
            "description": (
                "A local buffering relay for Datadog CI Visibility pipeline events: "
                f"POST {PIPELINE_PATH} as Datadog's intake answers it, CI servers' webhooks, "
                "and the relay's own probes, metrics and status. Errors use Datadog's shape."
            ),
        },
        "paths": _paths(),
        "components": {"schemas": _schemas()},
    }
