"""Random broker actions, valid or not, in the spirit of undermoon's chaos test.

Create clusters of 0-40 nodes, add nodes then expand or shrink, commit moves, drop
free nodes, fail proxies over, now and then delete a cluster. After every accepted
action the metadata keeps its invariants and its epochs rose; a refused action
leaves its input untouched (the planner is pure).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scaleflow.core.broker import clusters, epochs, failover, failures, migration
from scaleflow.core.broker.chunks import proxy_addresses, running_migrations
from scaleflow.core.broker.errors import BrokerError, BrokerErrorCode
from scaleflow.core.broker.models import BrokerConfig, BrokerMeta
from tests.core.broker.helpers import check_epochs, check_meta, make_meta

Action = Callable[[BrokerMeta], BrokerMeta]
WEIGHTS = {
    "create": 4,
    "delete": 1,
    "add": 3,
    "add_if_needed": 1,
    "expand": 3,
    "shrink": 3,
    "auto": 3,
    "commit": 12,
    "delete_free": 3,
    "failover": 1,
    "balance": 1,
    "config": 1,
    "report": 1,
    "prune": 1,
    "readd": 1,
    "bump": 1,
}


def _name(meta: BrokerMeta, rnd: random.Random) -> str:
    if meta.clusters and rnd.random() < 0.7:
        return rnd.choice(sorted(meta.clusters))
    if rnd.random() < 0.85:
        return rnd.choice(["a", "b", "c"])
    return rnd.choice(["bad name", "x" * 31, ""])


def _number(rnd: random.Random) -> int:
    return rnd.choice(range(0, 44, 4)) if rnd.random() < 0.85 else rnd.randint(0, 40)


def _pick(meta: BrokerMeta, rnd: random.Random, now: float) -> tuple[str, Action | None]:
    kind = rnd.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    name, number = _name(meta, rnd), _number(rnd)
    in_use = sorted(p for c in meta.clusters.values() for p in proxy_addresses(c))
    tasks = [t for c in meta.clusters.values() for t in running_migrations(c)]
    actions: dict[str, Action | None] = {
        "create": lambda m: clusters.create_cluster(m, name, number),
        "delete": lambda m: clusters.delete_cluster(m, name),
        "add": lambda m: clusters.add_nodes(m, name, number),
        "add_if_needed": lambda m: clusters.add_nodes_if_needed(m, name, number),
        "expand": lambda m: migration.expand(m, name),
        "shrink": lambda m: migration.shrink(m, name, number),
        "auto": lambda m: migration.auto_scale(m, name, number)[0],
        "commit": (lambda m: migration.commit_migration(m, rnd.choice(tasks))) if tasks else None,
        "delete_free": lambda m: clusters.delete_free_nodes(m, name),
        "failover": (lambda m: failover.failover(m, rnd.choice(in_use)).meta) if in_use else None,
        "balance": lambda m: failover.balance_masters(m, name),
        "config": lambda m: clusters.change_config(m, name, {"migration_limit": number}),
        "report": lambda m: failures.add_failure(m, rnd.choice(sorted(m.all_proxies)), "r", now),
        "prune": lambda m: failures.prune_failures(m, now, BrokerConfig()),
        "readd": (
            (lambda m: _readd(m, rnd.choice(m.failed_proxies))) if meta.failed_proxies else None
        ),
        "bump": lambda m: epochs.force_bump_epoch(m, m.global_epoch + number),
    }
    return kind, actions[kind]


def _readd(meta: BrokerMeta, address: str) -> BrokerMeta:
    proxy = meta.all_proxies[address]
    return clusters.add_proxy(meta, address, list(proxy.node_addresses), proxy.host)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=st.lists(st.integers(min_value=1, max_value=6), min_size=2, max_size=6),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_random_actions_keep_invariants_and_raise_epochs(layout: list[int], seed: int) -> None:
    # A seeded generator: hypothesis's own randoms lean on repeating one choice.
    rnd = random.Random(seed)
    meta = make_meta(layout)
    now = 1_000.0
    accepted: dict[str, int] = {}
    for _ in range(200):
        now += rnd.choice([1.0, 30.0, 90.0])
        kind, act = _pick(meta, rnd, now)
        if act is None:
            continue
        snapshot = meta.model_dump_json()
        try:
            after = act(meta)
        except BrokerError as err:
            assert meta.model_dump_json() == snapshot, f"refused {kind} changed its input"
            assert err.code in BrokerErrorCode
            continue
        assert meta.model_dump_json() == snapshot, f"{kind} changed its input"
        if after is meta:
            continue  # nothing to change, e.g. a repeated report
        check_epochs(meta, after)
        check_meta(after)
        accepted[kind] = accepted.get(kind, 0) + 1
        meta = after
    assert accepted, "no action was accepted"
