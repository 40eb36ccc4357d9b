-- Row versions, for WATCH (MULTI/EXEC on postgres shards).
--
-- WATCH records the version of each watched key (NULL when the key has no
-- live row); EXEC, holding the advisory locks of 0002 on every key it
-- watches or writes, compares them again and runs nothing if any differs,
-- as Redis answers a nil EXEC when a watched key was touched.
--
-- Every write of a key gives its row a new version from one sequence, so
-- a version is never reused: a key deleted and written again (even with
-- the same value) does not get its old version back. Inserts take the
-- column default; every UPDATE that does not set a version itself gets one
-- from the trigger below (SET over a key, EXPIRE, PERSIST, a key that
-- turns into a hash ...); writes of hash fields (kv_hash) set the version
-- of their key's row in the same statement. A deleted or expired key has
-- no live row: NULL.
--
-- Upgrading rewrites `kv` (ADD COLUMN with a volatile default) under an
-- ACCESS EXCLUSIVE lock: plan for a pause proportional to the data.

CREATE SEQUENCE kv_version;
ALTER TABLE kv ADD COLUMN version bigint NOT NULL DEFAULT nextval('kv_version');
ALTER SEQUENCE kv_version OWNED BY kv.version;

CREATE FUNCTION sg_bump_version() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    NEW.version := nextval('kv_version');
    RETURN NEW;
END
$$;

CREATE TRIGGER kv_bump_version
    BEFORE UPDATE ON kv
    FOR EACH ROW
    WHEN (NEW.version = OLD.version)
    EXECUTE FUNCTION sg_bump_version();
