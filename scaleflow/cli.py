"""The ``scaleflow`` command: the embedded stack, its parts, and operator verbs."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import httpx
import uvicorn

from scaleflow.api.auth import auth_headers, check_bind
from scaleflow.core.settings import Settings
from scaleflow.logs import setup_logging


def _api_url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}"


def _call(settings: Settings, method: str, path: str) -> int:
    try:
        # The token (SCALEFLOW_API_TOKEN) as a bearer header; never printed.
        headers = auth_headers(settings)
        resp = httpx.request(method, _api_url(settings) + path, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        print(f"scaleflow: cannot reach the API at {_api_url(settings)}: {exc}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(resp.json(), indent=2))
    except ValueError:
        print(resp.text)
    return 0 if resp.is_success else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scaleflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="run the dev server, a worker, the API and the default pool")
    sub.add_parser("worker", help="run a worker against SCALEFLOW_TEMPORAL_ADDRESS")
    sub.add_parser("api", help="serve the HTTP API")
    sub.add_parser("pools", help="list pools (through the API)")
    scale = sub.add_parser("scale", help="scale a pool out or in (through the API)")
    scale.add_argument("direction", choices=["out", "in"])
    scale.add_argument("pool")
    status = sub.add_parser("status", help="show scaling events (through the API)")
    status.add_argument("id", nargs="?")
    cancel = sub.add_parser("cancel", help="cancel a running operation (through the API)")
    cancel.add_argument("id")
    connector = sub.add_parser("connector", help="run the reference genisys connector")
    connector.add_argument("--provider", choices=["local", "aws-ec2"], default="local")
    connector.add_argument("--host", default="127.0.0.1")
    connector.add_argument("--port", type=int, default=7051)
    connector.add_argument("--services", type=Path, help="services file (.toml or .json)")
    connector.add_argument("--state-dir", type=Path, help="default: SCALEFLOW_STATE_DIR")
    args = parser.parse_args(argv)

    settings = Settings()
    setup_logging(settings.log_level)
    if args.command == "dev":
        from scaleflow.stack import run_dev

        try:
            asyncio.run(run_dev(settings))
        except KeyboardInterrupt:
            return 130  # Ctrl-C before the stack took over the signal: nothing to stop
        return 0
    if args.command == "worker":
        from scaleflow.worker import run

        asyncio.run(run(settings))
        return 0
    if args.command == "api":
        from scaleflow.api.app import create_app

        check_bind(settings)  # before anything listens
        uvicorn.run(
            create_app(settings), host=settings.api_host, port=settings.api_port, log_config=None
        )
        return 0
    if args.command == "connector":
        from scaleflow.connector.app import build_connector_app

        try:
            app = build_connector_app(
                args.provider,
                args.services,
                args.state_dir or settings.state_dir,
                memcached_bin=settings.memcached_bin,
                aws_endpoint_url=settings.aws_endpoint_url,
                aws_region=settings.aws_region,
            )
        except (OSError, ValueError) as exc:
            print(f"scaleflow connector: {exc}", file=sys.stderr)
            return 2
        uvicorn.run(app, host=args.host, port=args.port, log_config=None)
        return 0
    if args.command == "pools":
        return _call(settings, "GET", "/v1/pools")
    if args.command == "scale":
        return _call(settings, "POST", f"/v1/scale/{args.direction}/{args.pool}")
    if args.command == "status":
        return _call(settings, "GET", "/v1/scale/status" + (f"/{args.id}" if args.id else ""))
    if args.command == "cancel":
        return _call(settings, "DELETE", f"/v1/scale/status/{args.id}")
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
