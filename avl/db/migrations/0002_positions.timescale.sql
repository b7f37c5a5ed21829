-- Positions on TimescaleDB: a hypertable on fix time (daily chunks, no space
-- partitioning), compressed by device ordered by time descending, and a continuous
-- aggregate of reports per device per hour with real-time aggregation. The compression
-- age and the retention come from settings (avl/db/policies.py).

CREATE EXTENSION IF NOT EXISTS timescaledb;

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
);

SELECT create_hypertable('positions', 'fix_time', chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);

ALTER TABLE positions SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'fix_time DESC'
);

CREATE MATERIALIZED VIEW positions_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT device_id,
       time_bucket(INTERVAL '1 hour', fix_time) AS hour,
       count(*) AS reports,
       count(*) FILTER (WHERE valid) AS valid_reports,
       max(speed_kmh) AS max_speed_kmh
FROM positions
GROUP BY device_id, time_bucket(INTERVAL '1 hour', fix_time)
WITH NO DATA;

SELECT add_continuous_aggregate_policy('positions_hourly',
    start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes',
    if_not_exists => TRUE);
