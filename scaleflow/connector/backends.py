"""Where a connector's resources live: local processes or EC2 instances.

Backends are synchronous and not thread-safe per service: the app serializes calls
for one service with a lock and runs them in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from scaleflow.activities import processes
from scaleflow.connector.models import (
    NAME_PATTERN,
    PORT_NAME_PATTERN,
    Resource,
    ServiceDefinition,
)

SERVICE_TAG = "genisys:service"


class BackendError(Exception):
    """The backend could not do what was asked (answered as 502)."""


class Backend(Protocol):
    def running(self, service: ServiceDefinition) -> list[Resource]:
        """Live resources of ``service``, oldest first."""
        ...

    def start(self, service: ServiceDefinition) -> Resource:
        """Start one resource; raises BackendError if it does not come up."""
        ...

    def kill(self, service: ServiceDefinition, resource: Resource) -> None:
        """Stop ``resource``; one already gone is fine."""
        ...

    def services(self) -> list[str]:
        """Names of services that have live resources (for ``GET /services``)."""
        ...


# ---- local processes -----------------------------------------------------------


class LocalRecord(BaseModel):
    id: str
    service: str
    argv: list[str]
    environment: dict[str, str] = {}
    host: str
    ports: dict[str, int] = {}
    pid: int | None = None
    # The kernel's start time of `pid`: a reused pid has another one.
    start_ticks: int | None = None
    created_at: datetime

    def resource(self) -> Resource:
        port = next(iter(self.ports.values()), None)
        address = f"{self.host}:{port}" if port is not None else None
        return Resource(
            id=self.id,
            service=self.service,
            created_at=self.created_at,
            address=address,
            pid=self.pid,
        )


_PLACEHOLDER = re.compile(r"\{(host|service|id|port(?:_" + PORT_NAME_PATTERN + r")?)\}")


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); fields after the parenthesised name start at field 3.
    try:
        return int(stat.rsplit(")", 1)[-1].split()[19])
    except (IndexError, ValueError):
        return None


def _mentions_port(argv: list[str], environment: dict[str, str]) -> bool:
    return any("{port}" in s for s in (*argv, *environment.values()))


class LocalBackend:
    """Real processes on this machine, recorded under ``<state_dir>/connector/<service>/``.

    A record is written before its process starts and keeps the pid, so a restarted
    connector finds its processes again (and does not count a reused pid).
    """

    def __init__(
        self,
        state_dir: Path,
        host: str = "127.0.0.1",
        memcached_bin: str = "memcached",
        start_timeout_s: float = 10.0,
        start_attempts: int = 3,
        settle_s: float = 0.2,
    ) -> None:
        self.dir = Path(state_dir) / "connector"
        self.host = host
        self.memcached_bin = memcached_bin
        self.start_timeout_s = start_timeout_s
        self.start_attempts = start_attempts
        self.settle_s = settle_s

    # ---- records ------------------------------------------------------------

    def _service_dir(self, name: str) -> Path:
        if not re.match(NAME_PATTERN, name):
            raise BackendError(f"invalid service name {name!r}")
        return self.dir / name

    def _path(self, rec: LocalRecord) -> Path:
        return self._service_dir(rec.service) / f"{rec.id}.json"

    def _log(self, rec: LocalRecord) -> Path:
        return self._service_dir(rec.service) / "logs" / f"{rec.id}.log"

    def _save(self, rec: LocalRecord) -> None:
        path = self._path(rec)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(rec.model_dump_json())
        os.replace(tmp, path)

    def _records(self, name: str) -> list[LocalRecord]:
        out = []
        for path in sorted(self._service_dir(name).glob("*.json")):
            try:
                out.append(LocalRecord.model_validate_json(path.read_text()))
            except (OSError, ValueError):
                continue  # a torn or foreign file is not a resource
        return sorted(out, key=lambda r: (r.created_at, r.id))

    def _forget(self, rec: LocalRecord) -> None:
        self._path(rec).unlink(missing_ok=True)

    # ---- processes ----------------------------------------------------------

    def _live_pid(self, rec: LocalRecord) -> int | None:
        if rec.pid is not None and processes.is_running(rec.pid):
            if rec.start_ticks is None or _start_ticks(rec.pid) == rec.start_ticks:
                return rec.pid
            return None
        if rec.pid is not None:
            processes.reap(rec.pid)  # our own child, died behind our back
        return None

    def _adopt(self, rec: LocalRecord) -> LocalRecord | None:
        """A record whose spawn was interrupted: find a memcached on its port, if any."""
        port = next(iter(rec.ports.values()), None)
        if port is None:
            return None
        pid = processes.find_listening(rec.argv[0], rec.host, port)
        if pid is None:
            return None
        rec = rec.model_copy(update={"pid": pid, "start_ticks": _start_ticks(pid)})
        self._save(rec)
        return rec

    def _command(
        self, rec_id: str, service: ServiceDefinition
    ) -> tuple[list[str], dict[str, str], dict[str, int]]:
        """The argv, environment and ports of a new resource, placeholders substituted."""
        argv = service.argv(self.memcached_bin)
        env = dict(service.environment)
        names = list(service.ports)
        if not names and _mentions_port(argv, env):
            names = ["port"]
        ports = {n: processes.free_port(self.host) for n in names}
        values = {"host": self.host, "service": service.name, "id": rec_id}
        values |= {f"port_{n}": str(p) for n, p in ports.items()}
        if ports:
            values["port"] = str(next(iter(ports.values())))

        def sub(s: str) -> str:
            return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), s)

        argv = [sub(a) for a in argv]
        env = {k: sub(v) for k, v in env.items()}
        # memcached refuses to run as root unless told which user to be.
        if os.geteuid() == 0 and os.path.basename(argv[0]) == "memcached" and "-u" not in argv:
            argv += ["-u", "root"]
        return argv, env, ports

    def _spawn(self, rec: LocalRecord) -> tuple[str, bool] | None:
        """Start ``rec``'s process; None once it runs (and listens), else why not and
        whether fresh ports are worth another try."""
        # `env` sets the service's variables and execs the command, so the pid and
        # its cmdline are the command's own (processes.spawn takes no environment).
        args = rec.argv
        if rec.environment:
            args = ["env", *(f"{k}={v}" for k, v in rec.environment.items()), *rec.argv]
        log = self._log(rec)
        try:
            pid = processes.spawn(args, log)
        except OSError as exc:
            return f"cannot run {rec.argv[0]!r}: {exc.strerror or exc}", False
        rec.pid, rec.start_ticks = pid, _start_ticks(pid)
        self._save(rec)
        if rec.ports:
            # The first port is the resource's address: it is up once that accepts.
            name, port = next(iter(rec.ports.items()))
            if processes.wait_listening(rec.host, port, pid, self.start_timeout_s):
                return None
            if processes.is_running(pid):
                self._stop(pid)
                return f"did not listen on {rec.host}:{port} ({name}) in time", False
            # Maybe the port was taken between free_port and the bind.
            return f"exited at start{_tail(log)}", True
        # Nothing to wait for: a process still there a moment after its exec counts.
        if not _settles(pid, self.settle_s):
            processes.reap(pid)
            return f"exited at start{_tail(log)}", False
        return None

    @staticmethod
    def _stop(pid: int) -> None:
        # A session leader's group includes whatever the command forked.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        processes.stop(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    # ---- the backend contract -------------------------------------------------

    def running(self, service: ServiceDefinition) -> list[Resource]:
        live = []
        for rec in self._records(service.name):
            if rec.pid is None:
                adopted = self._adopt(rec)
                if adopted is None:
                    self._forget(rec)
                    continue
                rec = adopted
            if self._live_pid(rec) is None:
                self._forget(rec)
                continue
            live.append(rec.resource())
        return live

    def start(self, service: ServiceDefinition) -> Resource:
        reason = "not started"
        for _ in range(max(1, self.start_attempts)):
            rec_id = uuid.uuid4().hex[:12]
            argv, env, ports = self._command(rec_id, service)
            rec = LocalRecord(
                id=rec_id,
                service=service.name,
                argv=argv,
                environment=env,
                host=self.host,
                ports=ports,
                created_at=datetime.now(UTC),
            )
            self._save(rec)  # before the spawn: a crash in between can still be adopted
            failure = self._spawn(rec)
            if failure is None:
                return rec.resource()
            self._forget(rec)
            reason, retry = failure
            if not retry:
                break
        raise BackendError(f"could not start a resource of service {service.name}: {reason}")

    def kill(self, service: ServiceDefinition, resource: Resource) -> None:
        for rec in self._records(service.name):
            if rec.id != resource.id:
                continue
            if self._live_pid(rec) is not None and rec.pid is not None:
                self._stop(rec.pid)
            self._forget(rec)
            self._log(rec).unlink(missing_ok=True)

    def services(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if p.is_dir() and any(p.glob("*.json")))


def _settles(pid: int, seconds: float) -> bool:
    """True if ``pid`` is still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not processes.is_running(pid):
            return False
        time.sleep(0.01)
    return processes.is_running(pid)


def _tail(log: Path, limit: int = 400) -> str:
    try:
        text = log.read_text(errors="replace").strip()
    except OSError:
        return ""
    return f": {text[-limit:]}" if text else ""


# ---- EC2 instances ----------------------------------------------------------------

# Instances that count: on their way up or up. Shutting-down ones are going away.
LIVE_STATES = ["pending", "running"]


class Ec2Backend:
    """EC2 instances tagged ``genisys:service=<name>``, one per resource."""

    def __init__(self, endpoint_url: str | None = None, region: str = "us-east-1") -> None:
        self.ec2: Any = boto3.client("ec2", endpoint_url=endpoint_url, region_name=region)

    def _instances(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        filters = [*filters, {"Name": "instance-state-name", "Values": LIVE_STATES}]
        out: list[dict[str, Any]] = []
        try:
            for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page.get("Reservations", []):
                    out.extend(reservation.get("Instances", []))
        except (ClientError, BotoCoreError) as exc:
            raise BackendError(f"cannot list EC2 instances: {exc}") from exc
        # The filter is applied again here: a state may change between pages.
        return [i for i in out if i.get("State", {}).get("Name") in LIVE_STATES]

    @staticmethod
    def _resource(service: str, inst: dict[str, Any]) -> Resource:
        return Resource(
            id=inst["InstanceId"],
            service=service,
            created_at=inst.get("LaunchTime") or datetime.now(UTC),
            address=inst.get("PrivateIpAddress"),
        )

    def running(self, service: ServiceDefinition) -> list[Resource]:
        found = self._instances([{"Name": f"tag:{SERVICE_TAG}", "Values": [service.name]}])
        out = [self._resource(service.name, i) for i in found]
        return sorted(out, key=lambda r: (r.created_at, r.id))

    def start(self, service: ServiceDefinition) -> Resource:
        if not service.image_id:
            raise BackendError(f"service {service.name} has no image_id")
        tags = [{"Key": SERVICE_TAG, "Value": service.name}, {"Key": "Name", "Value": service.name}]
        try:
            resp = self.ec2.run_instances(
                ImageId=service.image_id,
                InstanceType=service.instance_type,
                MinCount=1,
                MaxCount=1,
                # Makes a retried call by boto3 start one instance, not two.
                ClientToken=uuid.uuid4().hex,
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
            )
        except (ClientError, BotoCoreError) as exc:
            raise BackendError(f"cannot start an instance of {service.name}: {exc}") from exc
        return self._resource(service.name, resp["Instances"][0])

    def kill(self, service: ServiceDefinition, resource: Resource) -> None:
        try:
            self.ec2.terminate_instances(InstanceIds=[resource.id])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidInstanceID.NotFound":
                return
            raise BackendError(f"cannot terminate {resource.id}: {exc}") from exc
        except BotoCoreError as exc:
            raise BackendError(f"cannot terminate {resource.id}: {exc}") from exc

    def services(self) -> list[str]:
        found = self._instances([{"Name": "tag-key", "Values": [SERVICE_TAG]}])
        names = {
            t["Value"] for i in found for t in i.get("Tags", []) if t.get("Key") == SERVICE_TAG
        }
        return sorted(names)
