"""The undermoon memory broker: the entity (metadata, requests, failure detection) and
the operations that make real Redis Cluster nodes follow it. Planning is pure code:
``core/broker`` for the metadata, ``planning`` for the operation each request needs."""

from scaleflow.workflows.broker.entity import BrokerWorkflow
from scaleflow.workflows.broker.operations import BrokerOperationWorkflow

__all__ = ["BrokerOperationWorkflow", "BrokerWorkflow"]
