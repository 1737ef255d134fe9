"""A Redis Cluster client under load, in its own process, for ``test_broker_load``.

It runs a stock redis-py ``RedisCluster`` (no patch, no subclass): SET, GET, DEL and
same-slot MSET (hash tags), writing a fresh value every time so that a stale read shows.
It records every exception the client raises, every value a GET got that is not the
last one written, and what each key must hold. When the stop file appears (or after
``--max-s``) it reads every key back and writes a JSON report:

``{"ops": {...}, "errors": [...], "stale": [...], "lost": [...], "resurrected": [...],
"keys": n, "deleted": n}``

The client is told to retry for longer than a failover takes (``retry``, a constructor
argument of redis-py): a master that was SIGKILLed answers nothing until the broker has
promoted its replica, and redis-py retries at once, without backoff.

Run: ``python -m tests.e2e.broker_load_client --seed HOST:PORT --report R --ready F --stop S``
"""

from __future__ import annotations

import argparse
import json
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.backoff import ConstantBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

# Attempts a command gets while its master is down: each one re-reads the slot map (a
# round trip), so thousands cover the few seconds that a failover takes.
RETRIES = 20_000
# How many groups the tagged MSETs use, and how many keys each writes.
TAGS = 200
TAGGED = 3


@dataclass
class Load:
    rc: RedisCluster
    rng: random.Random
    expected: dict[str, str] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    # Keys whose last write raised: its outcome is unknown, so they are not checked.
    unsure: set[str] = field(default_factory=set)
    errors: list[dict[str, Any]] = field(default_factory=list)
    stale: list[dict[str, Any]] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    # Every key ever written, to pick from (a list: random.choice on a dict is O(n)).
    keys: list[str] = field(default_factory=list)
    seq: int = 0
    next_key: int = 0

    def _value(self, key: str) -> str:
        self.seq += 1
        return f"{key}={self.seq}"

    def _count(self, op: str) -> None:
        self.ops[op] = self.ops.get(op, 0) + 1

    def _failed(self, op: str, keys: list[str], exc: Exception) -> None:
        self.unsure.update(keys)
        self.errors.append(
            {
                "at": time.time(),
                "op": op,
                "keys": keys[:5],
                "type": type(exc).__name__,
                "error": str(exc)[:500],
                "trace": traceback.format_exc(limit=6)[-2000:],
            }
        )

    def _written(self, values: dict[str, str]) -> None:
        self.keys += [k for k in values if k not in self.expected and k not in self.deleted]
        self.expected.update(values)
        self.deleted.difference_update(values)
        self.unsure.difference_update(values)

    def set_new(self) -> None:
        key = f"load:{self.next_key}"
        self.next_key += 1
        self.set(key)

    def set(self, key: str) -> None:
        value = self._value(key)
        try:
            self.rc.set(key, value)
        except Exception as exc:
            self._failed("set", [key], exc)
            return
        self._count("set")
        self._written({key: value})

    def get(self, key: str) -> None:
        try:
            got = self.rc.get(key)
        except Exception as exc:
            self._failed("get", [], exc)
            return
        self._count("get")
        want = None if key in self.deleted else self.expected.get(key)
        if key not in self.unsure and got != want:
            self.stale.append({"at": time.time(), "key": key, "got": got, "want": want})

    def delete(self, key: str) -> None:
        try:
            self.rc.delete(key)
        except Exception as exc:
            self._failed("del", [key], exc)
            return
        self._count("del")
        self.expected.pop(key, None)
        self.deleted.add(key)
        self.unsure.discard(key)

    def mset(self) -> None:
        tag = self.rng.randrange(TAGS)
        values = {f"{{tag{tag}}}:{i}": "" for i in range(TAGGED)}
        values = {k: self._value(k) for k in values}
        try:
            self.rc.mset(values)
        except Exception as exc:
            self._failed("mset", list(values), exc)
            return
        self._count("mset")
        self._written(values)

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.25:
            self.set_new()
        elif roll < 0.45:
            self.set(self.rng.choice(self.keys))
        elif roll < 0.75:
            self.get(self.rng.choice(self.keys))
        elif roll < 0.85:
            self.delete(self.rng.choice(self.keys))
        else:
            self.mset()

    def verify(self) -> dict[str, Any]:
        """Every key read back: its last value, or gone if it was deleted last."""
        lost, resurrected = [], []
        keys = sorted(set(self.expected) - self.unsure)
        gone = sorted(self.deleted - self.unsure)
        for key in keys:
            got = self.rc.get(key)
            if got != self.expected[key]:
                lost.append({"key": key, "got": got, "want": self.expected[key]})
        for key in gone:
            got = self.rc.get(key)
            if got is not None:
                resurrected.append({"key": key, "got": got})
        return {"keys": len(keys), "deleted": len(gone), "lost": lost, "resurrected": resurrected}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", required=True, help="host:port of a cluster node")
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--ready", type=Path, required=True, help="created once keys exist")
    ap.add_argument("--stop", type=Path, required=True, help="the test creates it to stop")
    ap.add_argument("--prefill", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=1500.0, help="operations per second, at most")
    ap.add_argument("--max-s", type=float, default=600.0, help="bounded even if never stopped")
    ap.add_argument("--retries", type=int, default=RETRIES)
    args = ap.parse_args()

    host, _, port = args.seed.rpartition(":")
    rc = RedisCluster(
        host=host,
        port=int(port),
        decode_responses=True,
        retry=Retry(ConstantBackoff(0.001), args.retries),
    )
    load = Load(rc=rc, rng=random.Random(4015))
    for _ in range(args.prefill):
        load.set_new()
    for _ in range(TAGS):
        load.mset()
    args.ready.write_text("ready\n")

    started = time.monotonic()
    pause = 1.0 / args.rate
    while not args.stop.exists() and time.monotonic() - started < args.max_s:
        for _ in range(50):
            load.step()
            time.sleep(pause)
    report: dict[str, Any] = {
        "ops": load.ops,
        "errors": load.errors,
        "stale": load.stale,
        "unsure": len(load.unsure),
        "seconds": time.monotonic() - started,
    }
    try:
        report.update(load.verify())
    except Exception as exc:
        report["verify_error"] = f"{type(exc).__name__}: {exc}"
    rc.close()
    tmp = args.report.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    tmp.replace(args.report)


if __name__ == "__main__":
    main()
