"""Service definitions, the services file, and the resources a backend reports."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Service names end up in URLs, file names and EC2 tags: keep them plain.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"

# What a service without a command runs: one memcached on its own loopback port.
DEFAULT_COMMAND = ["memcached", "-l", "{host}", "-p", "{port}", "-U", "0"]

DEFAULT_MAX_RESOURCES = 100

# Port names appear in `{port_<name>}` placeholders.
PORT_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"


class ServiceDefinition(BaseModel):
    """What one resource of a service is, on either backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    # None runs DEFAULT_COMMAND; a string is split like a shell would (no shell runs it).
    command: list[str] | str | None = None
    environment: dict[str, str] = {}
    # Names of ports to allocate on the loopback host for each resource.
    ports: list[str] = []
    # Upper bound on `number`, so a typo cannot start a million processes.
    max_resources: int = Field(default=DEFAULT_MAX_RESOURCES, ge=0)
    # aws-ec2 only.
    image_id: str | None = None
    instance_type: str = "t3.micro"

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: list[str] | str | None) -> list[str] | str | None:
        if value is not None and not (shlex.split(value) if isinstance(value, str) else value):
            raise ValueError("command must not be empty")
        return value

    @field_validator("ports")
    @classmethod
    def _port_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(PORT_NAME_PATTERN, name):
                raise ValueError(f"port name {name!r} must be a plain identifier")
        if len(set(value)) != len(value):
            raise ValueError("port names must be unique")
        return value

    def argv(self, memcached_bin: str = "memcached") -> list[str]:
        """The command as an argument vector, placeholders not yet substituted."""
        if self.command is None:
            return [memcached_bin, *DEFAULT_COMMAND[1:]]
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)


def default_service(name: str) -> ServiceDefinition:
    """The definition of a service that no services file names (local provider only)."""
    return ServiceDefinition(name=name)


class ServicesFile(BaseModel):
    """``[[service]]`` tables in TOML, or ``{"service": [...]}`` (or a bare list) in JSON."""

    model_config = ConfigDict(extra="forbid")

    service: list[ServiceDefinition] = []

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        return {"service": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _unique_names(self) -> ServicesFile:
        names = [s.name for s in self.service]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"services defined more than once: {', '.join(dupes)}")
        return self

    @classmethod
    def load(cls, path: Path) -> ServicesFile:
        """Read a ``.toml`` or ``.json`` file; raises ValueError (or OSError) on a bad one."""
        suffix = path.suffix.lower()
        if suffix == ".toml":
            data: Any = tomllib.loads(path.read_text())
        elif suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise ValueError(f"{path}: services file must end in .toml or .json")
        return cls.model_validate(data)

    def by_name(self) -> dict[str, ServiceDefinition]:
        return {s.name: s for s in self.service}


class Resource(BaseModel):
    """One running compute resource: a local process or an EC2 instance."""

    id: str
    service: str
    created_at: datetime
    address: str | None = None
    pid: int | None = None


class ServiceStatus(BaseModel):
    """The body of every successful per-service answer."""

    service: str
    running_resources: int


class ServiceSummary(ServiceStatus):
    """One entry of ``GET /services``."""

    resources: list[Resource]
