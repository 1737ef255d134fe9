"""Slot migration of the broker's Redis Cluster: scaleflow's activity against
``redis-cli --cluster reshard``, and a client's throughput while slots move.

``python -m bench broker_migration`` (1 GB, as recorded) or
``python -m bench.broker_migration --mb 100`` for a quick check.

The cluster is one chunk as the broker builds it: two local proxies (127.0.0.2 and
127.0.0.3, two redis-server processes each), two masters A and B, each replicated by a
node of the other proxy. The data (``--mb`` of 1 KiB random values, spread evenly over
slots 0-8191) always sits on one master; each measured move takes it to the other:
scaleflow's ``migrate_redis_slots`` A -> B, called directly through
``temporalio.testing.ActivityEnvironment`` (the activity function itself, heartbeats
recorded in memory, no Temporal server), then ``redis-cli --cluster reshard`` B -> A of
the same 8192 slots. Both paths of the activity are measured:

- *windowed*: B already owns slots 8192-16383, so each slot group goes through a
  MIGRATING/IMPORTING window (GETKEYSINSLOT + pipelined MIGRATE ... KEYS);
- *hand-over*: B owns no slot (a new master that clients do not know), so each slot is
  handed over atomically by a Lua script on the source.

Part 2 repeats each pair of moves with a redis-py ``RedisCluster`` client in a process
of its own doing GET/SET of 1 KiB values over every slot: its ops/s during each move
against a window just before it, with the activity's default pacing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster
from temporalio.testing import ActivityEnvironment

from scaleflow.activities import processes
from scaleflow.activities.redis_cluster import (
    Conns,
    RedisClusterActivities,
    split_address,
    view_of,
    wait_seen_owning,
)
from scaleflow.activities.redis_proxies import LocalProxies
from scaleflow.core.broker.activity_io import (
    ClusterNodeSpec,
    DestroyProxyInput,
    FormClusterInput,
    MigrateSlotsInput,
    MigrateSlotsResult,
    ProvisionProxyInput,
)
from scaleflow.core.broker.models import Role
from scaleflow.core.settings import Settings
from scaleflow.core.slots import SLOTS, slot_of

VALUE_SIZE = 1024
MOVED = (0, SLOTS // 2 - 1)  # the slots that hold the data and move
HOSTS = ("127.0.0.2", "127.0.0.3")
# redis-cli's keys per GETKEYSINSLOT and per MIGRATE: the activity's keys_per_batch.
CLI_PIPELINE = MigrateSlotsInput.model_fields["keys_per_batch"].default
TARGET_RATIO = 0.9
TARGET_GB_PER_MIN = 1.0
TARGET_CLIENT_RATIO = 0.6
CLIENT_KEYS = 10_000
BASELINE_S = 8.0
BUCKET_S = 0.1
# The activity's settings that shape its speed and its pacing, printed with the figures.
SETTINGS = (
    "slots_per_group",
    "keys_per_batch",
    "pipeline_depth",
    "handover_max_keys",
    "pace_ratio",
    "pace_check_s",
)


def redis_cli() -> str:
    found = shutil.which("redis-cli")
    if not found:
        raise RuntimeError("redis-cli is not installed (Debian redis-tools)")
    return found


def node(address: str, timeout_s: float = 30) -> redis.Redis:
    host, port = split_address(address)
    return redis.Redis(host=host, port=port, socket_timeout=timeout_s)


# ---- the data ---------------------------------------------------------------------


def slot_tags(first: int, last: int) -> dict[int, str]:
    """A hash tag for every slot in first..last, so keys can be spread evenly."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < last - first + 1:
        slot = slot_of(f"{{{i}}}")
        if first <= slot <= last:
            found.setdefault(slot, str(i))
        i += 1
    return found


@dataclass
class Data:
    keys: int
    tags: dict[int, str]
    values: list[bytes]

    def key(self, i: int) -> str:
        """Key i: round robin over the moved slots."""
        slot = MOVED[0] + i % len(self.tags)
        return f"{{{self.tags[slot]}}}:{i}"

    def value(self, i: int) -> bytes:
        return self.values[i % len(self.values)]


def make_data(mb: float) -> Data:
    rnd = random.Random(1)
    # Random bytes: the RDB payload of MIGRATE would LZF-compress a repeated one.
    values = [rnd.randbytes(VALUE_SIZE) for _ in range(256)]
    return Data(int(mb * 1e6 / VALUE_SIZE), slot_tags(*MOVED), values)


def fill(owner: str, data: Data) -> None:
    r = node(owner)
    try:
        for i in range(0, data.keys, 2000):
            pipe = r.pipeline(transaction=False)
            for j in range(i, min(i + 2000, data.keys)):
                pipe.set(data.key(j), data.value(j))
            pipe.execute()
    finally:
        r.close()


def keys_in_moved(address: str) -> int:
    r = node(address)
    try:
        pipe = r.pipeline(transaction=False)
        for s in range(MOVED[0], MOVED[1] + 1):
            pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", s)
        return sum(pipe.execute())
    finally:
        r.close()


def check_moved(cl: Cluster, owner: str, data: Data, expected: int) -> None:
    """Every key of the moved slots is on the new owner, none left behind, values intact."""
    other = cl.b if owner == cl.a else cl.a
    got, left = keys_in_moved(owner), keys_in_moved(other)
    if got != expected or left:
        raise RuntimeError(f"{owner} has {got:,} keys of {expected:,}; {left:,} left on {other}")
    r = node(owner)
    try:
        sample = random.Random(got).sample(range(data.keys), min(2000, data.keys))
        pipe = r.pipeline(transaction=False)
        for i in sample:
            pipe.get(data.key(i))
        wrong = [i for i, v in zip(sample, pipe.execute(), strict=True) if v != data.value(i)]
    finally:
        r.close()
    if wrong:
        raise RuntimeError(f"{len(wrong)} of {len(sample)} sampled values differ on {owner}")


# ---- the cluster ------------------------------------------------------------------


@dataclass
class Cluster:
    acts: RedisClusterActivities
    nodes: list[str]
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def a(self) -> str:
        return self.nodes[0]

    @property
    def b(self) -> str:
        return self.nodes[2]

    def owns(self, address: str) -> list[tuple[int, int]]:
        r = node(address)
        try:
            return view_of(r).myself.ranges
        finally:
            r.close()

    def settle(self, owner: str, ranges: list[tuple[int, int]]) -> None:
        """Until every node sees ``owner`` own ``ranges`` (a move's next step reads them)."""
        conns = Conns(10)
        try:
            wait_seen_owning(conns, self.a, self.ids[owner], ranges, lambda: None, 30)
        finally:
            conns.close()


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    """One chunk: masters A (node 0) and B (node 2), each replicated on the other proxy."""
    with tempfile.TemporaryDirectory(prefix="scaleflow-bench-redis-") as tmp:
        settings = Settings(state_dir=Path(tmp) / "state")
        proxies = LocalProxies(settings)
        try:
            nodes: list[str] = []
            for pid, host in zip(("a", "b"), HOSTS, strict=True):
                got = proxies.provision(ProvisionProxyInput(proxy_id=pid, host=host))
                nodes += got.proxy.node_addresses
            specs = [
                ClusterNodeSpec(address=nodes[0], role=Role.MASTER, slots=[MOVED]),
                ClusterNodeSpec(address=nodes[1], role=Role.REPLICA, master=nodes[2]),
                ClusterNodeSpec(
                    address=nodes[2], role=Role.MASTER, slots=[(MOVED[1] + 1, SLOTS - 1)]
                ),
                ClusterNodeSpec(address=nodes[3], role=Role.REPLICA, master=nodes[0]),
            ]
            acts = RedisClusterActivities(settings)
            formed = ActivityEnvironment().run(
                acts.form_redis_cluster, FormClusterInput(nodes=specs, assign_slots=True)
            )
            yield Cluster(acts, nodes, dict(formed.node_ids))
        finally:
            for rec in proxies.records():
                proxies.destroy(DestroyProxyInput(proxy_id=rec.proxy_id))
            # Anything left (a destroy that failed): ours by the state dir in its title.
            marker = str(settings.state_dir.resolve())
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and any(
                    marker in a for a in processes.cmdline(int(entry.name))
                ):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(entry.name), signal.SIGKILL)


# ---- the two ways to move the slots ------------------------------------------------


def scaleflow_move(cl: Cluster, source: str, target: str, **over: Any) -> tuple[float, Any]:
    req = MigrateSlotsInput(source=source, target=target, ranges=[MOVED], **over)
    started = time.perf_counter()
    result: MigrateSlotsResult = ActivityEnvironment().run(cl.acts.migrate_redis_slots, req)
    return time.perf_counter() - started, result


def cli_move(cl: Cluster, source: str, target: str, pipeline: int) -> float:
    """``redis-cli --cluster reshard``: it takes the source's first slots, i.e. MOVED."""
    args = [
        redis_cli(),
        "--cluster",
        "reshard",
        source,
        "--cluster-from",
        cl.ids[source],
        "--cluster-to",
        cl.ids[target],
        "--cluster-slots",
        str(MOVED[1] - MOVED[0] + 1),
        "--cluster-yes",
        "--cluster-pipeline",
        str(pipeline),
    ]
    started = time.perf_counter()
    # It prints a line per slot and a dot per batch: to a file, read only on failure.
    with tempfile.TemporaryFile() as out:
        rc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, timeout=3600).returncode
        elapsed = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode(errors="replace")
    if rc != 0 or "[ERR]" in text:
        raise RuntimeError(f"redis-cli reshard failed ({rc}): {text[-2000:]}")
    return elapsed


def settle_after(cl: Cluster, owner: str) -> None:
    cl.settle(owner, [MOVED])


# ---- the client -------------------------------------------------------------------


def client_main(seed: str, conn: Connection) -> None:
    """GET/SET (1:1) of 1 KiB values over ``CLIENT_KEYS`` keys on every slot, one op at a
    time; ops counted per ``BUCKET_S``, reads checked against the last write."""
    host, port = split_address(seed)
    c = RedisCluster(host=host, port=port)
    rnd = random.Random(5)
    keys = [f"c:{i}" for i in range(CLIENT_KEYS)]
    value = rnd.randbytes(VALUE_SIZE)
    pipe = c.pipeline()
    for k in keys:
        pipe.set(k, value)
    pipe.execute()
    last = dict.fromkeys(keys, value)
    conn.send("ready")
    buckets: list[tuple[float, int]] = []
    errors: list[str] = []
    wrong = ops = 0
    edge = time.monotonic() + BUCKET_S
    n = 0
    while not conn.poll():
        k = keys[rnd.randrange(CLIENT_KEYS)]
        try:
            if n % 2:
                got = c.get(k)
                if got != last[k]:
                    wrong += 1
            else:
                v = k.encode() + rnd.randbytes(8) + value[: VALUE_SIZE - len(k) - 8]
                c.set(k, v)
                last[k] = v
            ops += 1
        except Exception as e:  # counted, reported: the client carries on as an app would
            errors.append(f"{type(e).__name__}: {e}")
        n += 1
        now = time.monotonic()
        if now >= edge:
            buckets.append((now, ops))
            ops = 0
            edge = now + BUCKET_S
    conn.send({"buckets": buckets, "errors": errors[:20], "n_errors": len(errors), "wrong": wrong})
    c.close()


class Client:
    """``client_main`` in a process of its own, as an application is."""

    def __init__(self, seed: str) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=client_main, args=(seed, child), daemon=True)

    def __enter__(self) -> Client:
        self.proc.start()
        if not self.conn.poll(60) or self.conn.recv() != "ready":
            raise RuntimeError("the client did not start")
        return self

    def stop(self) -> dict[str, Any]:
        self.conn.send("stop")
        if not self.conn.poll(60):
            raise RuntimeError("the client did not stop")
        got: dict[str, Any] = self.conn.recv()
        self.proc.join(10)
        return got

    def __exit__(self, *exc: object) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def rate(buckets: list[tuple[float, int]], start: float, end: float) -> float:
    """Ops/s of the buckets that ended within start..end."""
    inside = [(t, n) for t, n in buckets if start < t <= end]
    if len(inside) < 2:
        return 0.0
    return sum(n for _, n in inside[1:]) / (inside[-1][0] - inside[0][0])


# ---- the runs ---------------------------------------------------------------------


@dataclass
class Leg:
    tool: str
    seconds: float
    keys: int
    mb: float

    @property
    def keys_per_s(self) -> float:
        return self.keys / self.seconds

    @property
    def mb_per_min(self) -> float:
        return self.mb / self.seconds * 60


@dataclass
class PathFigures:
    path: str
    ours: list[Leg] = field(default_factory=list)
    cli: list[Leg] = field(default_factory=list)
    # (ours, redis-cli) client ratio per round
    client: list[tuple[float, float]] = field(default_factory=list)
    client_rates: list[tuple[float, float, float]] = field(default_factory=list)
    client_errors: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        ours = statistics.median(x.keys_per_s for x in self.ours)
        return ours / statistics.median(x.keys_per_s for x in self.cli)


def throughput_round(cl: Cluster, data: Data, fig: PathFigures, pipeline: int) -> None:
    mb = data.keys * VALUE_SIZE / 1e6
    expected = keys_in_moved(cl.a)
    secs, res = scaleflow_move(cl, cl.a, cl.b)
    check_moved(cl, cl.b, data, expected)
    fig.ours.append(Leg("scaleflow", secs, expected, mb))
    want_handover = fig.path == "hand-over"
    if (res.handovers > 0) != want_handover:
        raise RuntimeError(f"{fig.path} run made {res.handovers} hand-overs")
    secs = cli_move(cl, cl.b, cl.a, pipeline)
    settle_after(cl, cl.a)
    check_moved(cl, cl.a, data, expected)
    fig.cli.append(Leg("redis-cli", secs, expected, mb))
    print(
        f"    {fig.path} round {len(fig.ours)}: scaleflow {fig.ours[-1].keys_per_s:,.0f} keys/s "
        f"({fig.ours[-1].seconds:.1f} s), redis-cli {fig.cli[-1].keys_per_s:,.0f} keys/s "
        f"({fig.cli[-1].seconds:.1f} s)",
        flush=True,
    )


def client_round(cl: Cluster, data: Data, fig: PathFigures, pipeline: int) -> None:
    """A move each way with the client running; its rate during each against just before."""
    with Client(cl.a) as client:
        time.sleep(1.0)  # past its start-up
        t0 = time.monotonic()
        time.sleep(BASELINE_S)
        t1 = time.monotonic()
        scaleflow_move(cl, cl.a, cl.b)
        t2 = time.monotonic()
        time.sleep(BASELINE_S)
        t3 = time.monotonic()
        cli_move(cl, cl.b, cl.a, pipeline)
        t4 = time.monotonic()
        settle_after(cl, cl.a)
        got = client.stop()
    b = got["buckets"]
    base1, during1, base2, during2 = (
        rate(b, t0, t1),
        rate(b, t1, t2),
        rate(b, t2 + 1.0, t3),  # the client's slot map catches up after a move
        rate(b, t3, t4),
    )
    fig.client.append((during1 / base1, during2 / base2))
    fig.client_rates.append((base1, during1, during2))
    if got["n_errors"] or got["wrong"]:
        fig.client_errors.append(
            f"{got['n_errors']} errors, {got['wrong']} stale reads: {got['errors'][:3]}"
        )
    print(
        f"    {fig.path} client round {len(fig.client)}: before {base1:,.0f} ops/s, during "
        f"scaleflow {during1:,.0f} ({during1 / base1:.2f}); before {base2:,.0f}, during "
        f"redis-cli {during2:,.0f} ({during2 / base2:.2f}); errors {got['n_errors']}, "
        f"stale reads {got['wrong']}; the moves took {t2 - t1:.1f} s (scaleflow, paced) "
        f"and {t4 - t3:.1f} s (redis-cli)",
        flush=True,
    )
    check_moved(cl, cl.a, data, keys_in_moved(cl.a))


def measure(
    mb: float, rounds: int, paths: list[str], pipeline: int, client: bool = True
) -> list[PathFigures]:
    data = make_data(mb)
    figures = []
    with cluster() as cl:
        started = time.perf_counter()
        fill(cl.a, data)
        print(
            f"  filled {data.keys:,} keys x {VALUE_SIZE} B in slots {MOVED[0]}-{MOVED[1]} "
            f"in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        for path in paths:
            if path == "hand-over":
                # B gives up its other slots: a new, empty master as a scale-out adds.
                rest = (MOVED[1] + 1, SLOTS - 1)
                if cl.owns(cl.b):
                    req = MigrateSlotsInput(source=cl.b, target=cl.a, ranges=[rest])
                    ActivityEnvironment().run(cl.acts.migrate_redis_slots, req)
            fig = PathFigures(path)
            for _ in range(rounds):
                throughput_round(cl, data, fig, pipeline)
            for _ in range(rounds if client else 0):
                client_round(cl, data, fig, pipeline)
            figures.append(fig)
    return figures


def report(mb: float, figures: list[PathFigures], pipeline: int) -> dict[str, Any]:
    defaults = MigrateSlotsInput(source="127.0.0.1:1", target="127.0.0.1:2", ranges=[MOVED])
    pacing = {k: getattr(defaults, k) for k in SETTINGS}
    print(
        f"\nbroker slot migration, {mb:,.0f} MB of {VALUE_SIZE} B values in {MOVED[1] + 1} slots; "
        f"redis-cli --cluster-pipeline {pipeline}; activity defaults {pacing}"
    )
    out: dict[str, Any] = {}
    for fig in figures:
        o_keys = statistics.median(x.keys_per_s for x in fig.ours)
        c_keys = statistics.median(x.keys_per_s for x in fig.cli)
        o_mb = statistics.median(x.mb_per_min for x in fig.ours)
        c_mb = statistics.median(x.mb_per_min for x in fig.cli)
        met = fig.ratio >= TARGET_RATIO and o_mb / 1000 >= TARGET_GB_PER_MIN
        print(f"  {fig.path} path (median of {len(fig.ours)}):")
        print(f"    scaleflow  {o_keys:>10,.0f} keys/s  {o_mb:>8,.0f} MB/min")
        print(f"    redis-cli  {c_keys:>10,.0f} keys/s  {c_mb:>8,.0f} MB/min")
        print(
            f"    ratio {fig.ratio:.2f} (target >= {TARGET_RATIO}), {o_mb / 1000:.2f} GB/min "
            f"(target >= {TARGET_GB_PER_MIN}): {'met' if met else 'NOT met'}"
        )
        if fig.client:
            ours = statistics.median(x[0] for x in fig.client)
            cli = statistics.median(x[1] for x in fig.client)
            verdict = "met" if ours >= TARGET_CLIENT_RATIO else "NOT met"
            print(
                f"    client during the move / before: scaleflow {ours:.2f} "
                f"(rounds {', '.join(f'{x[0]:.2f}' for x in fig.client)}), redis-cli {cli:.2f} "
                f"(rounds {', '.join(f'{x[1]:.2f}' for x in fig.client)}); "
                f"target >= {TARGET_CLIENT_RATIO}: {verdict}"
            )
            out[f"{fig.path} client ratio"] = ours
        for e in fig.client_errors:
            print(f"    client: {e}")
        out[f"{fig.path} ratio"] = fig.ratio
        out[f"{fig.path} MB/min"] = o_mb
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.broker_migration", description=__doc__)
    p.add_argument("--mb", type=float, default=float(os.environ.get("BENCH_BROKER_MB", 1000)))
    p.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_BROKER_ROUNDS", 1)))
    p.add_argument(
        "--path", choices=["windowed", "hand-over", "both"], default="both", help="which path"
    )
    p.add_argument("--cli-pipeline", type=int, default=CLI_PIPELINE)
    p.add_argument("--no-client", action="store_true", help="part 1 only: no client rounds")
    return p.parse_args(argv)


async def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv or [])
    paths = ["windowed", "hand-over"] if args.path == "both" else [args.path]
    figures = await asyncio.to_thread(
        measure, args.mb, args.rounds, paths, args.cli_pipeline, not args.no_client
    )
    return report(args.mb, figures, args.cli_pipeline)


if __name__ == "__main__":
    import sys

    asyncio.run(run(sys.argv[1:]))
