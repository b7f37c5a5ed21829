-- Positions on plain PostgreSQL: natively range-partitioned by fix time, one partition
-- per UTC day, created ahead (and on demand by the writer) and dropped by retention.

CREATE TABLE positions (
    device_id       bigint NOT NULL,
    fix_time        timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    valid           boolean NOT NULL,
    latitude        double precision NOT NULL,
    longitude       double precision NOT NULL,
    speed_kmh       real,
    course          real,
    altitude_m      real,
    satellites      smallint,
    hdop            real,
    ignition        boolean,
    power_mv        integer,
    battery_mv      integer,
    odometer_m      bigint,
    alarm           text,
    -- bit flags set by the pipeline (see ingest/pipeline.py: FLAG_*)
    flags           integer NOT NULL DEFAULT 0,
    protocol        text NOT NULL,
    attributes      jsonb NOT NULL DEFAULT '{}',
    raw             bytea,
    -- unique (device, fix time): a device retransmission is absorbed, not duplicated
    PRIMARY KEY (device_id, fix_time)
) PARTITION BY RANGE (fix_time);

-- Creates the partition holding `day` (UTC) if missing; safe under concurrency.
CREATE FUNCTION avl_ensure_position_partition(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'positions_' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('avl_position_partitions'));
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF positions FOR VALUES FROM (%L) TO (%L)',
                   part, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
END
$$;

-- Drops whole daily partitions older than keep_days; returns how many were dropped.
CREATE FUNCTION avl_drop_position_partitions(keep_days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'positions'::regclass
          AND c.relname ~ '^positions_[0-9]{8}$'
          AND to_date(substr(c.relname, 11), 'YYYYMMDD') < (now() AT TIME ZONE 'UTC')::date - keep_days
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;

-- Reports per device per hour. A plain view here; a continuous aggregate with
-- real-time aggregation on TimescaleDB (same name, same columns).
CREATE VIEW positions_hourly AS
SELECT device_id,
       date_trunc('hour', fix_time) AS hour,
       count(*) AS reports,
       count(*) FILTER (WHERE valid) AS valid_reports,
       max(speed_kmh) AS max_speed_kmh
FROM positions
GROUP BY device_id, date_trunc('hour', fix_time);
