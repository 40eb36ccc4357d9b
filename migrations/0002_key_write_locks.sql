-- Every write of a key is serialised with every other write of that key.
--
-- Writers take a transaction-scoped advisory lock per key (id = XXH3-64 of
-- the whole key, computed by the proxy) before they read or write anything,
-- and hold it until their transaction ends. A row lock cannot do this job:
-- `SELECT ... FOR UPDATE` locks nothing when the key has no row yet, so two
-- writers of a fresh key would both go ahead. The lock is held until after
-- the commit is visible, and every statement a writer runs after taking it
-- gets a fresh READ COMMITTED snapshot (PL/pgSQL takes one per statement), so
-- each writer sees everything the key's previous writers committed.

-- Takes the advisory locks `ids` one after the other, in the order given
-- (callers sort them, so that multi-key writers cannot deadlock), and returns
-- the wall clock (Unix ms) once all are held: the `now` a write uses for
-- expiry.
CREATE FUNCTION sg_lock(ids bigint[]) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    lock_id bigint;
BEGIN
    FOREACH lock_id IN ARRAY ids LOOP
        PERFORM pg_advisory_xact_lock(lock_id);
    END LOOP;
    RETURN sg_clock_ms();
END
$$;

-- SET without options and MSET in one round trip: lock the keys, then
-- write the strings (no expiry). Called as a single statement, so the
-- locks are released when its implicit transaction commits.
CREATE FUNCTION sg_set_strings(p_keys bytea[], p_slots integer[], p_values bytea[], p_ids bigint[])
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    PERFORM sg_lock(p_ids);
    INSERT INTO kv (key, slot, type, value, expires_at)
        SELECT k, s, 0, v, NULL FROM unnest(p_keys, p_slots, p_values) AS t(k, s, v)
        ON CONFLICT (key) DO UPDATE
            SET type = 0, value = EXCLUDED.value, expires_at = NULL;
END
$$;

-- DEL and UNLINK in one round trip: lock the keys, delete them (their hash
-- fields go with them), and count those that were live when the locks were
-- taken.
CREATE FUNCTION sg_delete_keys(p_keys bytea[], p_ids bigint[]) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    now_ms bigint;
    deleted bigint;
BEGIN
    now_ms := sg_lock(p_ids);
    WITH d AS (DELETE FROM kv WHERE key = ANY (p_keys) RETURNING expires_at)
        SELECT count(*) INTO deleted FROM d WHERE expires_at IS NULL OR expires_at > now_ms;
    RETURN deleted;
END
$$;

-- A key that stops being a hash loses its fields, whichever write turned it
-- into a string (SET, MSET, INCR over an expired hash, ...): otherwise the
-- fields would stay behind, unreachable, for ever. Runs in the writer's
-- transaction, under its key lock, with a fresh snapshot.
CREATE FUNCTION sg_drop_hash_fields() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    DELETE FROM kv_hash WHERE key = NEW.key;
    RETURN NULL;
END
$$;

CREATE TRIGGER kv_drop_hash_fields
    AFTER UPDATE ON kv
    FOR EACH ROW
    WHEN (OLD.type = 1 AND NEW.type <> 1)
    EXECUTE FUNCTION sg_drop_hash_fields();

-- Fields left behind by the writes of version 0001.
DELETE FROM kv_hash h USING kv k WHERE h.key = k.key AND k.type <> 1;
