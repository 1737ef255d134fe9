"""The aws-autoscaling provider (placeholder until the boto3 implementation lands)."""

from __future__ import annotations

from scaleflow.core.activity_io import (
    ListNodesInput,
    ListNodesResult,
    ProvisionInput,
    ProvisionResult,
    TerminateInput,
)
from scaleflow.core.models import ActivityReport
from scaleflow.core.settings import Settings


class AwsAutoScalingProvider:
    name = "aws-autoscaling"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def provision(self, req: ProvisionInput) -> ProvisionResult:
        raise NotImplementedError

    def terminate(self, req: TerminateInput) -> ActivityReport:
        raise NotImplementedError

    def list_nodes(self, req: ListNodesInput) -> ListNodesResult:
        raise NotImplementedError
