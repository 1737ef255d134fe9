"""The operator verbs of ``scaleflow``: each one calls the API (``cli_http``).

Exit status: 0 done; 1 the API refused (an error answer), or a waited-for operation
ended ``failed`` or ``cancelled``; 2 the API could not be reached; 130 interrupted.
Read verbs take ``--output json|table``; verbs that start an operation print its ID, or
with ``--wait`` follow it live until it ends (``cli_watch``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from scaleflow import cli_output as out
from scaleflow.cli_http import ApiClient, Reply, Unreachable
from scaleflow.cli_watch import OperationGone, watch

OK, REFUSED, UNREACHABLE, INTERRUPTED = 0, 1, 2, 130
BROKER = "/api/v2"


@dataclass
class Context:
    api: ApiClient
    console: Console  # stdout: tables and the live view
    err: Console  # stderr: errors
    fmt: out.OutputFormat


Verb = Callable[[Context, argparse.Namespace], int]


class Refused(Exception):
    """The API answered with an error; the verb exits 1."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.method} {reply.path}: {reply.status} {reply.error_message()}")


def checked(reply: Reply) -> Any:
    if not reply.ok:
        raise Refused(reply)
    return reply.body


def run_verb(verb: Verb, ctx: Context, args: argparse.Namespace) -> int:
    try:
        return verb(ctx, args)
    except Refused as exc:
        ctx.err.print(f"scaleflow: {exc}", markup=False, highlight=False, soft_wrap=True)
        return REFUSED
    except Unreachable as exc:
        ctx.err.print(
            f"scaleflow: cannot reach the API at {ctx.api.base_url}: {exc}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return UNREACHABLE
    except KeyboardInterrupt:
        return INTERRUPTED


def show(ctx: Context, data: Any, build: out.TableBuilder) -> int:
    out.emit(data, ctx.fmt, build, ctx.console)
    return OK


def print_json(data: Any) -> int:
    print(json.dumps(data, indent=2, default=str))
    return OK


def operation_id(body: Any) -> str:
    """The ``ID`` of an answer, in scaleflow's ``{"ID"}`` or the manager's envelope."""
    if isinstance(body, dict):
        content = body.get("content")
        found = content.get("ID") if isinstance(content, dict) else body.get("ID")
        if isinstance(found, str):
            return found
    raise ValueError(f"the answer names no operation ID: {body!r}")


def started(ctx: Context, args: argparse.Namespace, reply: Reply, label: str) -> int:
    """An operation was started: print its ID, or follow it with ``--wait``."""
    op_id = operation_id(checked(reply))
    if not getattr(args, "wait", False):
        print(op_id)
        return OK
    ctx.console.print(f"{label}: operation {op_id}", markup=False, highlight=False)
    try:
        status = watch(ctx.api, op_id, ctx.console, label=label, fresh=True)
    except OperationGone as exc:
        ctx.err.print(f"scaleflow: operation {op_id}: {exc}", markup=False, highlight=False)
        return REFUSED
    except KeyboardInterrupt:
        ctx.err.print(
            f"stopped watching; operation {op_id} goes on: scaleflow status {op_id} --wait",
            markup=False,
            highlight=False,
        )
        return INTERRUPTED
    return OK if status == "success" else REFUSED


def change(
    ctx: Context,
    args: argparse.Namespace,
    method: str,
    path: str,
    body: Any = None,
    *,
    repeatable: bool,
) -> Reply:
    """A mutating call; ``--request-id`` (or a fresh uuid4) goes with every attempt."""
    return ctx.api.request(
        method, path, json=body, request_id=getattr(args, "request_id", None), repeatable=repeatable
    )


# ---- operations -------------------------------------------------------------------


def scale(ctx: Context, args: argparse.Namespace) -> int:
    # The pool's entity dedupes by X-Request-ID: a retry returns the first operation.
    reply = change(ctx, args, "POST", f"/v1/scale/{args.direction}/{args.pool}", repeatable=True)
    return started(ctx, args, reply, f"scale-{args.direction} of pool {args.pool}")


def status(ctx: Context, args: argparse.Namespace) -> int:
    if args.id is None:
        params = {"pool": args.pool} if args.pool else None
        return show(ctx, checked(ctx.api.get("/v1/scale/status", params)), out.operations_table)
    if args.wait:
        try:
            final = watch(ctx.api, args.id, ctx.console)
        except OperationGone as exc:
            ctx.err.print(f"scaleflow: operation {args.id}: {exc}", markup=False)
            return REFUSED
        return OK if final == "success" else REFUSED
    doc = checked(ctx.api.get(f"/v1/scale/status/{args.id}"))
    return show(ctx, doc, lambda d: out.operation_table(d, args.id))


def progress(ctx: Context, args: argparse.Namespace) -> int:
    return show(ctx, checked(ctx.api.get(f"/v1/scale/progress/{args.id}")), out.progress_table)


def cancel(ctx: Context, args: argparse.Namespace) -> int:
    # Cancelling twice is harmless (a running operation is asked again; an ended one 409).
    return print_json(
        checked(change(ctx, args, "DELETE", f"/v1/scale/status/{args.id}", repeatable=True))
    )


# ---- pools --------------------------------------------------------------------------


def pool_list(ctx: Context, args: argparse.Namespace) -> int:
    return show(ctx, checked(ctx.api.get("/v1/pools")), out.pools_table)


def pool_show(ctx: Context, args: argparse.Namespace) -> int:
    return show(ctx, checked(ctx.api.get(f"/v1/pools/{args.name}")), out.pool_table)


def pool_slots(ctx: Context, args: argparse.Namespace) -> int:
    return show(ctx, checked(ctx.api.get(f"/v1/pools/{args.name}/slots")), out.slots_table)


def pool_cache_config(ctx: Context, args: argparse.Namespace) -> int:
    body = {"capacity_mb": args.capacity_mb, "eviction": args.eviction}
    path = f"/v1/pools/{args.name}/cache-config"
    reply = change(ctx, args, "PUT", path, body, repeatable=True)  # deduped by request id
    return started(ctx, args, reply, f"cache roll-out of pool {args.name}")


# ---- policies -----------------------------------------------------------------------


def policy_list(ctx: Context, args: argparse.Namespace) -> int:
    return show(ctx, checked(ctx.api.get("/v1/policies")), out.policies_table)


def policy_show(ctx: Context, args: argparse.Namespace) -> int:
    return show(ctx, checked(ctx.api.get(f"/v1/policy/{args.name}")), out.policy_table)


def _key_values(pairs: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"scaleflow: --provider-config wants KEY=VALUE, got {pair!r}")
        found[key] = value
    return found


POLICY_FLAGS = {
    "enabled": "Enabled",
    "min_count": "MinCount",
    "max_count": "MaxCount",
    "scale_out_count": "ScaleOutCount",
    "scale_in_count": "ScaleInCount",
    "provider": "Provider",
    "engine": "Engine",
    "selector": "Selector",
    "drain_deadline_s": "DrainDeadlineSeconds",
    "node_class": "NodeClass",
}


def policy_body(current: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The policy to PUT: the current one (if any), replaced by ``--file``, then the
    flags given on top."""
    body = dict(current)
    if args.file is not None:
        text = sys.stdin.read() if str(args.file) == "-" else Path(args.file).read_text()
        loaded = json.loads(text)
        if not isinstance(loaded, dict):
            raise SystemExit("scaleflow: the policy file must hold a JSON object")
        body = loaded
    for flag, field in POLICY_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            body[field] = value
    if args.provider_config:
        body["ProviderConfig"] = _key_values(args.provider_config)
    return body


def policy_set(ctx: Context, args: argparse.Namespace) -> int:
    current = ctx.api.get(f"/v1/policy/{args.name}")
    base = current.body if current.ok and isinstance(current.body, dict) else {}
    body = policy_body(base, args)
    # A PUT of the whole policy: sending it twice leaves the same policy.
    reply = change(ctx, args, "PUT", f"/v1/policy/{args.name}", body, repeatable=True)
    return show(ctx, checked(reply), out.policy_table)


def policy_delete(ctx: Context, args: argparse.Namespace) -> int:
    reply = change(ctx, args, "DELETE", f"/v1/policy/{args.name}", repeatable=False)
    return print_json(checked(reply))


# ---- genisys: computes and services ---------------------------------------------------


def compute_list(ctx: Context, args: argparse.Namespace) -> int:
    return show(ctx, checked(ctx.api.get("/compute")), out.computes_table)


def compute_show(ctx: Context, args: argparse.Namespace) -> int:
    return show(ctx, checked(ctx.api.get(f"/compute/{args.name}")), out.compute_table)


def compute_create(ctx: Context, args: argparse.Namespace) -> int:
    body = {"name": args.name, "connector": args.connector}
    # Not repeated after a lost answer: a second create would be a 409.
    reply = change(ctx, args, "POST", "/compute", body, repeatable=False)
    return show(ctx, checked(reply), out.compute_table)


def compute_set(ctx: Context, args: argparse.Namespace) -> int:
    body = {"name": args.name, "connector": args.connector}
    reply = change(ctx, args, "PUT", f"/compute/{args.name}", body, repeatable=True)
    return show(ctx, checked(reply), out.compute_table)


def service_show(ctx: Context, args: argparse.Namespace) -> int:
    return show(ctx, checked(ctx.api.get(f"/service/{args.name}")), out.service_table)


def service_step(ctx: Context, args: argparse.Namespace) -> int:
    path = f"/service/{args.name}/{'upscale' if args.step == 'up' else 'downscale'}"
    # genisys steps do not dedupe by request id: never repeated after a lost answer.
    reply = change(ctx, args, "POST", path, {"compute": args.compute}, repeatable=False)
    return started(ctx, args, reply, f"{args.step}scale of service {args.name}")


def service_scale(ctx: Context, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"number": args.number}
    if args.compute:
        body["compute"] = args.compute
    # Sets the desired count: the same count twice is the same state.
    reply = change(ctx, args, "POST", f"/service/{args.name}/scale", body, repeatable=True)
    return show(ctx, checked(reply), out.service_table)


# ---- the memcache manager's cache -----------------------------------------------------


def _content(reply: Reply) -> Any:
    body = checked(reply)
    return body.get("content") if isinstance(body, dict) else body


def cache_show(ctx: Context, args: argparse.Namespace) -> int:
    size = _content(ctx.api.get("/api/manager/poolsize")) or {}
    mode = _content(ctx.api.get("/api/manager/poolsize/config")) or {}
    nodes = _content(ctx.api.get("/api/manager/pool_node_list")) or {}
    data = {**size, **mode, **nodes}
    return show(ctx, data, out.cache_table)


def cache_config(ctx: Context, args: argparse.Namespace) -> int:
    body = {"capacity": args.capacity_mb, "replacement_policy": args.eviction}
    # The manager's roll-out dedupes by X-Request-ID, as the scale routes do.
    reply = change(ctx, args, "POST", "/api/manager/config", body, repeatable=True)
    return started(ctx, args, reply, "cache roll-out (memcache manager)")


# ---- the broker's clusters ------------------------------------------------------------


def cluster_list(ctx: Context, args: argparse.Namespace) -> int:
    names = checked(ctx.api.get(f"{BROKER}/clusters/names")).get("names", [])
    infos = [checked(ctx.api.get(f"{BROKER}/clusters/info/{name}")) for name in names]
    return show(ctx, infos, out.clusters_table)


def cluster_show(ctx: Context, args: argparse.Namespace) -> int:
    data = checked(ctx.api.get(f"{BROKER}/clusters/meta/{args.name}"))
    if not data.get("cluster"):
        ctx.err.print(f"scaleflow: no cluster named {args.name!r}", markup=False)
        return REFUSED
    return show(ctx, data, out.cluster_table)


# ---- the parser -----------------------------------------------------------------------


def _read_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given on a group and on its verb, neither overwrites the other with None.
    p.add_argument(
        "-o",
        "--output",
        choices=["json", "table"],
        default=argparse.SUPPRESS,
        help="json, or rich tables (default: table on a terminal, json into a pipe)",
    )
    return p


def _change_options(*, waits: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--request-id",
        help="X-Request-ID to send (default: a new uuid4); the API answers a repeat "
        "with its first answer",
    )
    if waits:
        p.add_argument(
            "--wait",
            action="store_true",
            help="follow the operation live until it ends; exit 1 if it failed or was cancelled",
        )
    return p


def add_verbs(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    api_options: argparse.ArgumentParser,
) -> None:
    """Register every operator verb on ``sub``; ``api_options`` is the parent parser
    with ``--api-url``."""
    read = [api_options, _read_options()]
    op = [api_options, _change_options(waits=True)]
    mut = [api_options, _change_options(waits=False)]

    def verb(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        fn: Verb,
        parents: list[argparse.ArgumentParser],
        help_text: str,
        **kw: Any,
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=parents, help=help_text, **kw)
        p.set_defaults(verb=fn)
        return p

    def group(
        name: str, help_text: str, default: Verb | None, aliases: list[str]
    ) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        # With a default verb, the group's name alone runs it (``scaleflow pools``).
        g = sub.add_parser(name, aliases=aliases, parents=read, help=help_text)
        g.set_defaults(verb=default, group=g)
        return g.add_subparsers(dest=f"{name}_verb", metavar="VERB", required=default is None)

    s = verb(sub, "scale", scale, op, "scale a pool out or in")
    s.add_argument("direction", choices=["out", "in"])
    s.add_argument("pool")
    s = verb(sub, "status", status, read, "scaling events: of every recent operation, or one")
    s.add_argument("id", nargs="?")
    s.add_argument("--pool", help="only this pool's operations (with no ID)")
    s.add_argument("--wait", action="store_true", help="follow the operation until it ends")
    s = verb(sub, "progress", progress, read, "slots and keys an operation moved so far")
    s.add_argument("id")
    s = verb(sub, "cancel", cancel, mut, "cancel a running operation")
    s.add_argument("id")

    pools = group(
        "pool", "pools: list (the default), show, slots, cache-config", pool_list, ["pools"]
    )
    verb(pools, "list", pool_list, read, "every pool")
    verb(pools, "show", pool_show, read, "one pool: configuration, nodes, queue").add_argument(
        "name"
    )
    verb(pools, "slots", pool_slots, read, "the pool's slot map").add_argument("name")
    s = verb(pools, "cache-config", pool_cache_config, op, "roll cache settings out to a pool")
    s.add_argument("name")
    s.add_argument("--capacity-mb", type=int, required=True)
    s.add_argument("--eviction", choices=["lru", "none"], default="lru")

    policies = group("policy", "chemtrail policies", policy_list, ["policies"])
    verb(policies, "list", policy_list, read, "every policy")
    verb(policies, "show", policy_show, read, "one class's policy").add_argument("name")
    s = verb(
        policies,
        "set",
        policy_set,
        [*mut, _read_options()],
        "create or change a class's policy: the current one, or --file, with the flags on top",
    )
    s.add_argument("name")
    s.add_argument("--file", help="the policy as JSON (chemtrail's field names); - for stdin")
    s.add_argument("--enabled", action=argparse.BooleanOptionalAction, default=None)
    s.add_argument("--min-count", type=int)
    s.add_argument("--max-count", type=int)
    s.add_argument("--scale-out-count", type=int)
    s.add_argument("--scale-in-count", type=int)
    s.add_argument("--provider", help="local, no-op or aws-autoscaling")
    s.add_argument("--provider-config", nargs="*", metavar="KEY=VALUE", default=[])
    s.add_argument("--engine", help="memcached, nomad or none")
    s.add_argument("--selector", help="least_busy, newest or oldest")
    s.add_argument("--drain-deadline-s", type=float)
    s.add_argument("--node-class")
    verb(policies, "delete", policy_delete, mut, "delete a class's policy").add_argument("name")

    computes = group("compute", "genisys computes", compute_list, ["computes"])
    verb(computes, "list", compute_list, read, "every compute")
    verb(computes, "show", compute_show, read, "one compute").add_argument("name")
    for name, fn, text in (
        ("create", compute_create, "define a compute"),
        ("set", compute_set, "change a compute's connector"),
    ):
        s = verb(computes, name, fn, [*mut, _read_options()], text)
        s.add_argument("name")
        s.add_argument("connector", help="the connector's base URL")

    services = group("service", "genisys services", None, ["services"])
    verb(services, "show", service_show, read, "one service").add_argument("name")
    for step in ("up", "down"):
        s = verb(services, step, service_step, op, f"{step}scale a service by one resource")
        s.set_defaults(step=step)
        s.add_argument("name")
        s.add_argument("--compute", required=True)
    s = verb(services, "scale", service_scale, [*mut, _read_options()], "set the desired count")
    s.add_argument("name")
    s.add_argument("number", type=int)
    s.add_argument("--compute")

    caches = group("cache", "the memcache manager's pool: show, config", cache_show, [])
    verb(caches, "show", cache_show, read, "size, nodes and resize mode")
    s = verb(caches, "config", cache_config, op, "roll cache settings out (memcache manager)")
    s.add_argument("--capacity-mb", type=int, required=True)
    s.add_argument("--eviction", choices=["lru", "none"], default="lru")

    clusters = group("cluster", "the memory broker's clusters", cluster_list, ["clusters"])
    verb(clusters, "list", cluster_list, read, "every cluster, with node counts")
    verb(clusters, "show", cluster_show, read, "one cluster's nodes and slots").add_argument("name")
