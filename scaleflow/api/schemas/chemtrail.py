"""The chemtrail policy document, with the original's JSON names."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaleflow.core.models import Check, PoolConfig, ProviderName
from scaleflow.core.models import Engine as EngineKind
from scaleflow.core.models import Selector as SelectorKind


class PolicyCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")
    Enabled: bool = True
    Resource: Literal["cpu", "memory"]
    ComparisonOperator: Literal["greater-than", "less-than"]
    ComparisonPercentage: float = Field(ge=0, le=100)
    Action: Literal["scale-in", "scale-out"]


class Policy(BaseModel):
    """``PUT /v1/policy/:class``. Engine, Selector, DrainDeadlineSeconds and NodeClass
    are scaleflow's additions; the rest are the original's fields."""

    model_config = ConfigDict(extra="forbid")
    Enabled: bool = True
    Class: str | None = None
    MinCount: int = Field(ge=0, le=10_000)
    MaxCount: int = Field(ge=0, le=10_000)
    ScaleOutCount: int = Field(default=1, ge=1, le=100)
    ScaleInCount: int = Field(default=1, ge=1, le=100)
    Provider: ProviderName
    ProviderConfig: dict[str, str] = Field(default_factory=dict)
    Checks: dict[str, PolicyCheck] = Field(default_factory=dict)
    Engine: EngineKind | None = None
    Selector: SelectorKind = SelectorKind.LEAST_BUSY
    DrainDeadlineSeconds: float = Field(default=300.0, ge=0, le=86_400)
    NodeClass: str | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Policy:
        if self.MinCount > self.MaxCount:
            raise ValueError(
                f"MinCount ({self.MinCount}) must not exceed MaxCount ({self.MaxCount})"
            )
        if self.Provider == ProviderName.AWS_AUTOSCALING and not self.ProviderConfig.get(
            "asg-name"
        ):
            raise ValueError("ProviderConfig must name the Auto Scaling group as asg-name")
        return self

    def to_config(self, name: str, base: PoolConfig | None = None) -> PoolConfig:
        """The pool configuration this policy gives; fields it has no word for keep
        their values from ``base``."""
        engine = self.Engine or (
            EngineKind.MEMCACHED if self.Provider == ProviderName.LOCAL else EngineKind.NOMAD
        )
        checks = {
            k: Check(
                enabled=c.Enabled,
                resource=c.Resource,
                comparison_operator=c.ComparisonOperator,
                comparison_percentage=c.ComparisonPercentage,
                action=c.Action,
            )
            for k, c in self.Checks.items()
        }
        fields = dict(
            name=name,
            enabled=self.Enabled,
            engine=engine,
            provider=self.Provider,
            provider_config=self.ProviderConfig,
            min_count=self.MinCount,
            max_count=self.MaxCount,
            scale_out_count=self.ScaleOutCount,
            scale_in_count=self.ScaleInCount,
            selector=self.Selector,
            drain_deadline_s=self.DrainDeadlineSeconds,
            checks=checks,
            node_class=self.NodeClass,
        )
        if base is None:
            return PoolConfig(**fields)
        return PoolConfig.model_validate({**base.model_dump(), **fields})

    @classmethod
    def from_config(cls, cfg: PoolConfig) -> Policy:
        return cls(
            Enabled=cfg.enabled,
            Class=cfg.name,
            MinCount=cfg.min_count,
            MaxCount=cfg.max_count,
            ScaleOutCount=cfg.scale_out_count,
            ScaleInCount=cfg.scale_in_count,
            Provider=cfg.provider,
            ProviderConfig=cfg.provider_config,
            Checks={
                k: PolicyCheck(
                    Enabled=c.enabled,
                    Resource=c.resource,
                    ComparisonOperator=c.comparison_operator,
                    ComparisonPercentage=c.comparison_percentage,
                    Action=c.action,
                )
                for k, c in cfg.checks.items()
            },
            Engine=cfg.engine,
            Selector=cfg.selector,
            DrainDeadlineSeconds=cfg.drain_deadline_s,
            NodeClass=cfg.node_class,
        )
