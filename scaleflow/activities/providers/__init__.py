"""Compute back ends: where a pool's nodes come from."""

from __future__ import annotations

from scaleflow.activities.providers.base import Provider
from scaleflow.core.models import ProviderName
from scaleflow.core.settings import Settings


def build_providers(settings: Settings) -> dict[ProviderName, Provider]:
    from scaleflow.activities.providers.aws_autoscaling import AwsAutoScalingProvider
    from scaleflow.activities.providers.local import LocalProvider
    from scaleflow.activities.providers.noop import NoopProvider

    return {
        ProviderName.LOCAL: LocalProvider(settings),
        ProviderName.NOOP: NoopProvider(),
        ProviderName.AWS_AUTOSCALING: AwsAutoScalingProvider(settings),
    }
