"""Activities that create, destroy and list nodes through the pool's provider."""

from __future__ import annotations

from temporalio import activity

from scaleflow.activities.providers import Provider, build_providers
from scaleflow.core.activity_io import (
    ListNodesInput,
    ListNodesResult,
    ProvisionInput,
    ProvisionResult,
    TerminateInput,
)
from scaleflow.core.models import ActivityReport, ProviderName
from scaleflow.core.settings import Settings


class NodeActivities:
    def __init__(
        self, settings: Settings, providers: dict[ProviderName, Provider] | None = None
    ) -> None:
        self.providers = providers if providers is not None else build_providers(settings)

    @activity.defn(name="provision_node")
    def provision_node(self, req: ProvisionInput) -> ProvisionResult:
        return self.providers[req.config.provider].provision(req)

    @activity.defn(name="terminate_node")
    def terminate_node(self, req: TerminateInput) -> ActivityReport:
        return self.providers[req.config.provider].terminate(req)

    @activity.defn(name="list_pool_nodes")
    def list_pool_nodes(self, req: ListNodesInput) -> ListNodesResult:
        return self.providers[req.config.provider].list_nodes(req)
