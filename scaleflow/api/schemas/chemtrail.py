"""The chemtrail policy document, with the original's JSON names."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaleflow.core.models import AutoscalingSettings, Check, PoolConfig, ProviderName
from scaleflow.core.models import Engine as EngineKind
from scaleflow.core.models import Selector as SelectorKind

POLICY_EXAMPLE = {
    "Enabled": True,
    "Class": "high-memory",
    "MinCount": 1,
    "MaxCount": 8,
    "ScaleOutCount": 1,
    "ScaleInCount": 1,
    "Provider": "aws-autoscaling",
    "ProviderConfig": {"asg-name": "chemtrail-test"},
    "Checks": {
        "cpu-high": {
            "Enabled": True,
            "Resource": "cpu",
            "ComparisonOperator": "greater-than",
            "ComparisonPercentage": 80,
            "Action": "scale-out",
        }
    },
    "Engine": "nomad",
    "Selector": "least_busy",
    "DrainDeadlineSeconds": 300,
    "NodeClass": None,
}


class PolicyCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")
    Enabled: bool = True
    Resource: Literal["cpu", "memory"]
    ComparisonOperator: Literal["greater-than", "less-than"]
    ComparisonPercentage: float = Field(ge=0, le=100)
    Action: Literal["scale-in", "scale-out"]


class PolicyAutoScaling(BaseModel):
    """Auto-scaling of the class (off unless ``Enabled``). ``threshold`` evaluates the
    policy's ``Checks`` every ``IntervalSeconds`` (the original's 180 s) against the
    ``Source``; ``target-value`` keeps ``Metric`` at ``Target`` (nomad-autoscaler's
    rule, new count = ceil(count * metric / target), within ``Tolerance``). Each
    direction has its own cooldown; ``ConsecutiveReadings`` on the same side are needed
    before acting; ``DryRun`` records decisions (``GET /v1/pools/{class}/decisions``)
    without queueing anything. scaleflow's addition: the original has only the checks
    and the interval."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "Enabled": True,
                    "IntervalSeconds": 180,
                    "Strategy": "threshold",
                    "Source": "nomad",
                    "ScaleOutCooldownSeconds": 300,
                    "ScaleInCooldownSeconds": 900,
                    "ConsecutiveReadings": 2,
                    "DryRun": False,
                }
            ]
        },
    )
    Enabled: bool = False
    IntervalSeconds: float = Field(default=180.0, ge=1, le=86_400)
    Strategy: Literal["threshold", "target-value"] = "threshold"
    Source: Literal["nomad", "prometheus"] = "nomad"
    Metric: str | None = Field(default=None, min_length=1, max_length=200)
    Target: float | None = Field(default=None, ge=0, le=1e12, allow_inf_nan=False)
    Tolerance: float = Field(default=0.01, ge=0, le=1)
    PrometheusAddress: str = Field(default="http://127.0.0.1:9090", min_length=1)
    Query: str | None = Field(default=None, min_length=1, max_length=10_000)
    ScaleOutCooldownSeconds: float = Field(default=0.0, ge=0, le=86_400)
    ScaleInCooldownSeconds: float = Field(default=0.0, ge=0, le=86_400)
    ConsecutiveReadings: int = Field(default=1, ge=1, le=100)
    DryRun: bool = False

    @model_validator(mode="after")
    def _complete(self) -> PolicyAutoScaling:
        if self.Source == "prometheus" and not self.Query:
            raise ValueError("AutoScaling.Query is required with Source prometheus")
        if self.Strategy == "target-value":
            if self.Target is None:
                raise ValueError("AutoScaling.Target is required with Strategy target-value")
            if not self.Metric:
                raise ValueError("AutoScaling.Metric is required with Strategy target-value")
        if self.Source == "nomad" and self.Metric not in (None, "cpu", "memory"):
            raise ValueError(f"AutoScaling.Metric {self.Metric!r}: Nomad reads cpu or memory")
        if self.Strategy == "threshold" and self.Source == "prometheus" and not self.Metric:
            raise ValueError(
                "AutoScaling.Metric (cpu or memory) names what the query reads, for the checks"
            )
        return self

    def to_settings(self) -> AutoscalingSettings:
        return AutoscalingSettings(
            enabled=self.Enabled,
            interval_s=self.IntervalSeconds,
            strategy=self.Strategy,
            source=self.Source,
            metric=self.Metric,
            target=self.Target,
            tolerance=self.Tolerance,
            prometheus_address=self.PrometheusAddress,
            query=self.Query,
            cooldown_out_s=self.ScaleOutCooldownSeconds,
            cooldown_in_s=self.ScaleInCooldownSeconds,
            consecutive=self.ConsecutiveReadings,
            dry_run=self.DryRun,
        )

    @classmethod
    def from_settings(cls, a: AutoscalingSettings) -> PolicyAutoScaling | None:
        if a == AutoscalingSettings():
            return None  # never set: the policy reads as the original's
        return cls(
            Enabled=a.enabled,
            IntervalSeconds=a.interval_s,
            Strategy=a.strategy,
            Source=a.source,
            Metric=a.metric,
            Target=a.target,
            Tolerance=a.tolerance,
            PrometheusAddress=a.prometheus_address,
            Query=a.query,
            ScaleOutCooldownSeconds=a.cooldown_out_s,
            ScaleInCooldownSeconds=a.cooldown_in_s,
            ConsecutiveReadings=a.consecutive,
            DryRun=a.dry_run,
        )


class Policy(BaseModel):
    """``PUT /v1/policy/:class``. Engine, Selector, DrainDeadlineSeconds and NodeClass
    are scaleflow's additions; the rest are the original's fields."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [POLICY_EXAMPLE]})
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
    AutoScaling: PolicyAutoScaling | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Policy:
        if self.MinCount > self.MaxCount:
            raise ValueError(
                f"MinCount ({self.MinCount}) must not exceed MaxCount ({self.MaxCount})"
            )
        auto = self.AutoScaling
        threshold = auto is not None and auto.Enabled and auto.Strategy == "threshold"
        if threshold and not any(c.Enabled for c in self.Checks.values()):
            raise ValueError("AutoScaling with Strategy threshold needs an enabled check")
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
            # A whole policy: left out, auto-scaling is off.
            autoscaling=self.AutoScaling.to_settings()
            if self.AutoScaling
            else AutoscalingSettings(),
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
            AutoScaling=PolicyAutoScaling.from_settings(cfg.autoscaling),
        )


# The seed's sample of a scaling event (``GET /v1/scale/status/:id``).
SCALING_EVENT_EXAMPLE = {
    "Events": [
        {
            "Timestamp": 1674947693736639000,
            "Message": "scaling activity has started",
            "Source": "chemtrail",
        },
        {
            "Timestamp": 1674947693745198000,
            "Message": 'all allocations on node "d832b8c2-1b8d-72ce-8f2b-8b2610d0aaf9" '
            "have stopped",
            "Source": "nomad",
        },
        {
            "Timestamp": 1674947693805382000,
            "Message": "drain complete for node d832b8c2-1b8d-72ce-8f2b-8b2610d0aaf9",
            "Source": "nomad",
        },
        {
            "Timestamp": 1674947693808511000,
            "Message": "scaling activity has successfully completed",
            "Source": "chemtrail",
        },
    ],
    "Direction": "in",
    "LastUpdate": 1674947693808511000,
    "Status": "success",
    "Provider": "aws-autoscaling",
    "ProviderCfg": {"asg-name": "chemtrail-test"},
}


class CancelAccepted(BaseModel):
    """``DELETE /v1/scale/status/:id``: the operation is compensating, then cancelled."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"ID": "036e4bd6-8f7d-4a8c-bf90-790790bbdc2a", "Status": "cancelling"}]
        }
    )

    ID: str
    Status: Literal["cancelling"]


class PolicyDeleted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"Class": "high-memory", "Status": "deleted"}]}
    )

    Class: str
    Status: Literal["deleted"]


class Health(BaseModel):
    """``GET /v1/system/health``: 200 ``ok``, or 503 ``unhealthy`` with Temporal's error."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"Status": "ok", "Temporal": "ok"}]})

    Status: Literal["ok", "unhealthy"]
    Temporal: str


class Gauge(BaseModel):
    Name: str
    Value: float
    Labels: dict[str, str]


class Counter(BaseModel):
    Name: str
    Count: int
    Labels: dict[str, str]


class Metrics(BaseModel):
    """go-metrics' in-memory sink, as the original served it at ``/v1/system/metrics``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "Timestamp": "2024-06-11 10:00:00 +0000 UTC",
                    "Gauges": [
                        {
                            "Name": "scaleflow.pool.nodes",
                            "Value": 3,
                            "Labels": {"class": "high-memory"},
                        }
                    ],
                    "Points": [],
                    "Counters": [{"Name": "scaleflow.http.requests", "Count": 42, "Labels": {}}],
                    "Samples": [],
                }
            ]
        }
    )

    Timestamp: str
    Gauges: list[Gauge]
    Points: list[Any]
    Counters: list[Counter]
    Samples: list[Any]
