"""SELECT n: each shard's database n, compared with a plain Redis (RESP2/3,
plain and pipelined); redis-py's `db=` (SELECT sent on connect, as ioredis
and node-redis do); RESET back to database 0; pub/sub in any database."""

import redis

from compare import e


def test_select_compares(pair):
    pair.run(
        ("SET", "k", "zero"),
        ("SELECT", "2"),
        ("GET", "k"),
        ("SET", "k", "two"),
        ("MSET", "a", "1", "b", "2", "c", "3"),
        ("MGET", "a", "b", "c", "k"),
        ("DBSIZE",),
        ("SELECT", "0"),
        ("GET", "k"),
        ("DBSIZE",),
        ("SELECT", "2"),
        ("GET", "k"),
        ("FLUSHDB",),
        ("DBSIZE",),
        e("SELECT", "16"),
        e("SELECT", "-1"),
        e("SELECT", "x"),
        ("GET", "k"),
        ("SELECT", "0"),
        ("GET", "k"),
    )


def test_select_inside_transactions_and_scripts(pair):
    pair.run(
        ("SELECT", "3"),
        ("MULTI",),
        ("SET", "{t}x", "1"),
        ("INCR", "{t}x"),
        ("EXEC",),
        ("EVAL", "return redis.call('GET', KEYS[1])", "1", "{t}x"),
        ("LPUSH", "q", "a"),
        ("BLPOP", "q", "1"),
        ("SELECT", "0"),
        ("GET", "{t}x"),
    )


def test_client_db_option_selects_on_connect(deployment, ref, proxy):
    for port in (deployment.port, ref.connection_pool.connection_kwargs["port"]):
        c = redis.Redis(host="127.0.0.1" if port != deployment.port else deployment.host,
                        port=port, db=5, decode_responses=True, protocol=3)
        try:
            c.set("dbk", "five")
            assert c.get("dbk") == "five"
            assert "db=5" in c.execute_command("CLIENT", "INFO")
        finally:
            c.close()
    assert proxy.get("dbk") is None
    assert ref.get("dbk") is None


def test_reset_returns_to_database_0(proxy, connect_proxy):
    c = connect_proxy(db=4)
    c.set("r", "four")
    proxy.set("r", "zero")
    conn = c.connection_pool.get_connection()
    try:
        conn.send_command("RESET")
        assert conn.read_response() in ("RESET", b"RESET")
        conn.send_command("GET", "r")
        assert conn.read_response() == "zero"
    finally:
        conn.disconnect()
        c.connection_pool.release(conn)


def test_pubsub_does_not_depend_on_the_database(connect_proxy):
    sub = connect_proxy(db=0).pubsub()
    sub.subscribe("dbnews")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    pub = connect_proxy(db=9)
    assert pub.publish("dbnews", "hi") == 1
    m = sub.get_message(timeout=5)
    assert m["type"] == "message" and m["data"] == "hi"
    sub.close()
