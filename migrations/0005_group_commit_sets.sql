-- Group commit of plain SETs in one round trip (backend/pg/batch.rs).
--
-- A batch of only `SET key value` commands is one statement, run outside
-- an explicit transaction (so it commits as it ends, with no BEGIN and
-- COMMIT round trips): try the advisory locks of its keys (never wait:
-- a key another writer holds is left out and its SETs run alone), bound
-- any row-lock wait for the rest of the statement by p_lock_timeout, write
-- the strings of the keys whose locks it got, and return those lock ids.
-- p_keys holds distinct keys (each with its batch's last value) and
-- p_key_ids each key's lock id (the ids of 0002, computed by the proxy).
-- The update sets the row's new version itself (0004), which spares the
-- version trigger's call per row.
CREATE FUNCTION sg_try_set_strings(p_keys bytea[], p_slots integer[], p_values bytea[],
                                   p_key_ids bigint[], p_lock_timeout text)
    RETURNS bigint[]
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    held bigint[];
BEGIN
    SELECT coalesce(array_agg(id), '{}') INTO held
        FROM (SELECT DISTINCT id FROM unnest(p_key_ids) AS t(id)) AS d
        WHERE pg_try_advisory_xact_lock(id);
    PERFORM set_config('lock_timeout', p_lock_timeout, true);
    INSERT INTO kv (key, slot, type, value, expires_at)
        SELECT k, s, 0, v, NULL
            FROM unnest(p_keys, p_slots, p_values, p_key_ids) AS t(k, s, v, id)
            WHERE id = ANY (held)
        ON CONFLICT (kd) DO UPDATE
            SET type = 0, value = EXCLUDED.value, expires_at = NULL,
                version = nextval('kv_version');
    RETURN held;
END
$$;

-- Leave room in each heap page so that a rewrite of a key's value can stay
-- on its page (a HOT update: no new index entries, the old version pruned
-- in place). Applies to pages written from now on.
ALTER TABLE kv SET (fillfactor = 80);
