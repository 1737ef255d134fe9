"""The memcached text protocol where pymemcache does not fit: a multi-get whose request
is sent before its reply is read, so that several nodes work on one batch at once, and
whose reply is parsed in one pass with each value's flags. The client's ``get_many``
and the migration's copy both use it."""

from __future__ import annotations

import socket

# (key, flags, value) for each key the node holds.
Item = tuple[bytes, int, bytes]


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class MultiGet:
    """One connection to a node for ``get k1 k2 ...``: ``send`` then ``receive``."""

    def __init__(self, address: str, timeout_s: float) -> None:
        self.sock = socket.create_connection(split_address(address), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, keys: list[bytes]) -> None:
        self.sock.sendall(b"get " + b" ".join(keys) + b"\r\n")

    def receive(self) -> list[Item]:
        buf = bytearray()
        out: list[Item] = []
        pos = 0
        while True:
            end = buf.find(b"\r\n", pos)
            if end == -1:
                buf += self._recv()
                continue
            header = bytes(buf[pos:end])
            if header == b"END":
                return out
            parts = header.split(b" ")
            if parts[0] != b"VALUE":
                raise OSError(f"memcached answered {header[:80]!r}")
            size = int(parts[3])
            start = end + 2
            while len(buf) < start + size + 2:
                buf += self._recv()
            out.append((parts[1], int(parts[2]), bytes(buf[start : start + size])))
            pos = start + size + 2

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise OSError("memcached closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()
