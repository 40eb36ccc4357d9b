"""Run the same commands against the proxy and the reference Redis and assert
identical replies.

Clients are redis-py clients with every response callback removed, so replies
are compared as the parser saw them (bytes, ints, floats, bools, None, lists,
dicts) rather than after redis-py's per-command post-processing; values are
then tagged with their Python type, so RESP3 `#t` (True) never equals `:1`.
Errors are compared by exception type and message.

A command is a tuple of arguments, or a `Cmd` made with:

* `u(...)`   reply order legitimately differs (KEYS, SMEMBERS of a hashtable
             set, ...): lists are compared sorted;
* `e(...)`   an error reply is expected (on the reference too).

An unmarked command that errors *on the reference* fails the test: it means
the test itself is wrong, and two identical errors would prove nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import redis


@dataclass(frozen=True)
class Cmd:
    args: tuple
    unordered: bool = False
    error: bool = False


def u(*args) -> Cmd:
    """A command whose (top-level) reply order is not defined."""
    return Cmd(tuple(args), unordered=True)


def e(*args) -> Cmd:
    """A command expected to fail with an error reply."""
    return Cmd(tuple(args), error=True)


def as_cmd(c) -> Cmd:
    return c if isinstance(c, Cmd) else Cmd(tuple(c))


def normalize(v: Any, unordered: bool = False) -> Any:
    """A comparable, type-tagged form of a parsed reply."""
    if isinstance(v, BaseException):
        return ("err", type(v).__name__, str(v))
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, int):
        return ("int", v)
    if isinstance(v, float):
        return ("float", repr(v))
    if isinstance(v, (bytes, bytearray)):
        return ("bytes", bytes(v))
    if isinstance(v, str):
        return ("str", v)
    if v is None:
        return None
    if isinstance(v, dict):
        return ("map", sorted(((normalize(k), normalize(x)) for k, x in v.items()), key=repr))
    if isinstance(v, (set, frozenset)):
        return ("set", sorted((normalize(x) for x in v), key=repr))
    if isinstance(v, (list, tuple)):
        items = [normalize(x) for x in v]
        if unordered:
            items.sort(key=repr)
        return ("list", items)
    return ("other", type(v).__name__, repr(v))


def is_error(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) == 3 and v[0] == "err"


def raw_client(host: str, port: int, protocol: int) -> redis.Redis:
    """A redis-py client on one connection, replies left as parsed."""
    c = redis.Redis(
        host=host,
        port=port,
        protocol=protocol,
        single_connection_client=True,
        socket_timeout=15,
        socket_connect_timeout=5,
    )
    c.response_callbacks.clear()
    return c


class Side:
    """One of the two servers compared: 'proxy' or 'reference'."""

    def __init__(self, name: str, host: str, port: int, protocol: int):
        self.name, self.host, self.port, self.protocol = name, host, port, protocol
        self.clients: list[redis.Redis] = []

    def connect(self, protocol: int | None = None) -> redis.Redis:
        c = raw_client(self.host, self.port, protocol or self.protocol)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            try:
                c.close()
            except Exception:  # closing a broken connection is not a test failure
                pass
        self.clients.clear()


def execute(client: redis.Redis, cmds: list[Cmd], pipelined: bool) -> list[Any]:
    """Runs `cmds` one by one or in one non-transactional pipeline."""
    if pipelined:
        pipe = client.pipeline(transaction=False)
        for c in cmds:
            pipe.execute_command(*c.args)
        return pipe.execute(raise_on_error=False)
    out = []
    for c in cmds:
        try:
            out.append(client.execute_command(*c.args))
        except redis.ResponseError as ex:
            out.append(ex)
    return out


class Comparer:
    """Compares proxy and reference for one (protocol, pipelined) mode."""

    def __init__(self, proxy: Side, reference: Side, protocol: int, pipelined: bool):
        self.proxy, self.reference = proxy, reference
        self.protocol, self.pipelined = protocol, pipelined
        self._clients: dict[str, redis.Redis] = {}

    def __repr__(self):
        return f"Comparer(resp{self.protocol}, pipelined={self.pipelined})"

    def client(self, side: Side) -> redis.Redis:
        if side.name not in self._clients:
            self._clients[side.name] = side.connect()
        return self._clients[side.name]

    def close(self) -> None:
        self.proxy.close()
        self.reference.close()

    def run(self, *cmds) -> list[Any]:
        """Runs `cmds` on both sides; asserts equal replies; returns the
        normalized reference replies (for extra assertions)."""
        cmds = [as_cmd(c) for c in cmds]
        got = execute(self.client(self.proxy), cmds, self.pipelined)
        want = execute(self.client(self.reference), cmds, self.pipelined)
        got_n = [normalize(g, c.unordered) for g, c in zip(got, cmds)]
        want_n = [normalize(w, c.unordered) for w, c in zip(want, cmds)]
        self._check_expectations(cmds, want_n)
        diffs = [
            f"  #{i} {fmt(c.args)}\n      proxy:     {g!r}\n      reference: {w!r}"
            for i, (c, g, w) in enumerate(zip(cmds, got_n, want_n))
            if g != w
        ]
        assert not diffs, f"{self}: replies differ:\n" + "\n".join(diffs)
        return want_n

    def _check_expectations(self, cmds: list[Cmd], want_n: list[Any]) -> None:
        for c, w in zip(cmds, want_n):
            if c.error and not is_error(w):
                raise AssertionError(f"test bug: {fmt(c.args)} expected an error, reference said {w!r}")
            if not c.error and is_error(w):
                raise AssertionError(f"test bug: {fmt(c.args)} failed on the reference: {w!r}")

    def exec(self, client: redis.Redis, *cmds) -> list[Any]:
        """Runs `cmds` on `client` in this mode (plain or pipelined); error
        replies are returned, not raised. For use inside scenarios."""
        return execute(client, [as_cmd(c) for c in cmds], self.pipelined)

    def scenario(self, fn: Callable[[Side], Any], unordered: bool = False) -> Any:
        """Runs `fn(side)` for both sides (it may open several clients with
        `side.connect()`), asserts the normalized results are equal and
        returns the reference's (normalized)."""
        got = normalize(fn(self.proxy), unordered)
        want = normalize(fn(self.reference), unordered)
        assert got == want, f"{self}: scenario differs\n  proxy:     {got!r}\n  reference: {want!r}"
        return want


def fmt(args: Iterable) -> str:
    parts = []
    for a in args:
        s = a.decode(errors="backslashreplace") if isinstance(a, bytes) else str(a)
        parts.append(s if len(s) < 40 else s[:37] + "...")
    return " ".join(parts)


def call(client: redis.Redis, *args) -> Any:
    """One command; an error reply is returned, not raised."""
    try:
        return client.execute_command(*args)
    except redis.ResponseError as ex:
        return ex
