"""Bodies of the genisys surface, for its OpenAPI document.

The routes read their bodies by hand (``routes.genisys``): the original's messages
depend on how a body is wrong. These models only say what a body holds; the routes
check exactly what they say (names and connectors matched whole).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from scaleflow.api.schemas.common import NAME_HELP, NAME_PATTERN, OPERATION_ID_EXAMPLE
from scaleflow.core.genisys import MAX_RESOURCES, MAX_URL_LENGTH

_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[0-5][0-9]{4}|[0-9]{1,4})"
# An http(s) URL with a host name or address, an optional port and path, and no query,
# fragment, user or space: what ``core.genisys.connector_problem`` accepts, narrowed to
# what a schema can say exactly.
CONNECTOR_PATTERN = (
    r"^https?://[A-Za-z0-9._~-]+(:" + _PORT + r")?(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?$"
)
_CONNECTOR_RE = re.compile(CONNECTOR_PATTERN.removeprefix("^").removesuffix("$"))
CONNECTOR_HELP = "The connector's http(s) URL: host, optional port and path"
COMPUTE_EXAMPLE = {"name": "localdc", "connector": "http://localhost:7051"}


def connector_matches(connector: str) -> bool:
    return len(connector) <= MAX_URL_LENGTH and _CONNECTOR_RE.fullmatch(connector) is not None


class ComputeBody(BaseModel):
    """``POST /compute``: both fields are required."""

    model_config = ConfigDict(json_schema_extra={"examples": [COMPUTE_EXAMPLE]})

    name: str = Field(description=f"The compute's name: {NAME_HELP}", pattern=NAME_PATTERN)
    connector: str = Field(
        description=CONNECTOR_HELP, pattern=CONNECTOR_PATTERN, max_length=MAX_URL_LENGTH
    )


class ComputeUpdateBody(BaseModel):
    """``PUT /compute/<name>``: the new connector. A ``name`` in the body, if any, must be
    the path's (400 otherwise)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"connector": "http://localhost:7052"}]}
    )

    connector: str = Field(
        description=CONNECTOR_HELP, pattern=CONNECTOR_PATTERN, max_length=MAX_URL_LENGTH
    )


class StepBody(BaseModel):
    """``POST /service/<name>/upscale`` and ``/downscale``: the compute the resource is
    made in or removed from (501 "Undefined compute: X." when there is no such compute)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"compute": "localdc"}]})

    compute: str = Field(description="A compute's name")


class ScaleBody(BaseModel):
    """``POST /service/<name>/scale``: the count the service's entity keeps. ``compute``
    defaults to the one the service last used (400 when it has used none)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"number": 3, "compute": "localdc"}]})

    number: int = Field(ge=0, le=MAX_RESOURCES, description="Resources to keep running")
    compute: str | None = Field(default=None, description="A compute's name")


STARTED_EXAMPLE = {"ID": OPERATION_ID_EXAMPLE}
SERVICE_EXAMPLE = {
    "service": "myService",
    "compute": "localdc",
    "connector": "http://localhost:7051",
    "desired": 3,
    "running_resources": 3,
    "observed_at": "2024-06-11T10:00:00Z",
    "protocol": "v2",
    # (FastAPI drops nulls from the document's examples: every field has a value here.)
    "last_error": "connector_status: connection refused (an earlier check)",
    "period_s": 15.0,
    "running": OPERATION_ID_EXAMPLE,
    "queue": [OPERATION_ID_EXAMPLE],
    "corrections": [],
}
