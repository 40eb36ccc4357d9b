-- shardgate PostgreSQL shard schema: Redis strings and hashes with expiry.
-- Applied by the proxy at startup on every PostgreSQL primary (sqlx migrator).

-- Milliseconds since the Unix epoch at the start of the current statement.
-- STABLE, so one statement sees one time and indexes on expires_at apply.
CREATE FUNCTION sg_now_ms() RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT floor(extract(epoch FROM statement_timestamp()) * 1000)::bigint $$;

-- Milliseconds since the Unix epoch right now (after waiting for a lock).
CREATE FUNCTION sg_clock_ms() RETURNS bigint
    LANGUAGE sql VOLATILE PARALLEL SAFE
    AS $$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- One row per key. type: 0 = string (value holds it), 1 = hash (fields in
-- kv_hash). expires_at: Unix milliseconds, NULL = no expiry; a row whose
-- expires_at <= now is invisible to every command and deleted by the reaper.
-- slot = XXH3-64(hash tag) % slots of the shard map, so that a slot's keys can
-- be listed (SCAN walks slots in order) and moved.
CREATE TABLE kv (
    key        bytea    PRIMARY KEY,
    slot       integer  NOT NULL,
    type       smallint NOT NULL,
    value      bytea,
    expires_at bigint
);
CREATE INDEX kv_slot_key ON kv (slot, key);
CREATE INDEX kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;

-- Hash fields; id keeps insertion order (HGETALL answers in it, as Redis does
-- for small hashes).
CREATE TABLE kv_hash (
    key   bytea  NOT NULL REFERENCES kv (key) ON DELETE CASCADE,
    field bytea  NOT NULL,
    value bytea  NOT NULL,
    id    bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (key, field)
);
CREATE INDEX kv_hash_order ON kv_hash (key, id);
