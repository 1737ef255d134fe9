"""The local proxy provider against real redis-server processes."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from scaleflow.activities import processes
from scaleflow.activities.redis_proxies import (
    RESERVED_PORTS,
    LocalProxies,
    RedisProxyActivities,
)
from scaleflow.core.broker.activity_io import (
    DestroyProxyInput,
    ProvisionProxyInput,
    ProvisionProxyResult,
    ProxyInfo,
)
from scaleflow.core.models import ActivityReport
from scaleflow.core.settings import Settings

INSTALL_HINT = (
    "is not installed: `make test` runs scripts/install-system-deps.sh, which installs "
    "Debian's redis-server and redis-tools (or: apt-get install -y redis-server redis-tools)"
)


def require(binary: str) -> str:
    found = shutil.which(binary)
    if not found:
        raise RuntimeError(f"{binary} {INSTALL_HINT}")
    return found


def redis_pids_under(state_dir: Path) -> list[int]:
    """Live redis-server processes whose config lives under ``state_dir``."""
    marker = str(state_dir.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        args = processes.cmdline(pid)
        ours = bool(args) and "redis-server" in args[0] and any(marker in a for a in args)
        if ours and processes.is_running(pid):
            found.append(pid)
    return found


@pytest.fixture
def proxies(settings: Settings) -> Iterator[LocalProxies]:
    """The provider in the test's state dir; no redis-server of it is left after."""
    require("redis-server")
    p = LocalProxies(settings)
    try:
        yield p
    finally:
        for rec in p.records():
            p.destroy(DestroyProxyInput(proxy_id=rec.proxy_id))
        left = redis_pids_under(settings.state_dir)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"redis-server processes left behind: {left}"


def ping(address: str) -> bool:
    host, _, port = address.rpartition(":")
    r = redis.Redis(host=host, port=int(port), socket_timeout=2)
    try:
        return bool(r.ping())
    finally:
        r.close()


def test_provision_is_idempotent_and_destroy_leaves_nothing(
    proxies: LocalProxies, settings: Settings
) -> None:
    acts = RedisProxyActivities(settings, proxies)
    env = ActivityEnvironment()
    req = ProvisionProxyInput(proxy_id="p-1", host="127.0.0.2")

    first: ProvisionProxyResult = env.run(acts.provision_redis_proxy, req)
    proxy = first.proxy
    assert proxy.host == "127.0.0.2" and proxy.proxy_address == proxy.node_addresses[0]
    assert all(a.startswith("127.0.0.2:") for a in proxy.node_addresses)
    ports = {int(a.rpartition(":")[2]) for a in proxy.node_addresses}
    assert len(ports) == 2 and not ports & RESERVED_PORTS
    assert all(ping(a) for a in proxy.node_addresses)
    for pid in proxy.pids:
        assert pid is not None
        # Its own session: the node outlives the worker that started it.
        assert os.getsid(pid) == pid
    host, _, port = proxy.proxy_address.rpartition(":")
    info = redis.Redis(host=host, port=int(port)).info("cluster")
    assert info["cluster_enabled"] == 1

    # A retry finds the running pair instead of starting another.
    again = env.run(acts.provision_redis_proxy, req)
    assert again.proxy == proxy
    assert "found" in again.events[0].message
    assert len(redis_pids_under(settings.state_dir)) == 2

    # A node that died is started again on its recorded port.
    pid0 = proxy.pids[0]
    assert pid0 is not None
    os.kill(pid0, signal.SIGKILL)
    processes.reap(pid0)
    revived = env.run(acts.provision_redis_proxy, req).proxy
    assert revived.node_addresses == proxy.node_addresses
    assert revived.pids[0] != pid0 and revived.pids[1] == proxy.pids[1]
    assert ping(revived.proxy_address)

    listed = env.run(acts.list_redis_proxies).proxies
    assert [p.proxy_id for p in listed] == ["p-1"] and listed[0].running

    gone: ActivityReport = env.run(acts.destroy_redis_proxy, DestroyProxyInput(proxy_id="p-1"))
    assert "destroyed" in gone.events[0].message
    assert redis_pids_under(settings.state_dir) == []
    assert not (proxies.dir / "p-1").exists() and proxies.load("p-1") is None
    twice = env.run(acts.destroy_redis_proxy, DestroyProxyInput(proxy_id="p-1"))
    assert "already gone" in twice.events[0].message
    assert env.run(acts.list_redis_proxies).proxies == []


def test_a_record_without_pids_adopts_the_running_pair(proxies: LocalProxies) -> None:
    """A worker killed after spawning but before saving the pids."""
    proxy = proxies.provision(ProvisionProxyInput(proxy_id="p-2", host="127.0.0.3")).proxy
    rec = proxies.load("p-2")
    assert rec is not None
    proxies._save(rec.model_copy(update={"pids": (None, None)}))
    adopted = proxies.provision(ProvisionProxyInput(proxy_id="p-2", host="127.0.0.3")).proxy
    assert adopted.pids == proxy.pids


def test_bad_hosts_and_ids_are_refused(proxies: LocalProxies) -> None:
    for host in ("127.0.0.1", "10.0.0.2", "localhost", "127.0.0.02", "127.0.0.255"):
        with pytest.raises(ValidationError):
            ProvisionProxyInput(proxy_id="p", host=host)
    for proxy_id in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(ValidationError):
            ProvisionProxyInput(proxy_id=proxy_id, host="127.0.0.2")
    proxies.provision(ProvisionProxyInput(proxy_id="p-3", host="127.0.0.4"))
    with pytest.raises(ApplicationError) as err:
        proxies.provision(ProvisionProxyInput(proxy_id="p-3", host="127.0.0.5"))
    assert err.value.non_retryable


def test_list_shows_a_dead_node(proxies: LocalProxies) -> None:
    proxy = proxies.provision(ProvisionProxyInput(proxy_id="p-4", host="127.0.0.2")).proxy
    pid1 = proxy.pids[1]
    assert pid1 is not None
    os.kill(pid1, signal.SIGKILL)
    processes.reap(pid1)
    [listed] = proxies.list().proxies
    assert isinstance(listed, ProxyInfo)
    assert listed.pids == (proxy.pids[0], None) and not listed.running
