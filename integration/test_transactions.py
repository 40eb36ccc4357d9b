"""MULTI/EXEC/DISCARD/WATCH, compared with the reference."""

import redis

from compare import e


def test_multi_exec(pair):
    pair.run(
        ("MULTI",),
        ("SET", "{tx}a", "1"),
        ("INCR", "{tx}a"),
        ("LPUSH", "{tx}l", "x", "y"),
        ("GET", "{tx}a"),
        ("EXEC",),
        ("MGET", "{tx}a", "{tx}l"),
    )


def test_multi_discard(pair):
    pair.run(
        ("SET", "d", "before"),
        ("MULTI",),
        ("SET", "d", "after"),
        ("DISCARD",),
        ("GET", "d"),
        e("EXEC",),
        e("DISCARD",),
    )


def test_nested_multi_and_runtime_error(pair):
    pair.run(
        ("SET", "{rt}s", "text"),
        ("MULTI",),
        e("MULTI",),
        ("INCR", "{rt}s"),
        ("SET", "{rt}n", "5"),
        ("INCR", "{rt}n"),
        ("EXEC",),
        ("GET", "{rt}n"),
    )


def test_queue_time_error_aborts(pair):
    got = pair.run(
        ("MULTI",),
        ("SET", "{qa}a", "1"),
        e("SET", "{qa}b"),
        e("NOSUCHCOMMAND", "x"),
        e("EXEC",),
        ("EXISTS", "{qa}a"),
    )
    assert got[4][1] == "ExecAbortError"  # redis-py's class for -EXECABORT
    assert "Transaction discarded because of previous errors." in got[4][2]
    assert got[5] == ("int", 0)


def test_redis_py_transaction_pipeline(pair):
    def scenario(side):
        c = side.connect()
        pipe = c.pipeline(transaction=True)
        pipe.execute_command("SET", "{p}a", "1")
        pipe.execute_command("INCRBY", "{p}a", "10")
        pipe.execute_command("RPUSH", "{p}l", "a", "b")
        pipe.execute_command("LRANGE", "{p}l", "0", "-1")
        return pipe.execute()

    got = pair.scenario(scenario)
    assert got[1][1] == ("int", 11)


def test_watch_concurrent_modification(pair):
    def scenario(side):
        c1, c2 = side.connect(), side.connect()
        out = [c1.execute_command("SET", "w", "0")]
        if pair.pipelined:
            pipe = c1.pipeline(transaction=True)
            pipe.watch("w")
            out.append(c2.execute_command("SET", "w", "changed"))
            pipe.multi()
            pipe.execute_command("SET", "w", "mine")
            try:
                out.append(pipe.execute())
            except redis.WatchError as ex:
                out.append(ex)
        else:
            out.append(c1.execute_command("WATCH", "w"))
            out.append(c2.execute_command("SET", "w", "changed"))
            out.append(c1.execute_command("MULTI"))
            out.append(c1.execute_command("SET", "w", "mine"))
            out.append(c1.execute_command("EXEC"))
        out.append(c1.execute_command("GET", "w"))
        return out

    got = pair.scenario(scenario)
    assert got[1][-1] == ("bytes", b"changed")
    if not pair.pipelined:
        assert got[1][-2] is None  # nil EXEC


def test_watch_untouched_and_unwatch(pair):
    def scenario(side):
        c1, c2 = side.connect(), side.connect()
        return [
            c1.execute_command("SET", "{wu}a", "0"),
            c1.execute_command("WATCH", "{wu}a", "{wu}b"),
            c2.execute_command("SET", "other", "x"),
            c1.execute_command("MULTI"),
            c1.execute_command("INCR", "{wu}a"),
            c1.execute_command("EXEC"),
            c1.execute_command("WATCH", "{wu}a"),
            c2.execute_command("SET", "{wu}a", "100"),
            c1.execute_command("UNWATCH"),
            c1.execute_command("MULTI"),
            c1.execute_command("INCR", "{wu}a"),
            c1.execute_command("EXEC"),
        ]

    got = pair.scenario(scenario)
    assert got[1][5] == ("list", [("int", 1)])
    assert got[1][11] == ("list", [("int", 101)])
