"""The ``local`` proxy provider: each proxy is two redis-server processes in cluster mode.

A proxy has a record ``<state_dir>/redis-proxies/<proxy_id>.json`` and a folder beside
it with each node's config, cluster config file, pid file and log. The record is
written before the processes start, so a worker killed in between finds the ports again
and adopts the processes instead of starting a second pair. The processes run in their
own session: they outlive the worker, like the memcached nodes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel
from temporalio import activity

from scaleflow.activities import processes
from scaleflow.activities.notes import fatal, note, retryable
from scaleflow.core.broker.activity_io import (
    DestroyProxyInput,
    ListProxiesResult,
    ProvisionProxyInput,
    ProvisionProxyResult,
    ProxyInfo,
)
from scaleflow.core.models import ActivityReport
from scaleflow.core.settings import Settings

SOURCE = "redis"
REDIS_SERVER_BIN = "redis-server"
# The machine's own Redis (and its bus port): never ours.
RESERVED_PORTS = frozenset({6379, 16379})
# Also how long a new empty master waits before it says cluster_state:ok (Redis's
# rejoin delay is this, at least 500 ms): short keeps adding nodes fast.
NODE_TIMEOUT_MS = 2000


class ProxyRecord(BaseModel):
    proxy_id: str
    host: str
    ports: tuple[int, int]
    # Set explicitly (cluster-port): the default, port + 10000, may be taken or too high.
    bus_ports: tuple[int, int]
    pids: tuple[int | None, int | None] = (None, None)
    created_at: datetime

    def address(self, i: int) -> str:
        return f"{self.host}:{self.ports[i]}"

    def info(self, pids: tuple[int | None, int | None] | None = None) -> ProxyInfo:
        return ProxyInfo(
            proxy_id=self.proxy_id,
            host=self.host,
            node_addresses=(self.address(0), self.address(1)),
            pids=self.pids if pids is None else pids,
        )


def _free_ports(host: str, n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = processes.free_port(host)
        if p not in ports and p not in RESERVED_PORTS:
            ports.append(p)
    return ports


class LocalProxies:
    """Blocking methods; they run in activity threads."""

    name = "local"

    def __init__(self, settings: Settings, redis_bin: str = REDIS_SERVER_BIN) -> None:
        self.dir = (settings.state_dir / "redis-proxies").resolve()
        self.bin = redis_bin

    # ---- records ------------------------------------------------------------

    def _path(self, proxy_id: str) -> Path:
        if "/" in proxy_id or proxy_id.startswith("."):
            raise fatal(f"invalid proxy id {proxy_id!r}", SOURCE)
        return self.dir / f"{proxy_id}.json"

    def load(self, proxy_id: str) -> ProxyRecord | None:
        try:
            return ProxyRecord.model_validate_json(self._path(proxy_id).read_text())
        except (OSError, ValueError):
            return None

    def _save(self, rec: ProxyRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(rec.proxy_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(rec.model_dump_json())
        os.replace(tmp, path)

    def records(self) -> list[ProxyRecord]:
        if not self.dir.exists():
            return []
        found = [self.load(p.stem) for p in sorted(self.dir.glob("*.json"))]
        return [r for r in found if r is not None]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # A retried activity may overlap the attempt it replaces, and two new proxies
        # must not pick the same free ports: one change at a time.
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def node_dir(self, proxy_id: str) -> Path:
        return self.dir / proxy_id

    def config_path(self, proxy_id: str, i: int) -> Path:
        return self.node_dir(proxy_id) / f"node-{i}.conf"

    # ---- processes ----------------------------------------------------------

    def _write_config(self, rec: ProxyRecord, i: int) -> Path:
        d = self.node_dir(rec.proxy_id)
        d.mkdir(parents=True, exist_ok=True)
        lines = [
            f"bind {rec.host}",
            # Protected mode takes only 127.0.0.1 for loopback: it would refuse the
            # replication links between 127.0.0.N hosts. Binding loopback is the guard.
            "protected-mode no",
            f"port {rec.ports[i]}",
            f"cluster-port {rec.bus_ports[i]}",
            "cluster-enabled yes",
            f"cluster-config-file {d / f'nodes-{i}.conf'}",
            # Without both, peers record 127.0.0.1 and the handshake stalls.
            f"cluster-announce-ip {rec.host}",
            f"bind-source-addr {rec.host}",
            f"cluster-node-timeout {NODE_TIMEOUT_MS}",
            # The broker decides every failover and slot move.
            "cluster-replica-no-failover yes",
            "cluster-allow-replica-migration no",
            "cluster-require-full-coverage no",
            'save ""',
            "appendonly no",
            "repl-diskless-sync-delay 0",
            "shutdown-timeout 1",
            f"dir {d}",
            f"pidfile {d / f'node-{i}.pid'}",
            # The config path in the process title tells this state dir's processes apart.
            'proc-title-template "{title} {listen-addr} {server-mode} {config-file}"',
        ]
        path = self.config_path(rec.proxy_id, i)
        path.write_text("\n".join(lines) + "\n")
        return path

    def _is_ours(self, pid: int, conf: Path) -> bool:
        return processes.is_running(pid) and any(str(conf) in a for a in processes.cmdline(pid))

    def _find(self, conf: Path) -> int | None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._is_ours(int(entry.name), conf):
                return int(entry.name)
        return None

    def running_pids(self, rec: ProxyRecord) -> tuple[int | None, int | None]:
        found: list[int | None] = []
        for i in (0, 1):
            conf = self.config_path(rec.proxy_id, i)
            pid = rec.pids[i]
            found.append(pid if pid and self._is_ours(pid, conf) else self._find(conf))
        return found[0], found[1]

    def _start_node(self, rec: ProxyRecord, i: int, attempts: int = 3) -> ProxyRecord:
        """Start node i; a port taken meanwhile moves it to new ones."""
        for _ in range(attempts):
            conf = self._write_config(rec, i)
            log = self.node_dir(rec.proxy_id) / f"node-{i}.log"
            pid = processes.spawn([self.bin, str(conf)], log)
            pids = list(rec.pids)
            pids[i] = pid
            rec = rec.model_copy(update={"pids": tuple(pids)})
            self._save(rec)
            if processes.wait_listening(rec.host, rec.ports[i], pid, timeout_s=5.0):
                return rec
            if processes.is_running(pid):
                processes.stop(pid)
            port, bus = _free_ports(rec.host, 2)
            ports, buses = list(rec.ports), list(rec.bus_ports)
            ports[i], buses[i], pids[i] = port, bus, None
            rec = rec.model_copy(
                update={"ports": tuple(ports), "bus_ports": tuple(buses), "pids": tuple(pids)}
            )
            self._save(rec)
        raise retryable(f"redis-server of proxy {rec.proxy_id} exited at start", SOURCE)

    # ---- the provider contract ---------------------------------------------

    def provision(self, req: ProvisionProxyInput) -> ProvisionProxyResult:
        if shutil.which(self.bin) is None:
            raise fatal(f"{self.bin} is not installed: run scripts/install-system-deps.sh", SOURCE)
        with self._locked():
            rec = self.load(req.proxy_id)
            if rec is not None and rec.host != req.host:
                raise fatal(
                    f"proxy {req.proxy_id} already exists on host {rec.host}, not {req.host}",
                    SOURCE,
                )
            if rec is None:
                p0, p1, b0, b1 = _free_ports(req.host, 4)
                rec = ProxyRecord(
                    proxy_id=req.proxy_id,
                    host=req.host,
                    ports=(p0, p1),
                    bus_ports=(b0, b1),
                    created_at=datetime.now(UTC),
                )
                self._save(rec)
            running = self.running_pids(rec)
            if running != rec.pids:
                rec = rec.model_copy(update={"pids": running})
                self._save(rec)
            started = []
            for i in (0, 1):
                if running[i] is None:
                    rec = self._start_node(rec, i)
                    started.append(rec.address(i))
        info = rec.info()
        if started:
            message = f"started proxy {req.proxy_id} on {req.host}: nodes " + ", ".join(started)
        else:
            message = f"found proxy {req.proxy_id} running at {info.proxy_address}"
        return ProvisionProxyResult(proxy=info, events=[note(message, SOURCE)])

    def destroy(self, req: DestroyProxyInput) -> ActivityReport:
        with self._locked():
            rec = self.load(req.proxy_id)
            stopped = []
            if rec is not None:
                for i, pid in enumerate(self.running_pids(rec)):
                    if pid is not None:
                        processes.stop(pid)
                        stopped.append(rec.address(i))
            # A record lost after its processes started: find them by config path.
            for i in (0, 1):
                pid = self._find(self.config_path(req.proxy_id, i))
                if pid is not None:
                    processes.stop(pid)
            shutil.rmtree(self.node_dir(req.proxy_id), ignore_errors=True)
            self._path(req.proxy_id).unlink(missing_ok=True)
        if rec is None:
            message = f"proxy {req.proxy_id} was already gone"
        else:
            message = f"destroyed proxy {req.proxy_id} ({', '.join(stopped) or 'not running'})"
        return ActivityReport(events=[note(message, SOURCE)])

    def list(self) -> ListProxiesResult:
        return ListProxiesResult(proxies=[r.info(self.running_pids(r)) for r in self.records()])

    # ---- the dev stack's start and stop --------------------------------------

    def stop_all(self) -> list[str]:
        """Stop every recorded proxy's processes but keep the records for ``revive_all``."""
        stopped = []
        with self._locked():
            for rec in self.records():
                for i, pid in enumerate(self.running_pids(rec)):
                    if pid is not None:
                        processes.stop(pid)
                        stopped.append(rec.address(i))
        return stopped

    def revive_all(self) -> list[str]:
        """Start again the recorded proxies whose processes are gone. Their cluster config
        files bring them back into their clusters, empty: Redis here keeps no data."""
        revived = []
        for rec in self.records():
            if None in self.running_pids(rec):
                self.provision(ProvisionProxyInput(proxy_id=rec.proxy_id, host=rec.host))
                revived.append(rec.proxy_id)
        return revived


class RedisProxyActivities:
    """The local proxy provider as activities."""

    def __init__(self, settings: Settings, proxies: LocalProxies | None = None) -> None:
        self.proxies = proxies if proxies is not None else LocalProxies(settings)

    @activity.defn(name="provision_redis_proxy")
    def provision_redis_proxy(self, req: ProvisionProxyInput) -> ProvisionProxyResult:
        return self.proxies.provision(req)

    @activity.defn(name="destroy_redis_proxy")
    def destroy_redis_proxy(self, req: DestroyProxyInput) -> ActivityReport:
        return self.proxies.destroy(req)

    @activity.defn(name="list_redis_proxies")
    def list_redis_proxies(self) -> ListProxiesResult:
        return self.proxies.list()
