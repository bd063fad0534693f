-- The opc-collector device registry, schema version 1 (docs/registry.md).
-- PostgreSQL 14 or later. Applied by `opc-collector registry init` in one
-- transaction; every statement is idempotent, so applying it again (a newer
-- daemon's migration) changes nothing that is already right.

-- One init at a time, and never stuck behind a long import holding the
-- table: fail fast instead (the replicas' reads queue behind a waiting lock).
SET LOCAL lock_timeout = '5s';
SELECT pg_advisory_xact_lock(7283641);

CREATE SCHEMA IF NOT EXISTS opc_collector;

-- Every insert and update takes the next version: a row's version says
-- whether a replica's copy of it is current.
CREATE SEQUENCE IF NOT EXISTS opc_collector.device_version;

-- One row per device: the fields of a device entry of a device file.
CREATE TABLE IF NOT EXISTS opc_collector.devices (
    -- The device id (the Kafka key of its records), as the device files
    -- write it: no surrounding blanks.
    id          text PRIMARY KEY CHECK (id = btrim(id) AND id <> ''),
    -- opc.tcp://host:port[/path]
    endpoint    text NOT NULL,
    -- The read interval as in YAML ('10s', '500ms'); NULL: schedule.interval.
    "interval"  text,
    -- The protocol adapter's keys of the entry as JSON: nodes, security
    -- overrides, ... (the same keys and values as in YAML).
    settings    jsonb NOT NULL DEFAULT '{}'::jsonb
                CHECK (octet_length(settings::text) <= 262144),
    -- false: listed, but not read.
    enabled     boolean NOT NULL DEFAULT true,
    -- Maintained by the triggers below; writers leave them out.
    version     bigint NOT NULL DEFAULT nextval('opc_collector.device_version'),
    written_by  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- The jump hash's spans of the id (opc_collector.shard_cells): lets a
    -- replica ask the index for its shard's rows only.
    shard_cells int4[] NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS devices_shard_cells ON opc_collector.devices USING gin (shard_cells);
CREATE INDEX IF NOT EXISTS devices_written_by ON opc_collector.devices (written_by);

-- Deleted (or renamed) devices, so that polling replicas see deletions.
-- Rows older than a week are pruned by a trigger (a replica whose registry
-- was unreachable loads its whole shard again anyway).
CREATE TABLE IF NOT EXISTS opc_collector.tombstones (
    id          text NOT NULL,
    shard_cells int4[] NOT NULL,
    written_by  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    deleted_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS tombstones_written_by ON opc_collector.tombstones (written_by);
CREATE INDEX IF NOT EXISTS tombstones_deleted_at ON opc_collector.tombstones (deleted_at);

-- a * b modulo 2^64, on 64-bit two's complement values.
CREATE OR REPLACE FUNCTION opc_collector.mul64(a bigint, b bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (CASE WHEN r >= 9223372036854775808 THEN r - 18446744073709551616 ELSE r END)::bigint
    FROM (SELECT mod((CASE WHEN a < 0 THEN a + 18446744073709551616 ELSE a END)::numeric
                   * (CASE WHEN b < 0 THEN b + 18446744073709551616 ELSE b END)::numeric,
                     18446744073709551616) AS r) t
$$;

-- The shard key of a device id: FNV-1a (64 bit) of its UTF-8 bytes and a
-- splitmix64 finalizer, as collector-core's shard.rs computes it.
CREATE OR REPLACE FUNCTION opc_collector.shard_key(id text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    bytes bytea := convert_to(id, 'UTF8');
    h bigint := -3750763034362895579;  -- 0xcbf29ce484222325
BEGIN
    FOR i IN 0 .. length(bytes) - 1 LOOP
        h := opc_collector.mul64((h::bit(64) # get_byte(bytes, i)::bigint::bit(64))::bigint,
                                 1099511628211);  -- 0x100000001b3
    END LOOP;
    h := opc_collector.mul64((h::bit(64) # (h::bit(64) >> 30))::bigint, -4658895280553007687);
    h := opc_collector.mul64((h::bit(64) # (h::bit(64) >> 27))::bigint, -7723592293110705685);
    RETURN (h::bit(64) # (h::bit(64) >> 31))::bigint;
END $$;

-- The jump consistent hash's spans of a device id, up to 4096 shards: one
-- cell `b * 8192 + t` per bucket b the hash visits, with t the next bucket
-- it visits (at most 4096). The device is in shard b for every shard count
-- in b+1 .. t, so shard s of n holds exactly the rows with a cell in
-- s*8192+n .. s*8192+4096 (collector-core's `shard::spans`).
CREATE OR REPLACE FUNCTION opc_collector.shard_cells(id text) RETURNS int4[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    k numeric := opc_collector.shard_key(id);
    b bigint;
    j bigint := 0;
    cells int4[] := '{}';
BEGIN
    IF k < 0 THEN k := k + 18446744073709551616; END IF;
    LOOP
        b := j;
        k := mod(k * 2862933555777941757 + 1, 18446744073709551616);
        j := floor((b + 1)::float8 * (2147483648::float8 / (div(k, 8589934592) + 1)::float8))::bigint;
        cells := cells || (b * 8192 + least(j, 4096))::int4;
        EXIT WHEN j >= 4096;
    END LOOP;
    RETURN cells;
END $$;

-- Versions, writers and shard cells are the registry's, whatever a writer
-- sets: cells follow the id, and a renamed device leaves a tombstone.
CREATE OR REPLACE FUNCTION opc_collector.device_written() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.id IS DISTINCT FROM OLD.id THEN
            INSERT INTO opc_collector.tombstones (id, shard_cells) VALUES (OLD.id, OLD.shard_cells);
            NEW.shard_cells := opc_collector.shard_cells(NEW.id);
        ELSE
            NEW.shard_cells := OLD.shard_cells;
        END IF;
        NEW.version := nextval('opc_collector.device_version');
    ELSE
        NEW.shard_cells := opc_collector.shard_cells(NEW.id);
        NEW.version := nextval('opc_collector.device_version');
    END IF;
    NEW.written_by := pg_current_xact_id();
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION opc_collector.device_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO opc_collector.tombstones (id, shard_cells) VALUES (OLD.id, OLD.shard_cells);
    RETURN OLD;
END $$;

-- Tombstones older than a week go: a replica that has not polled for that
-- long reloads its whole shard anyway (after any failed query it does).
CREATE OR REPLACE FUNCTION opc_collector.prune_tombstones() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM opc_collector.tombstones WHERE deleted_at < clock_timestamp() - interval '7 days';
    RETURN NULL;
END $$;

-- TRUNCATE fires no row trigger: polling replicas would never see the
-- devices go. Refused; DELETE does the same and leaves tombstones.
CREATE OR REPLACE FUNCTION opc_collector.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of opc_collector.devices is refused: replicas would not see the devices go; use DELETE FROM opc_collector.devices';
END $$;

CREATE OR REPLACE TRIGGER device_written BEFORE INSERT OR UPDATE ON opc_collector.devices
    FOR EACH ROW EXECUTE FUNCTION opc_collector.device_written();
CREATE OR REPLACE TRIGGER device_deleted AFTER DELETE ON opc_collector.devices
    FOR EACH ROW EXECUTE FUNCTION opc_collector.device_deleted();
CREATE OR REPLACE TRIGGER prune_tombstones AFTER DELETE OR UPDATE OF id ON opc_collector.devices
    FOR EACH STATEMENT EXECUTE FUNCTION opc_collector.prune_tombstones();
CREATE OR REPLACE TRIGGER refuse_truncate BEFORE TRUNCATE ON opc_collector.devices
    FOR EACH STATEMENT EXECUTE FUNCTION opc_collector.refuse_truncate();

-- Which schema version this is, and the oldest daemon that reads it (a
-- later version that keeps what version 1 readers need leaves this at 1).
CREATE TABLE IF NOT EXISTS opc_collector.schema_version (
    version    int PRIMARY KEY,
    min_reader int NOT NULL DEFAULT 1
);
INSERT INTO opc_collector.schema_version VALUES (1, 1) ON CONFLICT DO NOTHING;
