"""Tests of the reference genisys connector; ``serve`` runs an app on a real port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI

from tests.servers import ThreadedServer


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free loopback port; yields its base URL."""
    server = ThreadedServer(app, "connector")
    try:
        yield server.start()
    finally:
        server.stop()
