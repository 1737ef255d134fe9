"""``scaleflow scale ... --wait`` as a subprocess against a real stack (dev server, API on
a port, in-process worker, real memcached): events live, the slots bar, exit codes,
the progress route, and request ids that make a retry safe."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from scaleflow.cli_http import ApiClient
from tests.cli.helpers import CLI, DroppingProxy, cli_env, gated_memcached, run_cli
from tests.e2e.slot_helpers import keyset, write_all
from tests.e2e.stack import stack, stack_settings
from tests.e2e.test_cancel_scale_in import draining_node, held_connections

SUCCESS = "scaling activity has successfully completed"
OP_LINE = re.compile(r"operation ([0-9a-f-]{36})")


async def test_scale_out_wait_prints_events_and_slot_progress(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        api = str(st.http.base_url)
        assert (await st.put_policy(name, MinCount=1)).status_code == 200
        await st.wait_pool(name, 1)
        values = keyset(3000)
        await asyncio.to_thread(write_all, api, name, values)

        run = await run_cli("scale", "out", name, "--wait", env=cli_env(api))
        assert run.returncode == 0, run.stdout + run.stderr
        found = OP_LINE.search(run.stdout)
        assert found, run.stdout
        op_id = found.group(1)
        doc = (await st.http.get(f"/v1/scale/status/{op_id}")).json()
        assert doc["Status"] == "success"
        # Every event of the document was printed, once, in order.
        lines = run.stdout.splitlines()
        at = [
            next(i for i, ln in enumerate(lines) if ln.endswith(e["Message"]))
            for e in doc["Events"]
        ]
        assert at == sorted(at) and len(set(at)) == len(at), run.stdout
        assert any(ln.endswith(SUCCESS) for ln in lines)
        # The final status line and the slots bar: half of 16384 slots moved to the new node.
        assert re.search(r"scale-out of pool \S+: success", run.stdout), run.stdout
        bar = re.search(r"slots .*━.* 8192/8192 ([\d,]+) keys moved", run.stdout)
        assert bar, run.stdout

        progress = (await st.http.get(f"/v1/scale/progress/{op_id}")).json()
        assert progress["status"] == "success"
        assert progress["slots_total"] == 8192 == progress["slots_done"]
        assert 0 < progress["keys_moved"] <= len(values)
        assert int(bar.group(1).replace(",", "")) == progress["keys_moved"]
        assert progress["migrations"] == [f"{op_id}-migration-1"]
        assert progress["details"] == f"8192 of 8192 slots and {progress['keys_moved']} keys moved"

        # The same numbers through the CLI's own read verb.
        shown = await run_cli("progress", op_id, "-o", "json", env=cli_env(api))
        assert shown.returncode == 0 and json.loads(shown.stdout) == progress
        await st.wait_pool(name, 2)


async def test_progress_route_errors_are_scaleflow_errors(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        unknown = str(uuid.uuid4())
        resp = await st.http.get(f"/v1/scale/progress/{unknown}")
        assert resp.status_code == 404
        assert resp.json() == {"Error": f"no scaling event with ID {unknown!r}", "Code": 404}
        for segment in ["not-a-uuid", "%00", "a" * 300, "%F0%9F%92%A5", "-", ".."]:
            resp = await st.http.get(f"/v1/scale/progress/{segment}")
            assert resp.status_code < 500, (segment, resp.text)
            assert set(resp.json()) == {"Error", "Code"}
        gone = await run_cli("progress", unknown, env=cli_env(str(st.http.base_url)))
        assert gone.returncode == 1 and "404" in gone.stderr


async def test_scale_in_below_min_count_exits_non_zero(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        await st.put_policy(name, MinCount=1)
        await st.wait_pool(name, 1)
        run = await run_cli("scale", "in", name, "--wait", env=cli_env(str(st.http.base_url)))
        assert run.returncode == 1, run.stdout + run.stderr
        assert "412" in run.stderr and "MinCount" in run.stderr
        assert not OP_LINE.search(run.stdout)  # nothing was started, nothing waited for
        assert len((await st.wait_pool(name, 1))["nodes"]) == 1


async def test_a_cancelled_operation_exits_non_zero(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    memcached_bin, armed, gate = gated_memcached(tmp_path)
    settings = stack_settings(tmp_path, dev_env.client, memcached_bin=memcached_bin)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        api = str(st.http.base_url)
        await st.put_policy(name, MinCount=1)
        await st.wait_pool(name, 1)
        armed.touch()  # from now on a new node waits for the gate
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "scale",
            "out",
            name,
            "--wait",
            env=cli_env(api),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            found = OP_LINE.search(first)
            assert found, first
            op_id = found.group(1)
            # Held in provisioning by the gate: still running when the cancel comes.
            await st.wait_activity(op_id, "node_ready")
            cancel = await run_cli("cancel", op_id, env=cli_env(api))
            assert cancel.returncode == 0, cancel.stderr
            assert json.loads(cancel.stdout)["Status"] == "cancelling"
            rest, err = await asyncio.wait_for(proc.communicate(), 180)
        finally:
            gate.touch()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 1, (rest + err).decode()
        assert re.search(r"scale-out of pool \S+: cancelled", rest.decode()), rest.decode()
        assert SUCCESS not in rest.decode()
        doc = (await st.http.get(f"/v1/scale/status/{op_id}")).json()
        assert doc["Status"] == "cancelled"
        # Waiting on an operation that already ended says how it ended.
        again = await run_cli("status", op_id, "--wait", env=cli_env(api))
        assert again.returncode == 1 and "cancelled" in again.stdout


async def test_a_request_id_sent_twice_scales_once(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        api = str(st.http.base_url)
        await st.put_policy(name, MinCount=1)
        await st.wait_pool(name, 1)
        ops = {"pool": name}
        before = set((await st.http.get("/v1/scale/status", params=ops)).json())

        # The CLI's request function, twice with one request id: one operation.
        rid = str(uuid.uuid4())

        def post_twice() -> tuple[str, str]:
            with ApiClient(api) as client:
                path = f"/v1/scale/out/{name}"
                first = client.request("POST", path, request_id=rid, repeatable=True)
                second = client.request("POST", path, request_id=rid, repeatable=True)
            assert first.status == second.status == 201, (first, second)
            return first.body["ID"], second.body["ID"]

        one, two = await asyncio.to_thread(post_twice)
        assert one == two
        await st.wait_status(one)
        assert len((await st.wait_pool(name, 2))["nodes"]) == 2

        # Through the command, with the first answer lost on the way back: the CLI sends
        # the change again with the same X-Request-ID and gets the same operation.
        async with DroppingProxy(api) as proxy:
            run = await run_cli("scale", "out", name, env=cli_env(proxy.url))
        assert run.returncode == 0, run.stderr
        posts = [s for s in proxy.seen if s.method == "POST"]
        assert proxy.dropped == 1 and len(posts) == 2, proxy.seen
        assert posts[0].request_id == posts[1].request_id and posts[0].request_id
        lost = json.loads(posts[0].body)["ID"]
        assert run.stdout.strip() == lost == json.loads(posts[1].body)["ID"]
        await st.wait_status(lost)
        view = await st.wait_pool(name, 3)
        assert len(view["nodes"]) == 3 and view["queue"] == []
        listing = (await st.http.get("/v1/scale/status", params=ops)).json()
        assert set(listing) - before == {one, lost}


async def test_a_drain_in_progress_says_so(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        await st.put_policy(name, MinCount=1, DrainDeadlineSeconds=120)
        await st.wait_pool(name, 1)
        resp = await st.http.post(f"/v1/scale/out/{name}")
        assert resp.status_code == 201, resp.text
        view = await st.wait_pool(name, 2)
        addresses = [n["address"] for n in view["nodes"]]
        with held_connections(addresses):
            op_id = (await st.http.post(f"/v1/scale/in/{name}")).json()["ID"]
            node = await draining_node(st, name)
            shown: dict[str, object] = {}
            for _ in range(300):
                shown = (await st.http.get(f"/v1/scale/progress/{op_id}")).json()
                if str(shown["details"]).startswith("draining node"):
                    break
                await asyncio.sleep(0.1)
            assert str(shown["details"]).startswith(f"draining node {node}: 1 connections left")
            # Its slots already moved: the numbers still say so.
            assert shown["slots_total"] == 8192 == shown["slots_done"]
            assert shown["status"] in ("started", "in-progress")
        await st.wait_status(op_id)
        final = (await st.http.get(f"/v1/scale/progress/{op_id}")).json()
        assert final["details"].startswith("8192 of 8192 slots")
