"""The reference genisys connector: scales the compute resources of services on one backend.

See docs/connector.md for the protocol. ``create_connector_app`` serves it over a
``LocalBackend`` (real processes) or an ``Ec2Backend`` (EC2 instances).
"""

from scaleflow.connector.app import build_connector_app, create_connector_app
from scaleflow.connector.backends import Backend, BackendError, Ec2Backend, LocalBackend
from scaleflow.connector.models import Resource, ServiceDefinition, ServicesFile

__all__ = [
    "Backend",
    "BackendError",
    "Ec2Backend",
    "LocalBackend",
    "Resource",
    "ServiceDefinition",
    "ServicesFile",
    "build_connector_app",
    "create_connector_app",
]
