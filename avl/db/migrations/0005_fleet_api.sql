-- The fleet client API: on-demand position requests ("locate now", a billable action),
-- the billing ledger they are recorded in, and forbidden-zone / left-allowed-zone alerts.

-- One row per billable action of a customer; the billing process reads it.
CREATE TABLE billable_events (
    id              bigserial PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    device_id       bigint REFERENCES devices (id),
    kind            text NOT NULL CHECK (kind IN ('locate_request')),
    -- the row of the action's own table (locate_requests.id)
    reference_id    bigint,
    requested_by    bigint REFERENCES users (id),
    occurred_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billable_events_account_idx ON billable_events (account_id, occurred_at);

-- "Locate now": the terminal is commanded by SMS (the outbox row); the request is answered
-- when any report arrives after it (latest_positions.last_received_at > requested_at).
CREATE TABLE locate_requests (
    id              bigserial PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    device_id       bigint NOT NULL REFERENCES devices (id),
    requested_by    bigint NOT NULL REFERENCES users (id),
    requested_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    channel         text NOT NULL DEFAULT 'sms' CHECK (channel IN ('sms')),
    command         text NOT NULL,
    sms_id          bigint REFERENCES sms_messages (id),
    billable        boolean NOT NULL DEFAULT true,
    -- set when a report after requested_at is first seen (the answer is read from latest_positions)
    answered_at     timestamptz
);
CREATE INDEX locate_requests_device_idx ON locate_requests (device_id, requested_at DESC);
CREATE INDEX locate_requests_account_idx ON locate_requests (account_id, requested_at DESC);

-- Alerts raised by the geofence evaluation (api/geo.py): a vehicle entered a forbidden zone,
-- or left the allowed area. Keyed by the fix time of the point that raised it, so evaluating
-- the same stretch again (another request, the live stream) never raises it twice.
CREATE TABLE geofence_alerts (
    id              bigserial PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    device_id       bigint NOT NULL REFERENCES devices (id),
    -- kept when the zone is deleted: the alert is a record of what happened
    geofence_id     bigint REFERENCES geofences (id) ON DELETE SET NULL,
    geofence_name   text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('forbidden_enter', 'allowed_exit')),
    fix_time        timestamptz NOT NULL,
    latitude        double precision NOT NULL,
    longitude       double precision NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    acknowledged_by bigint REFERENCES users (id)
);
CREATE UNIQUE INDEX geofence_alerts_once ON geofence_alerts (device_id, geofence_id, kind, fix_time);
CREATE INDEX geofence_alerts_account_idx ON geofence_alerts (account_id, fix_time DESC);
