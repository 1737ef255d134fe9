"""The contract every compute back end meets."""

from __future__ import annotations

from typing import Protocol

from scaleflow.core.activity_io import (
    ListNodesInput,
    ListNodesResult,
    ProvisionInput,
    ProvisionResult,
    TerminateInput,
)
from scaleflow.core.models import ActivityReport


class Provider(Protocol):
    """Creates and destroys nodes. Methods are blocking; they run in activity threads.

    - ``provision`` is idempotent on ``node_id``: a retry after a crash finds the
      node it already made instead of making another.
    - ``terminate`` tolerates a node that is already gone.
    """

    name: str

    def provision(self, req: ProvisionInput) -> ProvisionResult: ...

    def terminate(self, req: TerminateInput) -> ActivityReport: ...

    def list_nodes(self, req: ListNodesInput) -> ListNodesResult: ...
