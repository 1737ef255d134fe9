"""Bodies of the memcache auto-scaler (seed 001) and manager app (seed 002) surfaces.

Field names are the originals'. Every body may come as JSON or as a form; form values
are strings, which pydantic's lax mode turns into numbers and booleans. Unknown
fields are ignored, as the Flask originals ignored them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from scaleflow.api.routes.pools import EVICTION_HELP

MAX_IDS = 10_000


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ScalerThresholds(Body):
    """The auto-scaler's rule; a field left out keeps its current value. The whole
    configuration is then checked again as ``AutoscalerConfig`` (min < max)."""

    max_miss_rate_threshold: float | None = Field(default=None, ge=0, le=1)
    min_miss_rate_threshold: float | None = Field(default=None, ge=0, le=1)
    expand_ratio: float | None = Field(default=None, gt=1, le=100)
    shrink_ratio: float | None = Field(default=None, gt=0, lt=1)


class ScalerConfigBody(ScalerThresholds):
    """``POST /api/scaler/config``: the rule, ``auto_mode``, and scaleflow's own options
    (``interval_s``, ``cooldown_s``, ``consecutive``, ``skip_identical``, ``cloudwatch``)."""

    auto_mode: bool | None = None
    interval_s: float | None = Field(default=None, ge=1, le=86_400)
    cooldown_s: float | None = Field(default=None, ge=0, le=86_400)
    consecutive: int | None = Field(default=None, ge=1, le=100)
    skip_identical: bool | None = None
    cloudwatch: bool | None = None


class ManualResizeBody(Body):
    """``POST /api/manager/poolsize/manual``; the route checks ``change`` itself, so that
    a missing or wrong value gets the original's message."""

    change: Any = None


class ManagerConfigBody(Body):
    """``POST /api/manager/config``: cache settings rolled out to every node.

    ``replacement_policy`` is ``lru`` or ``none`` (memcached's ``-M``: no eviction,
    writes fail when full). The original's own cache server also did ``rr`` (random
    replacement); memcached cannot, so that is refused with an explanation."""

    capacity: int = Field(gt=0, le=1_048_576, description="MB")
    replacement_policy: str = "lru"

    @field_validator("replacement_policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        key = v.strip().lower()
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
    """``POST /api/scaler/cache_list``: the ids of the nodes to keep."""

    cache_pool_ids: list[str] = Field(min_length=1, max_length=MAX_IDS)

    @field_validator("cache_pool_ids", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return _id_list(v)


class NodeDeleteBody(Body):
    """``POST /api/poolsize/change``: the node to delete, by address (``host:port``,
    or a bare host when only one node has it) or by id."""

    cache_ip: str = Field(min_length=1, max_length=300)
