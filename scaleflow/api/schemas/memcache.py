"""Bodies and answers of the memcache auto-scaler (seed 001) and manager app (seed 002)
surfaces.

Field names are the originals'. Every body may come as JSON or as a form. A JSON body
is typed (a number is a JSON number, a boolean a JSON boolean); form values are strings,
which are read as the numbers and booleans the field takes. Unknown fields are ignored,
as the Flask originals ignored them.

Every answer is the originals' envelope, ``{"success": "true", "content": ...}``
(``Ok[...]``); the content models below are what ``content`` holds.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scaleflow.api.routes.pools import EVICTION_HELP
from scaleflow.api.schemas.common import OPERATION_ID_EXAMPLE

MAX_IDS = 10_000
# The spaces a replacement policy may carry around it (the documented pattern's).
BLANKS = " \t\r\n"


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ScalerThresholds(Body):
    """The auto-scaler's rule; a field left out keeps its current value. The whole
    configuration is then checked again as ``AutoscalerConfig`` (min < max)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "max_miss_rate_threshold": 0.6,
                    "min_miss_rate_threshold": 0.4,
                    "expand_ratio": 1.5,
                    "shrink_ratio": 0.5,
                }
            ]
        }
    )

    max_miss_rate_threshold: float | None = Field(default=None, ge=0, le=1)
    min_miss_rate_threshold: float | None = Field(default=None, ge=0, le=1)
    expand_ratio: float | None = Field(default=None, gt=1, le=100)
    shrink_ratio: float | None = Field(default=None, gt=0, lt=1)


class ScalerConfigBody(ScalerThresholds):
    """``POST /api/scaler/config``: the rule, ``auto_mode``, and scaleflow's own options
    (``interval_s``, ``cooldown_s``, ``cooldown_out_s``, ``cooldown_in_s``, ``consecutive``,
    ``skip_identical``, ``cloudwatch``, ``dry_run``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"max_miss_rate_threshold": 0.7, "expand_ratio": 2, "auto_mode": True}]
        }
    )

    auto_mode: bool | None = None
    interval_s: float | None = Field(default=None, ge=1, le=86_400)
    cooldown_s: float | None = Field(default=None, ge=0, le=86_400)
    # Separate cooldowns for growing and shrinking (each falls back to cooldown_s).
    cooldown_out_s: float | None = Field(default=None, ge=0, le=86_400)
    cooldown_in_s: float | None = Field(default=None, ge=0, le=86_400)
    consecutive: int | None = Field(default=None, ge=1, le=100)
    skip_identical: bool | None = None
    cloudwatch: bool | None = None
    # Decisions are made and listed (GET /v1/pools/{name}/decisions), nothing is queued.
    dry_run: bool | None = None


class ManualResizeBody(Body):
    """``POST /api/manager/poolsize/manual``; the route checks ``change`` itself, so that
    a missing or wrong value gets the original's message."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"change": "increase"}],
            "properties": {"change": {"enum": ["increase", "decrease"]}},
            "required": ["change"],
        }
    )

    change: Any = None


class ManagerConfigBody(Body):
    """``POST /api/manager/config``: cache settings rolled out to every node.

    ``replacement_policy`` is ``lru`` or ``none`` (memcached's ``-M``: no eviction,
    writes fail when full). The original's own cache server also did ``rr`` (random
    replacement); memcached cannot, so that is refused with an explanation."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"capacity": 128, "replacement_policy": "lru"}]}
    )

    capacity: int = Field(gt=0, le=1_048_576, description="MB")
    replacement_policy: str = Field(
        default="lru",
        description="lru, or none (no eviction); any case, spaces around allowed",
        json_schema_extra={"pattern": r"^[ \t\r\n]*([Ll][Rr][Uu]|[Nn][Oo][Nn][Ee])[ \t\r\n]*$"},
    )

    @field_validator("replacement_policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        key = v.strip(BLANKS).lower()
        if key in ("rr", "random", "random-replacement", "random_replacement"):
            raise ValueError(
                f"replacement_policy {v!r} (random replacement) is not supported: {EVICTION_HELP}"
            )
        if key not in ("lru", "none"):
            raise ValueError(f"replacement_policy {v!r} is not supported: {EVICTION_HELP}")
        return key


class TestMissRateBody(Body):
    """``POST /api/scaler/set_test_miss_rate``."""

    __test__ = False  # not a pytest class
    model_config = ConfigDict(json_schema_extra={"examples": [{"test_miss_rate": 0.9}]})

    test_miss_rate: float = Field(ge=0, le=1)


def _id_list(v: Any) -> Any:
    # Forms send one value per id, or one comma-separated value; JSON sends a list
    # (a comma-separated string is accepted too).
    if isinstance(v, str):
        return [part.strip() for part in v.split(",") if part.strip()]
    if isinstance(v, list):
        out: list[Any] = []
        for item in v:
            out.extend(_id_list(item) if isinstance(item, str) else [item])
        return out
    return v


class CacheListBody(Body):
    """``POST /api/scaler/cache_list``: the ids of the nodes to keep (a list, or one
    comma-separated string)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"cache_pool_ids": ["n-5f0c6c1e", "n-8a1b2c3d"]}]}
    )

    cache_pool_ids: list[str] = Field(min_length=1, max_length=MAX_IDS)

    @field_validator("cache_pool_ids", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return _id_list(v)


class NodeDeleteBody(Body):
    """``POST /api/poolsize/change``: the node to delete, by address (``host:port``,
    or a bare host when only one node has it) or by id."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"cache_ip": "127.0.0.1:11311"}]})

    cache_ip: str = Field(min_length=1, max_length=300)


# ---- answers ------------------------------------------------------------------------

T = TypeVar("T")


def examples_of(kind: Any) -> list[Any]:
    """Examples of a content type: its model's own, or (a model of defaults only) the
    model as it is when nothing was set."""
    if get_origin(kind) is list:
        return [examples_of(get_args(kind)[0])[:1]]
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        extra = kind.model_config.get("json_schema_extra")
        if isinstance(extra, dict) and extra.get("examples"):
            return list(extra["examples"])  # type: ignore[arg-type]
        try:
            return [kind().model_dump(mode="json")]
        except ValidationError:
            return []
    return []


def _ok_examples(schema: dict[str, Any], model: type[BaseModel]) -> None:
    # Each Ok[...] shows its content's examples in the envelope.
    content = examples_of(model.model_fields["content"].annotation)
    if content:
        schema["examples"] = [{"success": "true", "content": c} for c in content]


class Ok(BaseModel, Generic[T]):
    """The originals' success envelope."""

    model_config = ConfigDict(json_schema_extra=_ok_examples)

    success: Literal["true"]
    content: T


class Started(BaseModel):
    """An operation was accepted; read it at ``GET /v1/scale/status/{ID}``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"ID": OPERATION_ID_EXAMPLE}]})

    ID: str


class NodeDoc(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "n-5f0c6c1e",
                    "address": "127.0.0.1:11311",
                    "state": "ready",
                    "created_at": "2024-06-11T10:00:00+00:00",
                }
            ]
        }
    )

    id: str
    address: str | None
    state: Literal["provisioning", "ready", "draining", "terminated"]
    created_at: str = Field(description="ISO 8601")


class PoolNodeList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"pool_node_list": ["127.0.0.1:11311"]}]}
    )

    pool_node_list: list[str] = Field(description="The nodes' host:port, oldest first")


class PoolSize(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"size": 2}]})

    size: int


class PoolSizeConfig(BaseModel):
    """``manual`` with no parameters, or ``automatic`` with the rule's four."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "resize_pool_option": "automatic",
                    "resize_pool_parameters": {
                        "max_miss_rate_threshold": 0.6,
                        "min_miss_rate_threshold": 0.4,
                        "expand_ratio": 1.5,
                        "shrink_ratio": 0.5,
                    },
                }
            ]
        }
    )

    resize_pool_option: Literal["manual", "automatic"]
    resize_pool_parameters: dict[str, float]


class AggregateStats(BaseModel):
    """The last 30 one-minute points of each figure, oldest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "miss_rate": [0.0] * 28 + [0.25, 0.1],
                    "hit_rate": [0.0] * 28 + [0.75, 0.9],
                    "number_of_items_in_cache": [0] * 28 + [120, 130],
                    "total_size_of_items_in_cache": [0.0] * 28 + [1.2, 1.3],
                    "number_of_requests_served_per_minute": [0.0] * 28 + [60.0, 75.0],
                }
            ]
        }
    )

    miss_rate: list[float] = Field(min_length=30, max_length=30)
    hit_rate: list[float] = Field(min_length=30, max_length=30)
    number_of_items_in_cache: list[int] = Field(min_length=30, max_length=30)
    total_size_of_items_in_cache: list[float] = Field(
        min_length=30, max_length=30, description="MB"
    )
    number_of_requests_served_per_minute: list[float] = Field(min_length=30, max_length=30)


class ManualResize(Started):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ID": OPERATION_ID_EXAMPLE, "change": "increase"}]}
    )

    change: Literal["increase", "decrease"]


class ConfigRollout(Started):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"ID": OPERATION_ID_EXAMPLE, "capacity": 128, "replacement_policy": "lru"}]
        }
    )

    capacity: int
    replacement_policy: Literal["lru", "none"]


class TerminateAll(Started):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ID": OPERATION_ID_EXAMPLE, "nodes": ["n-5f0c6c1e"]}]}
    )

    nodes: list[str]


class TestMissRate(BaseModel):
    __test__ = False  # not a pytest class
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"test_miss_rate": 0.9, "result": "resize to clip(round(1 * 1.5), 1, 8) = 2"}
            ]
        }
    )

    test_miss_rate: float
    result: str = Field(description="What the rule decided")


class CacheList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"cache_pool_ids": ["n-5f0c6c1e"]}]})

    cache_pool_ids: list[str]


class CacheListChange(BaseModel):
    """The scale-in of the nodes left out, or ``ID: null`` when none was."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ID": OPERATION_ID_EXAMPLE, "removed": ["n-8a1b2c3d"]}]}
    )

    ID: str | None
    removed: list[str]


class NodeDeleted(Started):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ID": OPERATION_ID_EXAMPLE,
                    "node": {
                        "id": "n-5f0c6c1e",
                        "address": "127.0.0.1:11311",
                        "state": "ready",
                        "created_at": "2024-06-11T10:00:00+00:00",
                    },
                }
            ]
        }
    )

    node: NodeDoc
