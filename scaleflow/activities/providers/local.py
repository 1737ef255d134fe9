"""The ``local`` provider: real memcached processes on free loopback ports.

Each node has a record under ``<state_dir>/nodes/<node_id>.json``. The record is
written before the process starts, so a worker killed between the two finds the
port again and adopts the process instead of starting a second one.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from scaleflow.activities import processes
from scaleflow.activities.notes import fatal, note, retryable
from scaleflow.core.activity_io import (
    ListNodesInput,
    ListNodesResult,
    ProvisionInput,
    ProvisionResult,
    TerminateInput,
)
from scaleflow.core.models import ActivityReport, Node, NodeState
from scaleflow.core.settings import Settings

SOURCE = "local"


class LocalNodeRecord(BaseModel):
    node_id: str
    pool: str
    host: str
    # The name in the node's address when it differs from the bind address.
    advertise_host: str | None = None
    port: int
    pid: int | None = None
    capacity_mb: int
    extra_args: list[str] = []
    created_at: datetime

    @property
    def address(self) -> str:
        return f"{self.advertise_host or self.host}:{self.port}"


class LocalProvider:
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.dir = settings.nodes_dir
        self.bin = settings.memcached_bin
        self.host = settings.memcached_host
        advertise = (settings.memcached_advertise_host or "").strip()
        self.advertise_host = advertise if advertise and advertise != self.host else None

    # ---- records ------------------------------------------------------------

    def _path(self, node_id: str) -> Path:
        if "/" in node_id or node_id.startswith("."):
            raise fatal(f"invalid node id {node_id!r}", SOURCE)
        return self.dir / f"{node_id}.json"

    def load(self, node_id: str) -> LocalNodeRecord | None:
        try:
            return LocalNodeRecord.model_validate_json(self._path(node_id).read_text())
        except (OSError, ValueError):
            return None

    def _save(self, rec: LocalNodeRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(rec.node_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(rec.model_dump_json())
        os.replace(tmp, path)

    def records(self) -> list[LocalNodeRecord]:
        if not self.dir.exists():
            return []
        out = [self.load(p.stem) for p in sorted(self.dir.glob("*.json"))]
        return [r for r in out if r is not None]

    def _node(self, rec: LocalNodeRecord, state: NodeState) -> Node:
        return Node(
            id=rec.node_id,
            address=rec.address,
            provider_ref=rec.node_id,
            state=state,
            created_at=rec.created_at,
        )

    # ---- processes ----------------------------------------------------------

    def _args(self, rec: LocalNodeRecord) -> list[str]:
        args = [self.bin, "-l", rec.host, "-p", str(rec.port), "-U", "0"]
        # Unused without -d, but it names the node and its state dir in the command
        # line, so the processes of a state dir can always be told apart.
        args += ["-P", str(self.dir.resolve() / f"{rec.node_id}.pid")]
        args += ["-m", str(rec.capacity_mb), "-c", "4096", "-t", "2", *rec.extra_args]
        if os.geteuid() == 0:
            args += ["-u", "root"]
        return args

    def running_pid(self, rec: LocalNodeRecord) -> int | None:
        if rec.pid and processes.is_running(rec.pid):
            args = processes.cmdline(rec.pid)
            if str(rec.port) in args:
                return rec.pid
        return processes.find_listening(self.bin, rec.host, rec.port)

    def start(self, rec: LocalNodeRecord, attempts: int = 3) -> tuple[LocalNodeRecord, bool]:
        """Start the record's process; a port taken meanwhile moves it to a new one.
        Also says whether the process was seen listening."""
        for _ in range(attempts):
            pid = processes.spawn(self._args(rec), self.dir / "logs" / f"{rec.node_id}.log")
            rec = rec.model_copy(update={"pid": pid})
            self._save(rec)
            if processes.wait_listening(rec.host, rec.port, pid, timeout_s=2.0):
                return rec, True
            if processes.is_running(pid):
                return rec, False  # slow to boot: the readiness step waits for it
            rec = rec.model_copy(update={"port": processes.free_port(rec.host), "pid": None})
            self._save(rec)
        raise retryable(f"memcached for node {rec.node_id} exited at start", SOURCE)

    # ---- the provider contract ---------------------------------------------

    def provision(self, req: ProvisionInput) -> ProvisionResult:
        rec = self.load(req.node_id)
        if rec is not None:
            pid = self.running_pid(rec)
            if pid is not None:
                if pid != rec.pid:
                    rec = rec.model_copy(update={"pid": pid})
                    self._save(rec)
                return ProvisionResult(
                    node=self._node(rec, NodeState.PROVISIONING),
                    events=[note(f"found memcached node {rec.node_id} at {rec.address}", SOURCE)],
                )
        else:
            rec = LocalNodeRecord(
                node_id=req.node_id,
                pool=req.pool,
                host=self.host,
                advertise_host=self.advertise_host,
                port=processes.free_port(self.host),
                capacity_mb=req.config.capacity_mb,
                # -M: return errors when memory is full instead of evicting.
                extra_args=["-M"] if req.config.eviction == "none" else [],
                created_at=datetime.now(UTC),
            )
            self._save(rec)
        rec, listening = self.start(rec)
        # Seen listening on its own pid: ready, no separate readiness step needed.
        state = NodeState.READY if listening else NodeState.PROVISIONING
        seen = "; it is listening" if listening else "; waiting for it to listen"
        return ProvisionResult(
            node=self._node(rec, state),
            events=[
                note(
                    f"started memcached node {rec.node_id} at {rec.address} (pid {rec.pid}){seen}",
                    SOURCE,
                )
            ],
        )

    def terminate(self, req: TerminateInput) -> ActivityReport:
        rec = self.load(req.node.provider_ref or req.node.id)
        if rec is None:
            return ActivityReport(
                events=[note(f"memcached node {req.node.id} was already gone", SOURCE)]
            )
        pid = self.running_pid(rec)
        if pid is not None:
            processes.stop(pid)
        self._path(rec.node_id).unlink(missing_ok=True)
        return ActivityReport(
            events=[note(f"stopped memcached node {rec.node_id} at {rec.address}", SOURCE)]
        )

    def list_nodes(self, req: ListNodesInput) -> ListNodesResult:
        nodes = [self._node(r, NodeState.READY) for r in self.records() if r.pool == req.pool]
        return ListNodesResult(nodes=nodes)

    # ---- the embedded stack's start and stop ---------------------------------

    def stop_all(self) -> list[str]:
        """Stop every recorded node but keep its record, so ``revive_all`` finds it."""
        stopped = []
        for rec in self.records():
            pid = self.running_pid(rec)
            if pid is not None:
                processes.stop(pid)
                stopped.append(rec.node_id)
        return stopped

    def revive_all(self) -> list[str]:
        """Restart recorded nodes whose process is gone, on their recorded port."""
        revived = []
        for rec in self.records():
            if self.running_pid(rec) is None:
                self.start(rec.model_copy(update={"pid": None}))
                revived.append(rec.node_id)
        return revived
