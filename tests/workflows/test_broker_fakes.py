"""A simulated set of Redis Cluster nodes behind the broker's real activity names, for
tests about orchestration only; and checks that it behaves like the activities it stands
in for. Other broker tests import ``FakeRedis`` from here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from temporalio import activity
from temporalio.exceptions import ApplicationError

from scaleflow.core.broker.activity_io import (
    DestroyProxyInput,
    FailoverInput,
    FailoverResult,
    FormClusterInput,
    FormClusterResult,
    MigrateSlotsInput,
    MigrateSlotsResult,
    PingNodesInput,
    PingNodesResult,
    ProvisionProxyInput,
    ProvisionProxyResult,
    ProxyInfo,
    RemoveNodesInput,
    RemoveNodesResult,
)
from scaleflow.core.broker.chunks import master_indexes, stable_ranges
from scaleflow.core.broker.models import BrokerMeta, Role
from scaleflow.core.broker.ranges import label, normalize
from scaleflow.core.models import ActivityReport, EventNote

KEYS_PER_SLOT = 3


@dataclass
class FakeNode:
    address: str
    group: str | None = None  # the Redis cluster it is in (None: on its own)
    role: Role = Role.MASTER
    master: str | None = None
    slots: set[int] = field(default_factory=set)
    alive: bool = True


@dataclass
class Gate:
    """Holds an activity until opened (set ``open`` to let it through)."""

    open: asyncio.Event = field(default_factory=asyncio.Event)
    entered: int = 0
    left: int = 0

    async def passage(self) -> None:
        self.entered += 1
        try:
            while not self.open.is_set():
                activity.heartbeat()
                await asyncio.sleep(0.05)
        finally:
            self.left += 1

    async def release(self) -> None:
        """Open, and wait until every activity held here has gone on."""
        self.open.set()
        while self.left < self.entered:
            await asyncio.sleep(0.02)


def _fatal(message: str) -> ApplicationError:
    return ApplicationError(message, {"source": "redis"}, non_retryable=True)


def _retry(message: str) -> ApplicationError:
    return ApplicationError(message, {"source": "redis"})


@dataclass
class FakeRedis:
    nodes: dict[str, FakeNode] = field(default_factory=dict)
    proxies: dict[str, ProxyInfo] = field(default_factory=dict)
    destroyed: list[str] = field(default_factory=list)
    calls: list[tuple[str, object]] = field(default_factory=list)
    migrate_gate: Gate | None = None
    form_gate: Gate | None = None
    # The next this many calls fail for good (non-retryable), as a broken node would.
    failing_moves: int = 0
    failing_removals: int = 0
    next_port: dict[str, int] = field(default_factory=dict)

    def node(self, address: str) -> FakeNode:
        return self.nodes.setdefault(address, FakeNode(address))

    def kill(self, *addresses: str) -> None:
        for a in addresses:
            self.node(a).alive = False

    def _live(self, address: str) -> FakeNode:
        n = self.node(address)
        if not n.alive:
            raise _retry(f"redis node unreachable: {address}")
        return n

    # ---- what the activities do ---------------------------------------------------------

    def form(self, req: FormClusterInput) -> FormClusterResult:
        specs = [self._live(s.address) for s in req.nodes]
        groups = {n.group for n in specs if n.group is not None}
        group = sorted(groups)[0] if groups else req.nodes[0].address
        owned = {s for n in self.nodes.values() if n.group == group for s in n.slots}
        for spec, n in zip(req.nodes, specs, strict=True):
            if n.group not in (None, group):
                raise _fatal(f"{n.address} is in another cluster")
            n.group = group
            if spec.role is Role.REPLICA:
                if n.role is Role.MASTER and n.slots:
                    raise _fatal(f"{n.address} owns slots and cannot replicate {spec.master}")
                n.role, n.master = Role.REPLICA, spec.master
            else:
                # Like the real activity: slots no node owns are given in a create only.
                free = {s for a, b in spec.slots for s in range(a, b + 1)} - owned
                if free and not req.assign_slots:
                    raise _retry(f"no node of this membership owns slots of {n.address}")
                n.slots |= free
                owned |= free
                if n.role is Role.REPLICA:
                    raise _fatal(f"{n.address} is a replica, not a master")
        note = EventNote(message=f"cluster of {len(req.nodes)} nodes is ok on every node")
        return FormClusterResult(node_ids={s.address: s.address for s in req.nodes}, events=[note])

    def remove(self, req: RemoveNodesInput) -> RemoveNodesResult:
        for a in req.keep:
            self._live(a)
        unreachable = [a for a in req.remove if not self.node(a).alive]
        for a in req.remove:
            n = self.node(a)
            if not n.alive:
                continue
            # The real activity refuses a master with slots in a cluster; a whole
            # cluster's deletion (nothing kept) is what the entity asks of it.
            if req.keep and n.role is Role.MASTER and n.slots:
                raise _fatal(f"{a} still owns slots: move them first")
        for a in req.remove:
            n = self.node(a)
            if n.alive:
                n.group, n.role, n.master, n.slots = None, Role.MASTER, None, set()
        for n in self.nodes.values():
            if n.master in req.remove and n.address in req.keep:
                raise _fatal(f"{n.address} replicates a node being removed")
        note = EventNote(message=f"removed {', '.join(req.remove)} from the cluster")
        return RemoveNodesResult(reset=req.remove, unreachable=unreachable, events=[note])

    def migrate(self, req: MigrateSlotsInput) -> MigrateSlotsResult:
        src, dst = self._live(req.source), self._live(req.target)
        if src.role is not Role.MASTER or dst.role is not Role.MASTER:
            raise _fatal(f"{req.source} and {req.target} must both be masters")
        slots = {s for a, b in req.ranges for s in range(a, b + 1)}
        stray = slots - src.slots - dst.slots
        if stray:
            raise _fatal(f"slots {label(normalize((s, s) for s in stray))} are not the source's")
        moved = slots & src.slots
        src.slots -= moved
        dst.slots |= slots
        keys = KEYS_PER_SLOT * len(moved)
        what = f"migrated slots {req.label()}: {keys:,} keys"
        note = EventNote(message=f"{what} from {req.source} to {req.target}", source="redis")
        return MigrateSlotsResult(keys=keys, bytes=keys * 10, slots=len(slots), events=[note])

    def failover(self, req: FailoverInput) -> FailoverResult:
        n = self._live(req.replica)
        if n.role is Role.MASTER:
            return FailoverResult(master=req.replica)
        old = self.node(n.master or "")
        n.role, n.master, n.slots = Role.MASTER, None, old.slots
        old.slots = set()
        old.role, old.master = Role.REPLICA, req.replica
        how = "replaced" if old.alive else "took over from"
        note = EventNote(message=f"{req.replica} {how} {old.address}", source="redis")
        return FailoverResult(master=req.replica, replaced=old.address, events=[note])

    def ping(self, req: PingNodesInput) -> PingNodesResult:
        dead = [a for a in req.addresses if not self.node(a).alive]
        return PingNodesResult(alive=[a for a in req.addresses if a not in dead], dead=dead)

    def provision(self, req: ProvisionProxyInput) -> ProvisionProxyResult:
        info = self.proxies.get(req.proxy_id)
        if info is None:
            port = self.next_port.get(req.host, 7000)
            self.next_port[req.host] = port + 2
            addresses = (f"{req.host}:{port}", f"{req.host}:{port + 1}")
            info = ProxyInfo(proxy_id=req.proxy_id, host=req.host, node_addresses=addresses)
            self.proxies[req.proxy_id] = info
        for a in info.node_addresses:
            self.node(a).alive = True
        note = EventNote(message=f"started proxy {req.proxy_id}", source="redis")
        return ProvisionProxyResult(proxy=info, events=[note])

    def destroy(self, req: DestroyProxyInput) -> ActivityReport:
        info = self.proxies.pop(req.proxy_id, None)
        self.destroyed.append(req.proxy_id)
        for a in info.node_addresses if info else ():
            self.nodes.pop(a, None)
        return ActivityReport(events=[EventNote(message=f"destroyed proxy {req.proxy_id}")])

    # ---- the activities, under their real names --------------------------------------------

    def activities(self) -> list[Callable[..., object]]:
        world = self

        @activity.defn(name="form_redis_cluster")
        async def form_redis_cluster(req: FormClusterInput) -> FormClusterResult:
            world.calls.append(("form", req))
            if world.form_gate is not None:
                await world.form_gate.passage()
            return world.form(req)

        @activity.defn(name="remove_redis_nodes")
        async def remove_redis_nodes(req: RemoveNodesInput) -> RemoveNodesResult:
            world.calls.append(("remove", req))
            if world.failing_removals > 0:
                world.failing_removals -= 1
                raise _fatal("the node refused CLUSTER RESET")
            return world.remove(req)

        @activity.defn(name="migrate_redis_slots")
        async def migrate_redis_slots(req: MigrateSlotsInput) -> MigrateSlotsResult:
            world.calls.append(("migrate", req))
            if world.migrate_gate is not None:
                await world.migrate_gate.passage()
            if world.failing_moves > 0:
                world.failing_moves -= 1
                raise _fatal("MIGRATE failed: IOERR")
            return world.migrate(req)

        @activity.defn(name="failover_redis_node")
        async def failover_redis_node(req: FailoverInput) -> FailoverResult:
            world.calls.append(("failover", req))
            return world.failover(req)

        @activity.defn(name="ping_redis_nodes")
        async def ping_redis_nodes(req: PingNodesInput) -> PingNodesResult:
            return world.ping(req)

        @activity.defn(name="provision_redis_proxy")
        async def provision_redis_proxy(req: ProvisionProxyInput) -> ProvisionProxyResult:
            world.calls.append(("provision", req))
            return world.provision(req)

        @activity.defn(name="destroy_redis_proxy")
        async def destroy_redis_proxy(req: DestroyProxyInput) -> ActivityReport:
            world.calls.append(("destroy", req))
            return world.destroy(req)

        return [
            form_redis_cluster,
            remove_redis_nodes,
            migrate_redis_slots,
            failover_redis_node,
            ping_redis_nodes,
            provision_redis_proxy,
            destroy_redis_proxy,
        ]

    # ---- the metadata against the nodes ----------------------------------------------------

    def check_matches(self, meta: BrokerMeta) -> None:
        """Each settled cluster's masters, replicas and slots are as its metadata says (the
        test's ``CLUSTER SHARDS``), and every node out of a cluster is reset."""
        failed = set(meta.failed_proxies)
        in_use: set[str] = set()
        for cluster in meta.clusters.values():
            groups = set()
            masters = set(master_indexes(cluster))
            for i, node in enumerate(cluster.nodes):
                in_use.add(node.address)
                if node.proxy_address in failed:
                    continue
                fake = self.node(node.address)
                assert fake.alive, f"{node.address} of {cluster.name} is down"
                groups.add(fake.group)
                if i in masters:
                    assert fake.role is Role.MASTER, f"{node.address} should be a master"
                    want = {s for a, b in stable_ranges(node) for s in range(a, b + 1)}
                    if all(s.is_stable for s in node.slots):
                        assert fake.slots == want, f"{node.address}: slots differ"
                else:
                    assert fake.role is Role.REPLICA, f"{node.address} should be a replica"
                    assert fake.master == node.repl.peers[0].node_address
            assert len(groups) == 1 and None not in groups, f"{cluster.name} is split: {groups}"
        for a, n in self.nodes.items():
            if a not in in_use and n.alive:
                assert n.group is None and not n.slots, f"{a} is out of use but not reset"


# ---- the fake itself ----------------------------------------------------------------------


def _form_input(*specs: tuple[str, Role, str | None, list[tuple[int, int]]]) -> FormClusterInput:
    return FormClusterInput.model_validate(
        {
            "nodes": [{"address": a, "role": r, "master": m, "slots": s} for a, r, m, s in specs],
            "assign_slots": True,
        }
    )


def test_fake_forms_migrates_fails_over_and_removes() -> None:
    world = FakeRedis()
    world.form(
        _form_input(
            ("127.0.0.2:1", Role.MASTER, None, [(0, 9)]),
            ("127.0.0.3:1", Role.MASTER, None, [(10, 19)]),
            ("127.0.0.3:2", Role.REPLICA, "127.0.0.2:1", []),
        )
    )
    assert world.node("127.0.0.3:2").master == "127.0.0.2:1"
    got = world.migrate(
        MigrateSlotsInput(source="127.0.0.2:1", target="127.0.0.3:1", ranges=[(5, 9)])
    )
    assert got.keys == 5 * KEYS_PER_SLOT and world.node("127.0.0.3:1").slots == set(range(5, 20))
    world.kill("127.0.0.2:1")
    world.failover(FailoverInput(replica="127.0.0.3:2"))
    assert world.node("127.0.0.3:2").slots == set(range(5))
    world.remove(RemoveNodesInput(remove=["127.0.0.2:1"], keep=["127.0.0.3:1", "127.0.0.3:2"]))
    try:
        world.remove(RemoveNodesInput(remove=["127.0.0.3:1"], keep=["127.0.0.3:2"]))
    except ApplicationError as err:
        assert "owns slots" in str(err)
    else:
        raise AssertionError("a master with slots was removed")
