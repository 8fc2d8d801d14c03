"""The verdict of Datadog's own Python client models on a request body, offline.

``datadog-api-client`` ships the models of ``POST /api/v2/ci/pipeline``
(``CIAppCreatePipelineEventRequest`` and the models it holds). Deserialising a decoded JSON
body with the client's own machinery (``validate_and_convert_types``, what it does with an
answer from the API) checks types, enums, required fields and the models' validations; a
body that fits no variant of a ``oneOf`` is marked unparsed rather than raising, so both
outcomes count as a refusal. Nothing here touches the network.
"""

from __future__ import annotations

from typing import Any

from datadog_api_client import Configuration
from datadog_api_client.exceptions import OpenApiException
from datadog_api_client.model_utils import OpenApiModel, validate_and_convert_types
from datadog_api_client.v2.model.ci_app_create_pipeline_event_request import (
    CIAppCreatePipelineEventRequest,
)

# The client checks values against its models only with a configuration; no key, no host.
# (The client's model machinery has no type hints, hence the ignores.)
_CONFIGURATION = Configuration()  # type: ignore[no-untyped-call]


def client_accepts(document: Any) -> bool:
    """Whether the client's models take ``document`` (a decoded JSON body) as a valid request."""
    try:
        model = validate_and_convert_types(  # type: ignore[no-untyped-call]
            document,
            (CIAppCreatePipelineEventRequest,),
            ["body"],
            True,  # the keys are the wire's names (``partial_retry``), not Python's
            True,  # check types
            configuration=_CONFIGURATION,
        )
    except (OpenApiException, TypeError, ValueError):
        return False
    # Read the flag without the model's __getattr__, which looks up missing names as fields.
    return not (isinstance(model, OpenApiModel) and vars(model).get("_unparsed", False))
