"""A tiny raw-socket RESP client for exact-bytes checks.

`RawConn.send()` writes whatever bytes it is given (frames, inline commands,
garbage); `read_frame()` returns the exact bytes of the next reply frame
(RESP2 or RESP3, nested aggregates included) and `parse()` turns such bytes
into plain Python values (errors become `RespError`).
"""

from __future__ import annotations

import socket


class RespError(Exception):
    """An error reply (`-ERR ...` or `!` blob error); `.message` is its text."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __eq__(self, other):
        return isinstance(other, RespError) and other.message == self.message

    def __hash__(self):
        return hash(self.message)


def encode(*args) -> bytes:
    """A RESP2 array of bulk strings (how clients send commands)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class RawConn:
    """One TCP connection; nothing is parsed unless asked."""

    def __init__(self, host: str, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def _line_end(self, pos: int) -> int:
        while True:
            i = self.buf.find(b"\r\n", pos)
            if i >= 0:
                return i
            if not self._fill():
                raise ConnectionError("connection closed in the middle of a reply")

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("connection closed in the middle of a reply")

    def _frame_end(self, pos: int) -> int:
        """The offset just past the frame starting at `pos` (reading as needed)."""
        self._need(pos + 1)
        kind = self.buf[pos:pos + 1]
        eol = self._line_end(pos)
        head = self.buf[pos + 1:eol]
        nxt = eol + 2
        if kind in b"+-:,#_(":
            return nxt
        if kind in b"$!=":
            n = int(head)
            if n < 0:
                return nxt
            self._need(nxt + n + 2)
            return nxt + n + 2
        if kind in b"*~>%|":
            n = int(head)
            if n < 0:
                return nxt
            count = n * 2 if kind in b"%|" else n
            for _ in range(count):
                nxt = self._frame_end(nxt)
            if kind == b"|":  # an attribute precedes the actual reply
                nxt = self._frame_end(nxt)
            return nxt
        raise ValueError(f"not a RESP frame: {self.buf[pos:pos + 40]!r}")

    def read_frame(self) -> bytes:
        """The exact bytes of the next reply."""
        end = self._frame_end(0)
        frame, self.buf = self.buf[:end], self.buf[end:]
        return frame

    def read_frames(self, n: int) -> list[bytes]:
        return [self.read_frame() for _ in range(n)]

    def read_all_until_close(self) -> bytes:
        """Everything until the server closes the connection."""
        while self._fill():
            pass
        data, self.buf = self.buf, b""
        return data

    def is_closed(self, timeout: float = 2.0) -> bool:
        """True when the server closed the connection (EOF within `timeout`)."""
        self.sock.settimeout(timeout)
        try:
            return not self._fill()
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def command(self, *args) -> bytes:
        """Sends one command, returns its reply's bytes."""
        self.send(encode(*args))
        return self.read_frame()

    def call(self, *args):
        """Sends one command, returns its parsed reply."""
        return parse(self.command(*args))


def parse(data: bytes):
    """Parses one complete frame into Python values (maps as dicts of tuples)."""
    value, end = _parse(data, 0)
    if end != len(data):
        raise ValueError(f"trailing bytes after frame: {data[end:]!r}")
    return value


def _parse(data: bytes, pos: int):
    kind = data[pos:pos + 1]
    eol = data.index(b"\r\n", pos)
    head = data[pos + 1:eol]
    nxt = eol + 2
    if kind == b"+":
        return head, nxt
    if kind == b"-":
        return RespError(head.decode(errors="replace")), nxt
    if kind in (b":", b"("):
        return int(head), nxt
    if kind == b",":
        return float(head), nxt
    if kind == b"#":
        return head == b"t", nxt
    if kind == b"_":
        return None, nxt
    if kind in (b"$", b"!", b"="):
        n = int(head)
        if n < 0:
            return None, nxt
        body = data[nxt:nxt + n]
        if kind == b"!":
            return RespError(body.decode(errors="replace")), nxt + n + 2
        return body, nxt + n + 2
    if kind in (b"*", b"~", b">"):
        n = int(head)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            v, nxt = _parse(data, nxt)
            items.append(v)
        return items, nxt
    if kind in (b"%", b"|"):
        n = int(head)
        out = {}
        for _ in range(n):
            k, nxt = _parse(data, nxt)
            v, nxt = _parse(data, nxt)
            out[k if not isinstance(k, list) else tuple(k)] = v
        if kind == b"|":
            return _parse(data, nxt)
        return out, nxt
    raise ValueError(f"not a RESP frame: {data[pos:pos + 40]!r}")
