"""Running the ``scaleflow`` command as a subprocess against a test stack."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.stack import ROOT

CLI = [sys.executable, "-m", "scaleflow.cli"]


def cli_env(api_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a CLI run: none of the caller's SCALEFLOW_* settings (a token
    or URL of the developer's own would change what is tested)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEFLOW_")}
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",  # lines reach a reading test as they are printed
        COLUMNS="200",  # rich's width into a pipe: no wrapped table cells
        SCALEFLOW_LOG_LEVEL="WARNING",
    )
    if api_url is not None:
        env["SCALEFLOW_API_URL"] = api_url
    env.update(extra)
    return env


async def run_cli(
    *args: str, env: dict[str, str], timeout_s: float = 240
) -> subprocess.CompletedProcess[str]:
    """``scaleflow ARGS``, in a thread: the test's event loop keeps serving the API."""
    return await asyncio.to_thread(
        subprocess.run,
        [*CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def gated_memcached(tmp: Path) -> tuple[str, Path, Path]:
    """A memcached that, once ``armed`` exists, starts only after ``gate`` exists: an
    operation's provisioning is held for as long as the test needs, with no timing."""
    armed, gate = tmp / "armed", tmp / "gate"
    script = tmp / "gated-memcached"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{armed}" ]; then\n'
        f'  while [ ! -e "{gate}" ]; do sleep 0.05; done\n'
        "fi\n"
        'exec memcached "$@"\n'
    )
    script.chmod(0o755)
    return str(script), armed, gate


@dataclass
class Seen:
    method: str
    path: str
    request_id: str | None
    status: int
    body: bytes


@dataclass
class DroppingProxy:
    """An HTTP/1.1 proxy in front of the API that forwards the first POST, reads the
    API's answer, and then drops the connection without passing the answer on: the
    CLI sees a lost answer to a change the API did."""

    upstream: str
    seen: list[Seen] = field(default_factory=list)
    dropped: int = 0
    port: int = 0

    async def __aenter__(self) -> DroppingProxy:
        import httpx

        self.http = httpx.AsyncClient(base_url=self.upstream, timeout=60)
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()
        await self.http.aclose()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line, *lines = head.decode("latin-1").split("\r\n")
                method, path, _ = line.split(" ", 2)
                headers = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (h.partition(":") for h in lines if h)
                )
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                forward = {
                    k: v
                    for k, v in headers.items()
                    if k in ("authorization", "x-request-id", "content-type")
                }
                resp = await self.http.request(method, path, headers=forward, content=body)
                self.seen.append(
                    Seen(method, path, headers.get("x-request-id"), resp.status_code, resp.content)
                )
                if method == "POST" and self.dropped == 0:
                    self.dropped += 1
                    return  # the API did it; the answer is lost with the connection
                out = (
                    f"HTTP/1.1 {resp.status_code} {resp.reason_phrase}\r\n"
                    f"content-type: {resp.headers.get('content-type', 'application/json')}\r\n"
                    f"content-length: {len(resp.content)}\r\n\r\n"
                ).encode() + resp.content
                writer.write(out)
                await writer.drain()
        finally:
            writer.close()
