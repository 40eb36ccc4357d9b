-- Keys and hash fields of any length (Redis accepts up to 512 MB).
--
-- Version 0001 indexed `kv.key` and `kv_hash (key, field)` with btrees,
-- whose entries cannot exceed about 2.7 KB (a third of a page): a longer
-- key or field failed with "index row size exceeds btree version 4
-- maximum". A key (and a field) is now identified by its SHA-256 digest,
-- 32 bytes whatever its length: the primary keys and every index hold
-- digests, lookups use the index on the digest and then compare the key
-- itself for equality (`kd = sha256($1) AND key = $1`). Two different keys
-- sharing a digest would need a SHA-256 collision.
--
-- `kv_hash` no longer repeats the key in every field row (a 1 MB key with
-- 1000 fields would have stored 1 GB): a field row points to its key by
-- digest (`kd`, a foreign key to `kv (kd)`, still ON DELETE CASCADE).
--
-- SCAN walks a slot in digest order (`kv (slot, kd)`), RANDOMKEY probes the
-- digest index (uniformly spread, unlike keys), and the reaper deletes by
-- digest. The per-key advisory locks of 0002 are unchanged (their ids come
-- from the proxy); the functions of 0002 are replaced by ones that find
-- keys by digest.
--
-- Upgrading rewrites both tables (ADD COLUMN ... STORED) under an ACCESS
-- EXCLUSIVE lock: plan for a pause proportional to the data.

ALTER TABLE kv_hash DROP CONSTRAINT kv_hash_key_fkey;
ALTER TABLE kv_hash DROP CONSTRAINT kv_hash_pkey;
DROP INDEX kv_hash_order;
DROP INDEX kv_slot_key;

ALTER TABLE kv ADD COLUMN kd bytea GENERATED ALWAYS AS (sha256(key)) STORED;
ALTER TABLE kv DROP CONSTRAINT kv_pkey;
ALTER TABLE kv ADD CONSTRAINT kv_pkey PRIMARY KEY (kd);
CREATE INDEX kv_slot_kd ON kv (slot, kd);

ALTER TABLE kv_hash ADD COLUMN kd bytea;
UPDATE kv_hash SET kd = sha256(key);
ALTER TABLE kv_hash ALTER COLUMN kd SET NOT NULL;
ALTER TABLE kv_hash DROP COLUMN key;
ALTER TABLE kv_hash ADD COLUMN fd bytea GENERATED ALWAYS AS (sha256(field)) STORED;
ALTER TABLE kv_hash ADD CONSTRAINT kv_hash_pkey PRIMARY KEY (kd, fd);
ALTER TABLE kv_hash ADD CONSTRAINT kv_hash_kd_fkey
    FOREIGN KEY (kd) REFERENCES kv (kd) ON DELETE CASCADE;
CREATE INDEX kv_hash_order ON kv_hash (kd, id);

-- As in 0002 (lock, then write the strings), with the conflict on the digest.
CREATE OR REPLACE FUNCTION sg_set_strings(p_keys bytea[], p_slots integer[], p_values bytea[], p_ids bigint[])
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    PERFORM sg_lock(p_ids);
    INSERT INTO kv (key, slot, type, value, expires_at)
        SELECT k, s, 0, v, NULL FROM unnest(p_keys, p_slots, p_values) AS t(k, s, v)
        ON CONFLICT (kd) DO UPDATE
            SET type = 0, value = EXCLUDED.value, expires_at = NULL;
END
$$;

-- As in 0002 (lock, delete, count the keys that were live), by digest.
CREATE OR REPLACE FUNCTION sg_delete_keys(p_keys bytea[], p_ids bigint[]) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    now_ms bigint;
    deleted bigint;
BEGIN
    now_ms := sg_lock(p_ids);
    WITH d AS (
        DELETE FROM kv USING unnest(p_keys) AS t(k)
            WHERE kv.kd = sha256(t.k) AND kv.key = t.k
            RETURNING kv.expires_at
    )
    SELECT count(*) INTO deleted FROM d WHERE expires_at IS NULL OR expires_at > now_ms;
    RETURN deleted;
END
$$;

-- As in 0002 (a key that stops being a hash loses its fields), by digest.
CREATE OR REPLACE FUNCTION sg_drop_hash_fields() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    DELETE FROM kv_hash WHERE kd = NEW.kd;
    RETURN NULL;
END
$$;
