"""EVAL/EVALSHA/SCRIPT LOAD and FCALL, with every key on one shard.

The fixture loads the library through the target (the proxy loads it on
every shard) and on the reference; FUNCTION itself is tested in
test_functions.py.
"""

import pytest

from compare import e, raw_client

LIB = """#!lua name=itlib
redis.register_function('it_incr', function(keys, args)
  return redis.call('INCRBY', keys[1], args[1])
end)
redis.register_function{function_name='it_get', callback=function(keys, args)
  return redis.call('GET', keys[1])
end, flags={'no-writes'}}
redis.register_function('it_info', function(keys, args)
  return {#keys, #args, 'x', 1.5, {1, 2}}
end)
"""

SCRIPT = "redis.call('SET', KEYS[1], ARGV[1]); return {redis.call('GET', KEYS[1]), #KEYS, tonumber(ARGV[2]) + 1}"
SHA = "a5b1b0d6c2e76d12f1e4e2b9cb6a0f2d8f0c3e11"  # not loaded anywhere


@pytest.fixture
def functions_loaded(deployment):
    targets = [(deployment.host, deployment.port), ("127.0.0.1", deployment.reference.port)]
    for host, port in targets:
        c = raw_client(host, port, 2)
        try:
            c.execute_command("FUNCTION", "LOAD", "REPLACE", LIB)
        finally:
            c.close()


def test_eval(pair):
    pair.run(
        ("EVAL", SCRIPT, "1", "{sc}a", "hello", "41"),
        ("EVAL", "return {KEYS[1], KEYS[2], ARGV[1]}", "2", "{sc}a", "{sc}b", "arg"),
        ("EVAL", "return redis.call('MGET', KEYS[1], KEYS[2])", "2", "{sc}a", "{sc}b"),
        ("EVAL", "return 3.99", "0"),
        ("EVAL", "return {1, 'two', {3, false}, true}", "0"),
        ("EVAL", "return redis.status_reply('FINE')", "0"),
        e("EVAL", "return redis.error_reply('MY failure')", "0"),
        e("EVAL", "return redis.call('INCR', KEYS[1])", "1", "{sc}a"),
        e("EVAL", "this is not lua", "0"),
        ("EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "{sc}a"),
        e("EVAL_RO", "return redis.call('SET', KEYS[1], 'x')", "1", "{sc}a"),
    )


def test_resp3_script_types(pair):
    pair.run(
        ("EVAL", "redis.setresp(3); return redis.call('HGETALL', KEYS[1])", "1", "h"),
        ("HSET", "h", "a", "1"),
        ("EVAL", "redis.setresp(3); return redis.call('HGETALL', KEYS[1])", "1", "h"),
        ("EVAL", "return {double=3.5}", "0"),
        ("EVAL", "return {map={a=1}}", "0"),
    )


def test_script_load_evalsha(pair):
    got = pair.run(
        ("SCRIPT", "LOAD", "return {KEYS[1], ARGV[1]}"),
        ("SCRIPT", "EXISTS", "e6a5f6ba2d4e6a36f13a05d0fd4e9ac9263c52a7", SHA),
        e("EVALSHA", SHA, "0"),
    )
    sha = got[0][1].decode()
    pair.run(
        ("EVALSHA", sha, "1", "k1", "v1"),
        ("EVALSHA", sha, "1", "eu/k2", "v2"),
        ("EVALSHA", sha.upper(), "1", "{eu:3}k", "v3"),
        ("EVALSHA_RO", sha, "1", "k4", "v4"),
    )


def test_fcall(pair, functions_loaded):
    pair.run(
        ("FCALL", "it_incr", "1", "{fc}n", "5"),
        ("FCALL", "it_incr", "1", "{fc}n", "-2"),
        ("FCALL", "it_get", "1", "{fc}n"),
        ("FCALL_RO", "it_get", "1", "{fc}n"),
        ("FCALL", "it_info", "2", "{fc}a", "{fc}b", "x", "y", "z"),
        ("FCALL", "it_info", "0"),
        e("FCALL_RO", "it_incr", "1", "{fc}n", "1"),
        e("FCALL", "no_such_function", "0"),
    )
