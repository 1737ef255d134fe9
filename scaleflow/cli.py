"""The ``scaleflow`` command: the embedded stack, its parts, and operator verbs.

The verbs (``scale``, ``status``, ``pool``, ``policy``, ``compute``, ``service``,
``cache``, ``cluster``, ...) call the API at ``--api-url``, else ``SCALEFLOW_API_URL``,
else ``http://SCALEFLOW_API_HOST:SCALEFLOW_API_PORT``, with ``SCALEFLOW_API_TOKEN`` as
a bearer token; they live in ``cli_verbs``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from scaleflow.api.auth import auth_headers, check_bind
from scaleflow.core.settings import Settings
from scaleflow.logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    from scaleflow.cli_verbs import add_verbs

    api_url_help = "the API's base URL (default: SCALEFLOW_API_URL, else http://API_HOST:API_PORT)"
    parser = argparse.ArgumentParser(
        prog="scaleflow",
        description="scaleflow: the embedded stack (dev, worker, api, connector) and "
        "operator verbs that call the API with SCALEFLOW_API_TOKEN as a bearer token.",
    )
    parser.add_argument("--api-url", default=None, help=api_url_help)
    # The same flag after the verb (``scaleflow scale out web --api-url ...``); SUPPRESS
    # keeps the verb's parser from overwriting the one given before it.
    api_options = argparse.ArgumentParser(add_help=False)
    api_options.add_argument("--api-url", default=argparse.SUPPRESS, help=api_url_help)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="run the dev server, a worker, the API and the default pool")
    sub.add_parser("worker", help="run a worker against SCALEFLOW_TEMPORAL_ADDRESS")
    sub.add_parser("api", help="serve the HTTP API")
    add_verbs(sub, api_options)
    connector = sub.add_parser("connector", help="run the reference genisys connector")
    connector.add_argument("--provider", choices=["local", "aws-ec2"], default="local")
    connector.add_argument("--host", default="127.0.0.1")
    connector.add_argument("--port", type=int, default=7051)
    connector.add_argument("--services", type=Path, help="services file (.toml or .json)")
    connector.add_argument("--state-dir", type=Path, help="default: SCALEFLOW_STATE_DIR")
    return parser


def run_verb(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from scaleflow import cli_verbs
    from scaleflow.cli_http import ApiClient
    from scaleflow.cli_output import default_format

    url = args.api_url or settings.client_api_url
    # The token (SCALEFLOW_API_TOKEN) as a bearer header on every call; never printed.
    with ApiClient(url, auth_headers(settings)) as api:
        ctx = cli_verbs.Context(
            api=api,
            console=Console(highlight=False),
            err=Console(stderr=True, highlight=False),
            fmt=getattr(args, "output", None) or default_format(),
        )
        return cli_verbs.run_verb(args.verb, ctx, args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    setup_logging(settings.log_level)
    if getattr(args, "verb", None) is not None:
        return run_verb(args, settings)
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
        import uvicorn

        from scaleflow.api.app import create_app

        check_bind(settings)  # before anything listens
        uvicorn.run(
            create_app(settings), host=settings.api_host, port=settings.api_port, log_config=None
        )
        return 0
    if args.command == "connector":
        import uvicorn

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
    build_parser().error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
