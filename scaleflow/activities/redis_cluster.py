"""Redis Cluster activities of the broker, with redis-py: form, migrate, fail over, remove.

Every activity talks to the nodes directly (one ``redis.Redis`` per node) and is
idempotent: run again on a cluster already in the wanted state, it changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from temporalio import activity
from temporalio.exceptions import CancelledError

from scaleflow.activities.notes import fatal, note, retryable
from scaleflow.activities.threads import cancel_held_while_starting_threads
from scaleflow.core.broker.activity_io import (
    FailoverInput,
    FailoverResult,
    FormClusterInput,
    FormClusterResult,
    MigrateSlotsInput,
    MigrateSlotsProgress,
    MigrateSlotsResult,
    PingNodesInput,
    PingNodesResult,
    ReadShardsInput,
    ReadShardsResult,
    RemoveNodesInput,
    RemoveNodesResult,
    Shard,
    ShardNode,
)
from scaleflow.core.broker.models import Role
from scaleflow.core.broker.ranges import normalize
from scaleflow.core.models import EventNote
from scaleflow.core.settings import Settings
from scaleflow.core.slots import SLOTS, slot_of

SOURCE = "redis"
POLL_S = 0.05
# Redis gives up a manual failover after 5 s.
MANUAL_FAILOVER_S = 5.5

# ---- connections and CLUSTER NODES ------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def node_client(address: str, timeout_s: float) -> redis.Redis:
    host, port = split_address(address)
    # No retries inside redis-py (its default backs off for seconds): the activity's
    # retry policy decides, and a timed-out MIGRATE must not be sent twice blindly.
    return redis.Redis(
        host=host,
        port=port,
        socket_timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, 5.0),
        retry=Retry(NoBackoff(), 0),
    )


class Conns:
    """One client per node address, closed together."""

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self._clients: dict[str, redis.Redis] = {}

    def __getitem__(self, address: str) -> redis.Redis:
        if address not in self._clients:
            self._clients[address] = node_client(address, self.timeout_s)
        return self._clients[address]

    def close(self) -> None:
        for c in self._clients.values():
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()


@contextlib.contextmanager
def connections(timeout_s: float = 5.0) -> Iterator[Conns]:
    conns = Conns(timeout_s)
    try:
        yield conns
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise retryable(f"redis node unreachable: {e}", SOURCE) from e
    except redis.ResponseError as e:
        # CLUSTERDOWN, TRYAGAIN, LOADING and the like pass; a retry starts from a fresh view.
        raise retryable(f"redis error: {e}", SOURCE) from e
    finally:
        conns.close()


@dataclass
class NodeLine:
    """One line of CLUSTER NODES."""

    id: str
    address: str
    bus_port: int
    flags: frozenset[str]
    master_id: str | None
    config_epoch: int
    connected: bool
    ranges: list[tuple[int, int]] = field(default_factory=list)
    # Open slots; only the node's own line shows them.
    migrating: dict[int, str] = field(default_factory=dict)
    importing: dict[int, str] = field(default_factory=dict)

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def settled(self) -> bool:
        """Known for real: past the handshake, with an address, not failing."""
        return not self.flags & {"handshake", "noaddr", "fail", "fail?"}


def parse_node_line(line: str) -> NodeLine:
    parts = line.split()
    addr, _, bus = parts[1].partition("@")
    node = NodeLine(
        id=parts[0],
        address=addr,
        bus_port=int(bus.split(",")[0] or 0),
        flags=frozenset(parts[2].split(",")),
        master_id=None if parts[3] == "-" else parts[3],
        config_epoch=int(parts[6]),
        connected=parts[7] == "connected",
    )
    for token in parts[8:]:
        if token.startswith("["):
            slot, arrow, other = token[1:-1].partition("->-")
            if arrow:
                node.migrating[int(slot)] = other
            else:
                slot, _, other = token[1:-1].partition("-<-")
                node.importing[int(slot)] = other
        else:
            start, _, end = token.partition("-")
            node.ranges.append((int(start), int(end or start)))
    return node


@dataclass
class View:
    """One node's view of its cluster."""

    myself: NodeLine
    nodes: list[NodeLine]
    _owners: list[str | None] | None = field(default=None, repr=False)

    def by_id(self, node_id: str) -> NodeLine | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    def slot_owners(self) -> dict[str, list[tuple[int, int]]]:
        return {n.id: normalize(n.ranges) for n in self.nodes if n.ranges}

    def owner_of(self, slot: int) -> str | None:
        if self._owners is None:
            self._owners = [None] * SLOTS
            for n in self.nodes:
                for a, b in n.ranges:
                    self._owners[a : b + 1] = [n.id] * (b - a + 1)
        return self._owners[slot]


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def view_of(r: redis.Redis) -> View:
    lines = [parse_node_line(x) for x in _text(r.execute_command("CLUSTER", "NODES")).splitlines()]
    myself = next(n for n in lines if "myself" in n.flags)
    return View(myself=myself, nodes=lines)


def cluster_state_ok(r: redis.Redis) -> bool:
    return "cluster_state:ok" in _text(r.execute_command("CLUSTER", "INFO"))


def _heartbeat(*details: Any) -> None:
    if activity.in_activity():
        activity.heartbeat(*details)


def _label(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges) or "none"


# ---- forming: create and add nodes --------------------------------------------------------


def form_cluster(req: FormClusterInput, conns: Conns) -> FormClusterResult:
    """MEET, ADDSLOTSRANGE (a new cluster only), REPLICATE until every node agrees and
    says cluster_state:ok."""
    deadline = time.monotonic() + req.timeout_s
    events: list[EventNote] = []
    addresses = [n.address for n in req.nodes]
    slots_assigned = False
    while True:
        views = {a: view_of(conns[a]) for a in addresses}
        ids = {a: v.myself.id for a, v in views.items()}
        if not slots_assigned:
            _set_config_epochs(addresses, conns, views)
            if req.assign_slots:
                events += _assign_slots(req, conns, views)
            slots_assigned = True
            views = {a: view_of(conns[a]) for a in addresses}
            unowned = _unowned(req, views)
            if unowned:
                # Not a new cluster: the keys of these slots are on nodes this membership
                # leaves out, and no gossip brings them in. A later membership may.
                raise retryable(
                    f"no node of this membership owns slots {_label(unowned)}: "
                    "they are not given to nodes without their data",
                    SOURCE,
                )
        events += _meet(addresses, conns, views)
        events += _replicate(req, conns, views, ids)
        waiting = _not_formed(req, conns, views, ids)
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise retryable(f"the cluster did not form in {req.timeout_s:g} s: {waiting}", SOURCE)
        _heartbeat(waiting)
        time.sleep(POLL_S)
    masters = sum(1 for n in req.nodes if n.role == Role.MASTER)
    events.append(
        note(f"cluster of {len(addresses)} nodes ({masters} masters) is ok on every node", SOURCE)
    )
    return FormClusterResult(node_ids=ids, events=events)


def _set_config_epochs(addresses: list[str], conns: Conns, views: dict[str, View]) -> None:
    """Give each new node a config epoch of its own, as redis-cli's create does.

    Nodes otherwise start at 0 and settle collisions among themselves, which can leave
    a replica on the same epoch as its master: its TAKEOVER then claims the slots with
    an epoch no higher than theirs, and the other nodes never accept the claim.
    """
    fresh = [a for a in addresses if len(views[a].nodes) == 1 and not views[a].myself.config_epoch]
    if not fresh:
        return
    top = max(
        [n.config_epoch for v in views.values() for n in v.nodes]
        + [_current_epoch(conns[a]) for a in addresses]
    )
    for i, a in enumerate(fresh, start=1):
        conns[a].execute_command("CLUSTER", "SET-CONFIG-EPOCH", top + i)


def _current_epoch(r: redis.Redis) -> int:
    for line in _text(r.execute_command("CLUSTER", "INFO")).splitlines():
        if line.startswith("cluster_current_epoch:"):
            return int(line.split(":")[1])
    return 0


def _owned(views: dict[str, View]) -> list[bool]:
    """For each slot, whether any node owns it in any of ``views``."""
    owned = [False] * SLOTS
    for v in views.values():
        for n in v.nodes:
            for a, b in n.ranges:
                owned[a : b + 1] = [True] * (b - a + 1)
    return owned


def _assign_slots(req: FormClusterInput, conns: Conns, views: dict[str, View]) -> list[EventNote]:
    # A slot any node already sees owned stays where it is: a re-run changes nothing.
    owned = _owned(views)
    events = []
    for spec in req.nodes:
        free = [s for a, b in spec.slots for s in range(a, b + 1) if not owned[s]]
        ranges = normalize((s, s) for s in free)
        if not ranges:
            continue
        args = [x for r in ranges for x in r]
        conns[spec.address].execute_command("CLUSTER", "ADDSLOTSRANGE", *args)
        events.append(note(f"{spec.address} took slots {_label(ranges)}", SOURCE))
    return events


def _meet(addresses: list[str], conns: Conns, views: dict[str, View]) -> list[EventNote]:
    # The node that knows most of the others introduces the rest; gossip does the others.
    def known(v: View) -> set[str]:
        return {n.address for n in v.nodes}

    seed = max(addresses, key=lambda a: len(known(views[a]) & set(addresses)))
    events = []
    for a in addresses:
        if a != seed and a not in known(views[seed]):
            host, port = split_address(a)
            conns[seed].execute_command("CLUSTER", "MEET", host, port, views[a].myself.bus_port)
            events.append(note(f"{seed} met {a}", SOURCE))
    return events


def _replicate(
    req: FormClusterInput, conns: Conns, views: dict[str, View], ids: dict[str, str]
) -> list[EventNote]:
    events = []
    for spec in req.nodes:
        if spec.role != Role.REPLICA or spec.master is None:
            continue
        v, master_id = views[spec.address], ids[spec.master]
        if v.myself.master_id == master_id:
            continue
        if v.myself.is_master and v.myself.ranges:
            raise fatal(f"{spec.address} owns slots and cannot replicate {spec.master}", SOURCE)
        master = v.by_id(master_id)
        if master is None or not master.settled:
            continue  # it does not know its master yet: the next round
        try:
            conns[spec.address].execute_command("CLUSTER", "REPLICATE", master_id)
        except redis.ResponseError as e:
            # "To set a master the node must be empty": it holds keys; retrying cannot help.
            if "empty" in str(e):
                raise fatal(f"{spec.address} cannot be a replica: {e}", SOURCE) from e
            raise
        events.append(note(f"{spec.address} replicates {spec.master}", SOURCE))
    return events


def _not_formed(
    req: FormClusterInput, conns: Conns, views: dict[str, View], ids: dict[str, str]
) -> str:
    """What is still missing, or ``""`` when the cluster is formed."""
    for a, v in views.items():
        for other, other_id in ids.items():
            line = v.by_id(other_id)
            if line is None or not line.settled or (other != a and not line.connected):
                return f"{a} does not know {other} yet"
    for spec in req.nodes:
        if spec.master is None:
            continue
        # Every node, not just the replica, must know: CLUSTER SHARDS and clients ask any.
        for a, v in views.items():
            line = v.by_id(ids[spec.address])
            if line is None or line.master_id != ids[spec.master]:
                return f"{a} does not see {spec.address} replicate {spec.master} yet"
    for spec in req.nodes:
        # A replica still loading its first sync is not a copy yet.
        if spec.master is None:
            continue
        if replication(conns[spec.address]).get("master_link_status") != "up":
            return f"{spec.address} has not synced with {spec.master} yet"
    maps = {a: v.slot_owners() for a, v in views.items()}
    first = next(iter(maps.values()))
    for a, m in maps.items():
        if m != first:
            return f"{a} does not agree on the slots yet"
    for a in views:
        if not cluster_state_ok(conns[a]):
            return f"{a} does not say cluster_state:ok yet"
    return ""


def _unowned(req: FormClusterInput, views: dict[str, View]) -> list[tuple[int, int]]:
    """The masters' slots that no node owns in any member's view."""
    owned = _owned(views)
    wanted = (s for spec in req.nodes for a, b in spec.slots for s in range(a, b + 1))
    return normalize((s, s) for s in wanted if not owned[s])


# ---- slot migration ---------------------------------------------------------------------

# Run on the source, atomically: move every key of a few slots (ARGV[9...]) and give the
# slots to the target. Clients never get an ASK naming the target (redis-py #4015 crashes
# on an ASK naming a node it does not know). The last key moved is a signal (ARGV[8], in
# the last slot) that a blocked BLPOP on the target waits for, pipelined with the target's
# own SETSLOT NODE: the target takes the slots while this script still runs, so no client
# is ever sent back and forth. Several slots per call: the signal, the round trips and
# each node's config save (an fsync per SETSLOT batch) are paid once for all of them.
# A failed MIGRATE leaves the slots MIGRATING, so a key already moved is found by ASK.
HANDOVER_LUA = """
local counts, n = {}, 0
for i = 9, #ARGV do
  counts[i] = redis.call('CLUSTER', 'COUNTKEYSINSLOT', tonumber(ARGV[i]))
  n = n + counts[i]
end
if n > tonumber(ARGV[6]) then return {0, n, 0} end
local function fail(err)
  redis.call('DEL', ARGV[8])
  for i = 9, #ARGV do
    redis.call('CLUSTER', 'SETSLOT', tonumber(ARGV[i]), 'MIGRATING', ARGV[5])
  end
  return redis.error_reply('HANDOVER ' .. err)
end
local bytes = 0
for i = 9, #ARGV do
  if counts[i] > 0 then
    local keys = redis.call('CLUSTER', 'GETKEYSINSLOT', tonumber(ARGV[i]), counts[i])
    if ARGV[7] == '1' then
      for _, k in ipairs(keys) do
        bytes = bytes + (redis.call('MEMORY', 'USAGE', k, 'SAMPLES', 0) or 0)
      end
    end
    -- In batches: unpack() is limited by Lua's stack.
    for j = 1, #keys, 500 do
      local res = redis.pcall('MIGRATE', ARGV[2], ARGV[3], '', 0, ARGV[4], 'REPLACE', 'KEYS',
                              unpack(keys, j, math.min(j + 499, #keys)))
      if type(res) == 'table' and res.err then return fail(res.err) end
    end
  end
end
-- Only once every key is there: the signal lets the target take the slots.
redis.call('RPUSH', ARGV[8], 1, 1)
local res = redis.pcall('MIGRATE', ARGV[2], ARGV[3], ARGV[8], 0, ARGV[4], 'REPLACE')
if type(res) == 'table' and res.err then return fail(res.err) end
for i = 9, #ARGV do
  redis.call('CLUSTER', 'SETSLOT', tonumber(ARGV[i]), 'NODE', ARGV[5])
end
return {1, n, bytes}
"""


# The target's side, run right after its BLPOP: it takes the slots (ARGV[2...]) only if
# the signal really came (BLPOP popped one element, this pops the other). Had the BLPOP
# failed at once, taking the slots while the source still holds keys would lose them.
TAKE_LUA = """
if redis.call('LPOP', KEYS[1]) then
  for i = 2, #ARGV do
    redis.call('CLUSTER', 'SETSLOT', ARGV[i], 'NODE', ARGV[1])
  end
  return 1
end
return 0
"""


@functools.cache
def signal_keys() -> dict[int, str]:
    """A key name for every slot: the hand-over's signal must live in the moving slot."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < SLOTS:
        key = f"scaleflow:handover:{{{i}}}"
        found.setdefault(slot_of(key), key)
        i += 1
    return found


# One slot's next keys moved by the source itself: GETKEYSINSLOT, then MIGRATE ... KEYS in
# batches. The keys never travel to the activity and back, which saved a tenth of the
# time on 2 cores (the worker's encoding of every key competed with the nodes for CPU).
# The source's value wins over a stale copy on the target: BUSYKEY is retried with
# REPLACE (keys already moved are gone from the source, so MIGRATE skips them).
# Returns {keys moved, their bytes (MEMORY USAGE) or 0}.
MOVE_KEYS_LUA = """
local keys = redis.call('CLUSTER', 'GETKEYSINSLOT', ARGV[1], ARGV[2])
local bytes = 0
if ARGV[3] == '1' then
  for _, k in ipairs(keys) do
    bytes = bytes + (redis.call('MEMORY', 'USAGE', k, 'SAMPLES', 0) or 0)
  end
end
local step = tonumber(ARGV[7])
for i = 1, #keys, step do
  local last = math.min(i + step - 1, #keys)
  local res = redis.pcall('MIGRATE', ARGV[4], ARGV[5], '', 0, ARGV[6], 'KEYS',
                          unpack(keys, i, last))
  if type(res) == 'table' and res.err and string.find(res.err, 'BUSYKEY') then
    res = redis.pcall('MIGRATE', ARGV[4], ARGV[5], '', 0, ARGV[6], 'REPLACE', 'KEYS',
                      unpack(keys, i, last))
  end
  if type(res) == 'table' and res.err then
    return redis.error_reply('MOVEKEYS slot ' .. ARGV[1] .. ': ' .. res.err)
  end
end
return {#keys, bytes}
"""


# Commands of the migration itself, of replicas and of other tooling: not client traffic.
OWN_COMMANDS = frozenset(
    {"cluster", "evalsha", "eval", "script", "migrate", "memory", "info", "client", "ping"}
    | {"replconf", "psync", "sync", "hello", "select", "asking", "readonly", "command"}
)


# How many moved slots the other masters are told of at once (see ``_announce``).
ANNOUNCE_SLOTS = 128


class SlotMigration:
    """Moves slot ranges from one master to another, one small group of slots at a time."""

    def __init__(
        self,
        req: MigrateSlotsInput,
        conns: Conns,
        resume: MigrateSlotsProgress | None = None,
        heartbeat: Callable[..., None] = _heartbeat,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        self.req = req
        self.conns = conns
        self.heartbeat = heartbeat
        self.cancelled = cancelled
        self.src = conns[req.source]
        self.dst = conns[req.target]
        self.target_host, self.target_port = split_address(req.target)
        self.resume = resume
        self.events: list[EventNote] = []
        self.handovers = 0
        # Pacing: the source's count of client commands at the last look.
        self._client_calls: int | None = None
        self._checked_at = -1e9
        self._active = False
        self._script_pushes = 0
        self._unannounced: list[int] = []

    # ---- set-up ---------------------------------------------------------------

    def _prepare(self) -> MigrateSlotsProgress:
        sview, tview = view_of(self.src), view_of(self.dst)
        if not sview.myself.is_master or not tview.myself.is_master:
            raise fatal(f"{self.req.source} and {self.req.target} must both be masters", SOURCE)
        self.src_id, self.dst_id = sview.myself.id, tview.myself.id
        if sview.by_id(self.dst_id) is None:
            raise fatal(f"{self.req.target} is not in the cluster of {self.req.source}", SOURCE)
        if not cluster_state_ok(self.dst):
            # MIGRATE would fail with CLUSTERDOWN; the node is still joining.
            raise retryable(f"{self.req.target} does not say cluster_state:ok yet", SOURCE)
        # Every master learns the new owner at once; the rest follow by gossip.
        self.others = [
            n.address
            for n in sview.nodes
            if n.is_master and n.settled and n.id not in (self.src_id, self.dst_id)
        ]
        self.handover_script = self.src.register_script(HANDOVER_LUA)
        self.move_keys_script = self.src.register_script(MOVE_KEYS_LUA)
        # The target's side of each hand-over: BLPOP on the signal, then take the slot.
        self.waiter = redis.Connection(
            host=self.target_host,
            port=self.target_port,
            socket_timeout=self.req.migrate_timeout_ms / 1000 + 5,
            retry=Retry(NoBackoff(), 0),
        )
        for s in (s for a, b in self.req.ranges for s in range(a, b + 1)):
            if sview.owner_of(s) not in (self.src_id, self.dst_id):
                raise fatal(f"slot {s} is not owned by {self.req.source}", SOURCE)
        if self.resume is not None:
            return self.resume
        moving = {s for a, b in self.req.ranges for s in range(a, b + 1)}
        owned = {s for a, b in tview.myself.ranges for s in range(a, b + 1)}
        # No slot outside this move: clients may not know the target yet.
        return MigrateSlotsProgress(next_slot=self.req.ranges[0][0], handover=owned <= moving)

    # ---- the loop -------------------------------------------------------------

    def run(self) -> MigrateSlotsResult:
        progress = self._prepare()
        try:
            return self._run(progress)
        finally:
            self.waiter.disconnect()

    def _run(self, progress: MigrateSlotsProgress) -> MigrateSlotsResult:
        resumed_at = progress.next_slot if self.resume is not None else None
        if resumed_at is not None:
            self.events.append(
                note(
                    f"resumed migration of slots {self.req.label()} at slot {resumed_at} "
                    f"after {progress.keys:,} keys",
                    SOURCE,
                )
            )
        if progress.handover:
            self._claim_first_slot(progress)
        for ri in range(progress.range_index, len(self.req.ranges)):
            start, end = self.req.ranges[ri]
            slot = progress.next_slot if ri == progress.range_index else start
            slot = max(slot, start)
            while slot <= end:
                group = list(range(slot, min(slot + self.req.slots_per_group, end + 1)))
                keys, nbytes = self._move_group(group, progress.handover)
                slot = group[-1] + 1
                done_range = slot > end and ri + 1 < len(self.req.ranges)
                progress = progress.model_copy(
                    update={
                        "range_index": ri + 1 if done_range else ri,
                        "next_slot": self.req.ranges[ri + 1][0] if done_range else slot,
                        "keys": progress.keys + keys,
                        "bytes": progress.bytes + nbytes,
                        "slots_done": progress.slots_done + len(group),
                    }
                )
                self.heartbeat(progress.model_dump(mode="json"))
                if self.cancelled():
                    self._announce([], flush=True)
                    raise CancelledError("slot migration cancelled")
        self._announce([], flush=True)
        self._wait_agreed(progress)
        how = f", {self.handovers:,} slots handed over atomically" if self.handovers else ""
        self.events.append(
            note(
                f"migrated slots {self.req.label()}: {progress.keys:,} keys "
                f"({progress.bytes:,} bytes) from {self.req.source} to {self.req.target}{how}",
                SOURCE,
            )
        )
        return MigrateSlotsResult(
            keys=progress.keys,
            bytes=progress.bytes,
            slots=sum(b - a + 1 for a, b in self.req.ranges),
            resumed_at=resumed_at,
            handovers=self.handovers,
            events=self.events,
        )

    def _claim_first_slot(self, progress: MigrateSlotsProgress) -> None:
        """Give the target its first slot without an ASK window, before any ASK names it."""
        if view_of(self.dst).myself.ranges:
            return
        todo = [s for a, b in self.req.ranges for s in range(a, b + 1)]
        counts: list[int] = []
        for i in range(0, len(todo), 1000):
            pipe = self.src.pipeline(transaction=False)
            for s in todo[i : i + 1000]:
                pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", s)
            counts += pipe.execute()
        fewest = min(counts)
        slot = todo[counts.index(fewest)]
        self.dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.src_id)
        # Room for keys written since they were counted.
        keys, nbytes, ok = self._handover([slot], max_keys=fewest + 1000)
        if not ok:
            raise retryable(f"could not hand slot {slot} over to {self.req.target}", SOURCE)
        self._node_elsewhere([slot])
        progress.keys += keys
        progress.bytes += nbytes
        self.events.append(note(f"{self.req.target} took its first slot, {slot}", SOURCE))

    def _move_group(self, group: list[int], handover: bool) -> tuple[int, int]:
        mine = view_of(self.dst).myself.ranges
        todo = [s for s in group if not any(a <= s <= b for a, b in mine)]
        keys = nbytes = 0
        if todo:
            sview = view_of(self.src)
            owners = {s: sview.owner_of(s) for s in todo}
            for s, owner in owners.items():
                if owner not in (self.src_id, self.dst_id):
                    raise fatal(
                        f"slot {s} belongs to {owner or 'no node'}, not to {self.req.source}",
                        SOURCE,
                    )
            # IMPORTING first, so the target accepts the keys (and any ASK) of these slots.
            pipe = self.dst.pipeline(transaction=False)
            for s in todo:
                pipe.execute_command("CLUSTER", "SETSLOT", s, "IMPORTING", self.src_id)
            pipe.execute()
            windowed, candidates = [], []
            for s in todo:
                if owners[s] == self.dst_id:
                    # Handed over by an attempt that stopped before the target took it.
                    self.dst.execute_command("CLUSTER", "SETSLOT", s, "NODE", self.dst_id)
                elif handover:
                    candidates.append(s)
                else:
                    windowed.append(s)
            for run in self._handover_runs(candidates, windowed):
                started = time.monotonic()
                k, b, ok = self._handover(run, self.req.handover_max_keys)
                keys, nbytes = keys + k, nbytes + b
                if not ok and len(run) > 1:
                    # Keys written since they were counted: one slot at a time.
                    for s in run:
                        k, b, ok = self._handover([s], self.req.handover_max_keys)
                        keys, nbytes = keys + k, nbytes + b
                        if not ok:
                            windowed.append(s)
                elif not ok:
                    windowed.append(run[0])
                self._pace(time.monotonic() - started)
            if windowed:
                k, b = self._migrate_window(windowed)
                keys, nbytes = keys + k, nbytes + b
        if len(todo) < len(group):
            # Taken by the target in an earlier attempt: the source may not know yet.
            done = [s for s in group if s not in todo]
            self._pipeline(self.src, [("SETSLOT", s, "NODE", self.dst_id) for s in done])
        self._announce(group)
        return keys, nbytes

    # ---- one slot handed over atomically ----------------------------------------

    def _handover_runs(self, slots: list[int], windowed: list[int]) -> list[list[int]]:
        """``slots`` in runs of at most ``handover_max_keys`` keys in all, one hand-over
        each; a slot with more keys than that goes to ``windowed``."""
        if not slots:
            return []
        pipe = self.src.pipeline(transaction=False)
        for s in slots:
            pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", s)
        runs: list[list[int]] = []
        run: list[int] = []
        total = 0
        for s, n in zip(slots, pipe.execute(), strict=True):
            if n > self.req.handover_max_keys:
                windowed.append(s)
                continue
            if run and total + n > self.req.handover_max_keys:
                runs.append(run)
                run, total = [], 0
            run.append(s)
            total += n
        return [*runs, run] if run else runs

    def _handover(self, slots: list[int], max_keys: int) -> tuple[int, int, bool]:
        signal = signal_keys()[slots[-1]]
        waiter = self.waiter
        args = [
            0,  # unused: the slots come last
            self.target_host,
            self.target_port,
            self.req.migrate_timeout_ms,
            self.dst_id,
            max_keys,
            "1" if self.req.count_bytes else "0",
            signal,
            *slots,
        ]
        clean = False
        try:
            waiter.send_packed_command(
                waiter.pack_commands(
                    [
                        # The slots are only IMPORTING on the target so far.
                        ("ASKING",),
                        ("BLPOP", signal, 0),
                        ("ASKING",),
                        ("EVAL", TAKE_LUA, 1, signal, self.dst_id, *slots),
                    ]
                )
            )
            try:
                self._script_pushes += 1
                done, keys, nbytes = self.handover_script(args=args)
            except redis.ResponseError as e:
                if "HANDOVER" in str(e):
                    # The slots may be MIGRATING, or even taken: a retry reads them afresh.
                    label = _label(normalize((x, x) for x in slots))
                    raise retryable(f"slots {label}: atomic hand-over failed: {e}", SOURCE) from e
                raise
            if not done:
                return 0, 0, False  # too many keys
            took = [waiter.read_response() for _ in range(4)][-1]
            clean = True
            if took != 1:
                label = _label(normalize((x, x) for x in slots))
                raise retryable(f"{self.req.target} did not take slots {label}", SOURCE)
        finally:
            if not clean:
                # Still blocked: closing the connection discards the SETSLOT behind it.
                waiter.disconnect()
        self.handovers += len(slots)
        return int(keys), int(nbytes), True

    # ---- slots moved through a MIGRATING/IMPORTING window -----------------------

    def _migrate_window(self, slots: list[int]) -> tuple[int, int]:
        self._pipeline(self.src, [("SETSLOT", s, "MIGRATING", self.dst_id) for s in slots])
        keys, nbytes = self._move_keys(slots)
        # The target first: once the source lets go, its ASKs must find an owner.
        self._pipeline(self.dst, [("SETSLOT", s, "NODE", self.dst_id) for s in slots])
        results = self._pipeline(
            self.src, [("SETSLOT", s, "NODE", self.dst_id) for s in slots], raise_on_error=False
        )
        for s, res in zip(slots, results, strict=True):
            if isinstance(res, redis.ResponseError):
                if "hold keys" not in str(res):
                    raise res
                # A key the last GETKEYSINSLOT did not see yet: move it too.
                k, b = self._move_keys([s])
                keys, nbytes = keys + k, nbytes + b
                self.src.execute_command("CLUSTER", "SETSLOT", s, "NODE", self.dst_id)
        return keys, nbytes

    def _move_keys(self, slots: list[int]) -> tuple[int, int]:
        """Rounds of MOVE_KEYS_LUA, one call per slot sent together, until the slots are
        empty on the source."""
        keys = nbytes = 0
        per_round = self.req.keys_per_batch * self.req.pipeline_depth
        pending = slots
        while pending:
            started = time.monotonic()
            replies = self._run_script(
                self.move_keys_script,
                [
                    [
                        s,
                        per_round,
                        "1" if self.req.count_bytes else "0",
                        self.target_host,
                        self.target_port,
                        self.req.migrate_timeout_ms,
                        self.req.keys_per_batch,
                    ]
                    for s in pending
                ],
            )
            moved = [int(r[0]) for r in replies]
            keys += sum(moved)
            nbytes += sum(int(r[1]) for r in replies)
            # MIGRATING stops new keys on the source: a slot that gave fewer keys than asked
            # for is empty now.
            pending = [s for s, n in zip(pending, moved, strict=True) if n == per_round]
            self._pace(time.monotonic() - started)
        return keys, nbytes

    def _run_script(self, script: Any, calls: list[list[Any]]) -> list[Any]:
        """EVALSHA of ``script`` once per argument list, sent together.

        Not ``script(client=pipeline)``: redis-py's pipeline asks SCRIPT EXISTS first, a
        round trip per pipeline; the script is loaded once and again only if a node lost
        it (a restart, SCRIPT FLUSH).
        """
        for attempt in (0, 1):
            pipe = self.src.pipeline(transaction=False)
            for args in calls:
                pipe.evalsha(script.sha, 0, *args)
            try:
                return pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                self.src.script_load(script.script)
        raise AssertionError("unreachable")

    def _pace(self, busy_s: float) -> None:
        """While the source serves clients, leave it to them for ``pace_ratio`` of the
        time it just spent moving keys: the scripts block it, and the nodes share the
        machine's cores. With no client traffic the move runs at full speed."""
        if self.req.pace_ratio > 0 and self._clients_active():
            time.sleep(busy_s * self.req.pace_ratio)

    def _clients_active(self) -> bool:
        """Whether the source ran commands other than the migration's own lately
        (INFO commandstats, read at most every ``pace_check_s``)."""
        now = time.monotonic()
        if now - self._checked_at < self.req.pace_check_s:
            return self._active
        calls = 0
        for name, stats in self.src.info("commandstats").items():
            if name.removeprefix("cmdstat_").split("|")[0] not in OWN_COMMANDS:
                calls += int(stats["calls"])
        # The hand-over script's RPUSH of its signal counts too: one per call.
        calls -= self._script_pushes
        self._active = self._client_calls is not None and calls > self._client_calls
        self._client_calls, self._checked_at = calls, now
        return self._active

    def _pipeline(
        self, r: redis.Redis, commands: list[tuple[Any, ...]], raise_on_error: bool = True
    ) -> list[Any]:
        """CLUSTER subcommands, sent together."""
        pipe = r.pipeline(transaction=False)
        for args in commands:
            pipe.execute_command("CLUSTER", *args)
        return pipe.execute(raise_on_error=raise_on_error)

    def _migrate_args(self, batch: list[bytes], replace: bool) -> list[Any]:
        args: list[Any] = [self.target_host, self.target_port, "", 0, self.req.migrate_timeout_ms]
        if replace:
            args.append("REPLACE")
        return [*args, "KEYS", *batch]

    def _announce(self, slots: list[int], flush: bool = False) -> None:
        """Tell the other masters of moved slots ANNOUNCE_SLOTS at a time: each SETSLOT
        round makes every master save (and fsync) its nodes.conf, and a master that has
        not heard yet only sends clients through the source, which redirects them (the
        end of the migration waits until every master agrees)."""
        self._unannounced += slots
        if self._unannounced and (flush or len(self._unannounced) >= ANNOUNCE_SLOTS):
            self._node_elsewhere(self._unannounced)
            self._unannounced = []

    def _node_elsewhere(self, slots: list[int]) -> None:
        """SETSLOT NODE on the other masters, so none keeps the old owner until gossip."""
        for address in self.others:
            pipe = self.conns[address].pipeline(transaction=False)
            for s in slots:
                pipe.execute_command("CLUSTER", "SETSLOT", s, "NODE", self.dst_id)
            # A master that is down or lagging learns the owner by gossip later.
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                pipe.execute(raise_on_error=False)

    def _wait_agreed(self, progress: MigrateSlotsProgress) -> None:
        wait_seen_owning(
            self.conns,
            self.req.source,
            self.dst_id,
            self.req.ranges,
            lambda: self.heartbeat(progress.model_dump(mode="json")),
        )


def wait_seen_owning(
    conns: Conns,
    seed: str,
    owner_id: str,
    ranges: list[tuple[int, int]],
    heartbeat: Callable[[], None] = _heartbeat,
    timeout_s: float = 15.0,
) -> None:
    """Until every node that answers sees ``owner_id`` own ``ranges``.

    A client that reloads its slot map then gets the new owner from any node.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        lagging = []
        for n in view_of(conns[seed]).nodes:
            if not n.settled:
                continue
            try:
                line = view_of(conns[n.address]).by_id(owner_id)
            except (redis.ConnectionError, redis.TimeoutError):
                continue  # down: it tells clients nothing
            owned = normalize(line.ranges) if line is not None else []
            if not all(any(a <= s and e <= b for a, b in owned) for s, e in ranges):
                lagging.append(n.address)
        if not lagging:
            return
        if time.monotonic() > deadline:
            raise retryable(f"{', '.join(lagging)} do not see the new owner yet", SOURCE)
        heartbeat()
        time.sleep(POLL_S)


def _resume_point() -> MigrateSlotsProgress | None:
    if not activity.in_activity():
        return None
    details = activity.info().heartbeat_details
    return MigrateSlotsProgress.model_validate(details[0]) if details else None


# ---- failover, removal, pings, shards ---------------------------------------------------


def failover(req: FailoverInput, conns: Conns) -> FailoverResult:
    r = conns[req.replica]
    v = view_of(r)
    if v.myself.is_master:
        # A retry after the promotion: only the wait for every node is left.
        wait_seen_owning(conns, req.replica, v.myself.id, v.myself.ranges, timeout_s=req.timeout_s)
        return FailoverResult(
            master=req.replica, events=[note(f"{req.replica} already is a master", SOURCE)]
        )
    old = v.by_id(v.myself.master_id or "")
    replaced = old.address if old is not None else None
    started = time.monotonic()
    how = "took over from"
    if replaced is not None and _answers(conns[replaced]):
        # The master is alive: a graceful failover pauses its clients until the replica
        # has every write, so nothing acknowledged is lost.
        r.execute_command("CLUSTER", "FAILOVER")
        how = "replaced"
        if not _until(lambda: view_of(r).myself.is_master, MANUAL_FAILOVER_S):
            if not _in_sync(r, conns[replaced]):
                raise retryable(f"{req.replica} is not in sync with {replaced} yet", SOURCE)
            how = "took over from"
    if not view_of(r).myself.is_master:
        # TAKEOVER asks Redis for no proof that the replica holds the data: a replica
        # that never finished its sync would take the slots empty, and every node
        # that syncs from it afterwards (the old master's peer, the balance) with it.
        why = _not_a_copy(r)
        if why:
            raise retryable(
                f"{req.replica} {why}: it cannot take over from {replaced or 'its master'} "
                "without losing the shard's data",
                SOURCE,
            )
        r.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
    _wait(lambda: view_of(r).myself.is_master, req.timeout_s, f"{req.replica} to become master")
    took = (time.monotonic() - started) * 1000
    if replaced is not None:
        # A live old master must let go of the slots before the next step relies on it.
        _wait(lambda: _gave_up(conns, replaced), req.timeout_s, f"{replaced} to step down")
    me = view_of(r).myself
    wait_seen_owning(conns, req.replica, me.id, me.ranges, timeout_s=req.timeout_s)
    return FailoverResult(
        master=req.replica,
        replaced=replaced,
        events=[note(f"{req.replica} {how} {replaced} in {took:.0f} ms", SOURCE)],
    )


def _answers(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


def replication(r: redis.Redis) -> dict[str, Any]:
    return dict(r.info("replication"))


def _in_sync(replica: redis.Redis, master: redis.Redis) -> bool:
    mine, theirs = replication(replica), replication(master)
    caught_up = int(mine.get("slave_repl_offset", -1)) >= int(theirs.get("master_repl_offset", 0))
    return mine.get("master_link_status") == "up" and caught_up


def _not_a_copy(replica: redis.Redis) -> str:
    """Why ``replica`` may not hold its master's data, or ``""`` when it does: its link is
    up, or it was up and went down with the master. A replica still loading a sync, or
    one whose link never came up (told to replicate, the master gone before the sync
    ended), holds nothing of the master's; its own offsets cannot tell (while it
    syncs, Redis reports the offset it had before)."""
    mine = replication(replica)
    if mine.get("role") != "slave":
        return "is not a replica"
    if int(mine.get("master_sync_in_progress", 0)):
        return "is still loading its sync"
    if mine.get("master_link_status") == "up":
        return ""
    if int(mine.get("master_link_down_since_seconds", -1)) < 0:
        return "never finished a sync with its master"
    return ""


def _gave_up(conns: Conns, address: str) -> bool:
    try:
        me = view_of(conns[address]).myself
    except (redis.ConnectionError, redis.TimeoutError):
        return True  # down: it serves nothing
    return not (me.is_master and me.ranges)


def _until(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        _heartbeat()
        time.sleep(0.01)
    return True


def _wait(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    if not _until(done, timeout_s):
        raise retryable(f"waited {timeout_s:g} s for {what}", SOURCE)


def remove_nodes(req: RemoveNodesInput, conns: Conns) -> RemoveNodesResult:
    """Empty and reset the removed nodes, then make every kept node forget them."""
    keep_views = {a: view_of(conns[a]) for a in req.keep}
    ids: set[str] = set()
    for v in keep_views.values():
        ids |= {n.id for n in v.nodes if n.address in req.remove}
    own: dict[str, View] = {}
    unreachable = []
    for a in req.remove:
        try:
            own[a] = view_of(conns[a])
        except (redis.ConnectionError, redis.TimeoutError):
            unreachable.append(a)
    # Check everything before the first destructive step. Slots may only go with the
    # whole cluster (nothing kept: a cluster delete); otherwise they must move first.
    for a, v in own.items():
        ids.add(v.myself.id)
        if req.keep and v.myself.is_master and v.myself.ranges and len(v.nodes) > 1:
            raise fatal(f"{a} still owns slots {_label(v.myself.ranges)}: move them first", SOURCE)
    for a, v in keep_views.items():
        if v.myself.master_id in ids:
            raise fatal(f"{a} replicates a node being removed; fail it over first", SOURCE)
    reset = []
    for a, v in own.items():
        if len(v.nodes) == 1 and not v.myself.ranges:
            continue  # reset already: it knows only itself
        if v.myself.is_master:
            conns[a].execute_command("FLUSHALL")
        conns[a].execute_command("CLUSTER", "RESET", "HARD")
        reset.append(a)
    deadline = time.monotonic() + req.timeout_s
    while True:
        lingering = {}
        for a in req.keep:
            # By id, and by address too: a node in a handshake has a made-up id.
            known = [n for n in view_of(conns[a]).nodes if n.id in ids or n.address in req.remove]
            for n in known:
                with contextlib.suppress(redis.ResponseError):  # forgotten meanwhile
                    conns[a].execute_command("CLUSTER", "FORGET", n.id)
            if known:
                lingering[a] = len(known)
        if not lingering:
            break
        if time.monotonic() > deadline:
            raise retryable(f"nodes still known after {req.timeout_s:g} s: {lingering}", SOURCE)
        _heartbeat()
        time.sleep(POLL_S)
    events = [
        note(
            f"removed {', '.join(req.remove)} from the cluster"
            + (f" ({', '.join(unreachable)} did not answer)" if unreachable else ""),
            SOURCE,
        )
    ]
    return RemoveNodesResult(reset=reset, unreachable=unreachable, events=events)


# A node slow to answer gets a second, longer try: on a loaded machine a live node can
# miss the first timeout, and calling it dead would start a failover. A dead process
# refuses the connection at once, so it is still found on the first try. Both tries
# stay well within the activity's 5 s.
SLOW_PING_FACTOR = 4


def ping_nodes(req: PingNodesInput) -> PingNodesResult:
    def answers(address: str, timeout_s: float) -> bool:
        r = node_client(address, timeout_s)
        try:
            return bool(r.ping())
        finally:
            r.close()

    def alive(address: str) -> bool:
        try:
            return answers(address, req.timeout_s)
        except redis.exceptions.TimeoutError:
            try:
                return answers(address, req.timeout_s * SLOW_PING_FACTOR)
            except Exception:
                return False
        except Exception:  # a node that cannot answer PING properly is down
            return False

    if not req.addresses:
        return PingNodesResult()
    with ThreadPoolExecutor(max_workers=min(32, len(req.addresses))) as pool:
        # map submits every ping, and so starts every thread, before it returns.
        with cancel_held_while_starting_threads():
            pings = pool.map(alive, req.addresses)
        answers = list(pings)
    return PingNodesResult(
        alive=[a for a, ok in zip(req.addresses, answers, strict=True) if ok],
        dead=[a for a, ok in zip(req.addresses, answers, strict=True) if not ok],
    )


def _as_map(raw: Any) -> dict[str, Any]:
    """A RESP3 map or a RESP2 flat list of pairs, with text keys."""
    items = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    return {_text(k): v for k, v in items}


def read_shards(req: ReadShardsInput, conns: Conns) -> ReadShardsResult:
    last: Exception | None = None
    for seed in req.seeds:
        try:
            raw = conns[seed].execute_command("CLUSTER", "SHARDS")
        except (redis.ConnectionError, redis.TimeoutError) as e:
            last = e
            continue
        shards = []
        for item in raw:
            m = _as_map(item)
            flat = [int(x) for x in m["slots"]]
            nodes = []
            for n in m["nodes"]:
                nm = _as_map(n)
                role = Role.MASTER if _text(nm["role"]) == "master" else Role.REPLICA
                nodes.append(
                    ShardNode(
                        id=_text(nm["id"]),
                        address=f"{_text(nm['ip'])}:{int(nm['port'])}",
                        role=role,
                        health=_text(nm["health"]),
                    )
                )
            ranges = list(zip(flat[::2], flat[1::2], strict=True))
            shards.append(Shard(ranges=ranges, nodes=nodes))
        return ReadShardsResult(read_from=seed, shards=shards)
    raise retryable(f"no seed node answered CLUSTER SHARDS: {last}", SOURCE)


# ---- the activities ---------------------------------------------------------------------


class RedisClusterActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn(name="form_redis_cluster")
    def form_redis_cluster(self, req: FormClusterInput) -> FormClusterResult:
        with connections() as conns:
            return form_cluster(req, conns)

    # Cancellation is checked between slot groups: a group is never left half done.
    @activity.defn(name="migrate_redis_slots", no_thread_cancel_exception=True)
    def migrate_redis_slots(self, req: MigrateSlotsInput) -> MigrateSlotsResult:
        # MIGRATE blocks for up to its own timeout: the socket waits longer.
        with connections(req.migrate_timeout_ms / 1000 + 5) as conns:
            migration = SlotMigration(
                req, conns, resume=_resume_point(), cancelled=activity.is_cancelled
            )
            return migration.run()

    @activity.defn(name="failover_redis_node")
    def failover_redis_node(self, req: FailoverInput) -> FailoverResult:
        with connections() as conns:
            return failover(req, conns)

    @activity.defn(name="remove_redis_nodes")
    def remove_redis_nodes(self, req: RemoveNodesInput) -> RemoveNodesResult:
        with connections() as conns:
            return remove_nodes(req, conns)

    @activity.defn(name="ping_redis_nodes")
    def ping_redis_nodes(self, req: PingNodesInput) -> PingNodesResult:
        return ping_nodes(req)

    @activity.defn(name="read_redis_shards")
    def read_redis_shards(self, req: ReadShardsInput) -> ReadShardsResult:
        with connections() as conns:
            return read_shards(req, conns)
