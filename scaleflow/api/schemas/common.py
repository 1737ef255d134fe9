"""What several surfaces share in their OpenAPI documents: names, and the ``{"ID"}`` an
operation is started with."""

from __future__ import annotations

import inspect
import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

# Names of pools (chemtrail classes), computes and services. ``core.models.valid_name``
# matches with ``$``, which lets a trailing newline through ("web\n"); routes that take
# a name check it whole with ``valid_name_whole``.
NAME_PATTERN = r"^[A-Za-z0-9@._-]{1,64}$"
_NAME_RE = re.compile(r"[A-Za-z0-9@._-]{1,64}")
NAME_HELP = "1-64 of [A-Za-z0-9@._-]"
OPERATION_ID_EXAMPLE = "036e4bd6-8f7d-4a8c-bf90-790790bbdc2a"


def valid_name_whole(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None


def name_schema(description: str = NAME_HELP) -> dict[str, Any]:
    """A name parameter's schema, for routes that check names themselves (their message
    is clearer than a pattern's)."""
    return {"pattern": NAME_PATTERN, "description": description}


class OperationStarted(BaseModel):
    """An operation was accepted: read it at ``GET /v1/scale/status/{ID}``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"ID": OPERATION_ID_EXAMPLE}]})

    ID: str = Field(description="The operation's id (its workflow id)")


JSON = "application/json"
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def body_doc(
    model: type[BaseModel] | dict[str, Any],
    description: str = "",
    *,
    media_types: tuple[str, ...] = (JSON,),
    required: bool = True,
    examples: list[Any] | None = None,
) -> dict[str, Any]:
    """``openapi_extra`` for a request body the route reads itself (so that a body that
    is wrong gets the surface's own answer): ``model``'s schema (or ``model`` itself, a
    schema) under each media type, with ``examples`` when it has none of its own."""
    if isinstance(model, dict):
        schema = dict(model)
    else:
        schema = inline_schema(model.model_json_schema())
        description = description or inspect.cleandoc(model.__doc__ or "")
    if examples:
        schema["examples"] = examples
    return {
        "requestBody": {
            "required": required,
            "description": description,
            "content": {media: {"schema": schema} for media in media_types},
        }
    }


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` put in place of their references (none is recursive)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**resolve(defs[ref.removeprefix("#/$defs/")]), **resolve(rest)}
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    result: dict[str, Any] = resolve(schema)
    return result


B = TypeVar("B", bound=BaseModel)


def json_numbers(value: Any) -> Any:
    """``value`` with its integral floats as ints, everywhere in it: JSON (and so the
    schema's ``integer``) does not tell 8.0 from 8."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: json_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_numbers(v) for v in value]
    return value


def validate_json(model: type[B], data: Any, *, integral_floats: bool = False) -> B:
    """A decoded JSON body as ``model``, with JSON's types as the schema states them: no
    string or boolean is read as a number (pydantic's lax mode would). 8.0 is not an
    integer unless ``integral_floats`` (the surfaces that always read it as 8).

    Raises ``ValidationError``."""
    if integral_floats:
        data = json_numbers(data)
    return model.model_validate_json(json.dumps(data), strict=True)
