"""The memcached protocol where pymemcache does not fit a bulk copy: the crawler's
key dump and pipelined ``add`` with each item's own flags and expiry. The multi-get
that keeps flags is the client's (``scaleflow.client.wire``)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from scaleflow.client.wire import split_address


def _connect(address: str, timeout_s: float) -> socket.socket:
    sock = socket.create_connection(split_address(address), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def metadump(address: str, timeout_s: float = 30.0) -> list[tuple[bytes, int]]:
    """Every key on the node with its absolute expiry (-1: never)."""
    for _ in range(50):
        with _connect(address, timeout_s) as sock:
            sock.sendall(b"lru_crawler metadump hash\r\n")
            buf = bytearray()
            while not (buf.endswith(b"END\r\n") or buf.startswith(b"BUSY")):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
                if buf.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")):
                    raise OSError(f"metadump refused by {address}: {bytes(buf[:80])!r}")
        if buf.startswith(b"BUSY"):
            time.sleep(0.05)  # another crawl is running; it ends soon
            continue
        return list(_parse_metadump(bytes(buf)))
    raise OSError(f"the LRU crawler of {address} stayed busy")


_DUMP_LINE = re.compile(rb"^key=(\S+) exp=(-?\d+)", re.MULTILINE)


def _parse_metadump(raw: bytes) -> Iterable[tuple[bytes, int]]:
    # Keys are URL-encoded in the dump; most have nothing to decode.
    for key, exp in _DUMP_LINE.findall(raw):
        yield (unquote_to_bytes(key) if b"%" in key else key), int(exp)


class Adder:
    """Pipelined ``add ... noreply``: never overwrites a value a client wrote since."""

    def __init__(self, address: str, timeout_s: float = 30.0) -> None:
        self.sock = _connect(address, timeout_s)

    def add_many(self, items: Iterable[tuple[bytes, int, int, bytes]]) -> None:
        parts = []
        for key, flags, exptime, value in items:
            parts.append(b"add %s %d %d %d noreply\r\n" % (key, flags, exptime, len(value)))
            parts.append(value)
            parts.append(b"\r\n")
        self.sock.sendall(b"".join(parts))

    def flush(self) -> None:
        """Returns once the node has processed every command sent before it."""
        self.sock.sendall(b"version\r\n")
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise OSError("target closed the connection")
            buf += chunk
        if not buf.startswith(b"VERSION"):
            raise OSError(f"target answered {buf[:80]!r}")

    def close(self) -> None:
        self.sock.close()
