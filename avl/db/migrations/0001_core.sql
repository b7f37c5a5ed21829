-- The fleet service's entities: accounts, vehicles, devices, centers, users, tickets, ...
-- Positions live in 0002 (TimescaleDB hypertable or native daily partitions).

CREATE TABLE accounts (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL,
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'suspended', 'retired')),
    -- why it is suspended/retired, e.g. 'non-payment'
    status_reason   text,
    status_changed_at timestamptz NOT NULL DEFAULT now(),
    billing         text NOT NULL DEFAULT 'post_paid' CHECK (billing IN ('post_paid', 'pre_paid')),
    balance         numeric(12, 2) NOT NULL DEFAULT 0,
    plan_code       text NOT NULL DEFAULT 'PLOCVEHC',
    contact_name    text,
    contact_msisdn  text,
    contact_email   text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX accounts_name_key ON accounts (lower(name));

CREATE TABLE installation_centers (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    address     text,
    phone       text,
    latitude    double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude   double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    certified   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vehicles (
    id                  bigserial PRIMARY KEY,
    account_id          bigint NOT NULL REFERENCES accounts (id),
    plate               text NOT NULL UNIQUE,
    supply_voltage_v    smallint NOT NULL DEFAULT 12 CHECK (supply_voltage_v IN (12, 24)),
    kind                text NOT NULL DEFAULT 'car'
                        CHECK (kind IN ('car', 'van', 'truck', 'bus', 'motorcycle', 'other')),
    description         text,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vehicles_account_idx ON vehicles (account_id);

CREATE TABLE devices (
    id                      bigserial PRIMARY KEY,
    -- what the terminal sends: IMEI, ESN/MEID (CDMA) or a vendor id
    identifier              text NOT NULL,
    protocol                text NOT NULL,
    msisdn                  text,
    line_status             text NOT NULL DEFAULT 'active' CHECK (line_status IN ('active', 'suspended')),
    model                   text,
    firmware                text,
    account_id              bigint REFERENCES accounts (id),
    vehicle_id              bigint UNIQUE REFERENCES vehicles (id),
    installed_at            date,
    installation_center_id  bigint REFERENCES installation_centers (id),
    report_interval_s       integer NOT NULL DEFAULT 60 CHECK (report_interval_s > 0),
    -- per-device decoder options (model override, time zone...)
    options                 jsonb NOT NULL DEFAULT '{}',
    created_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (identifier, protocol)
);
CREATE INDEX devices_account_idx ON devices (account_id);
CREATE UNIQUE INDEX devices_msisdn_key ON devices (msisdn) WHERE msisdn IS NOT NULL;

CREATE TABLE users (
    id                      bigserial PRIMARY KEY,
    name                    text NOT NULL,
    email                   text NOT NULL,
    role                    text NOT NULL CHECK (role IN ('client', 'support', 'installer', 'admin')),
    account_id              bigint REFERENCES accounts (id),
    installation_center_id  bigint REFERENCES installation_centers (id),
    password_hash           text,
    must_change_password    boolean NOT NULL DEFAULT false,
    active                  boolean NOT NULL DEFAULT true,
    created_at              timestamptz NOT NULL DEFAULT now(),
    CHECK (role <> 'client' OR account_id IS NOT NULL),
    CHECK (role <> 'installer' OR installation_center_id IS NOT NULL)
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE api_tokens (
    id              bigserial PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES users (id),
    name            text NOT NULL DEFAULT '',
    -- sha256 of the token; the token itself is shown once and never stored
    token_hash      bytea NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    last_used_at    timestamptz,
    revoked_at      timestamptz
);

CREATE TABLE latest_positions (
    device_id       bigint PRIMARY KEY REFERENCES devices (id),
    fix_time        timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    -- newest arrival of any report, even one older than fix_time (buffered data)
    last_received_at timestamptz NOT NULL,
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
    flags           integer NOT NULL DEFAULT 0,
    attributes      jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE device_events (
    id              bigserial PRIMARY KEY,
    device_id       bigint NOT NULL REFERENCES devices (id),
    time            timestamptz NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    -- status (report without fix), alarm, ignition_on/off, geofence_enter/exit, ...
    kind            text NOT NULL,
    alarm           text,
    ignition        boolean,
    power_mv        integer,
    battery_mv      integer,
    attributes      jsonb NOT NULL DEFAULT '{}',
    raw             bytea
);
CREATE INDEX device_events_device_time_idx ON device_events (device_id, time DESC);

CREATE TABLE unknown_devices (
    identifier      text NOT NULL,
    protocol        text NOT NULL,
    source_address  text,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz NOT NULL DEFAULT now(),
    count           bigint NOT NULL DEFAULT 1,
    last_raw        bytea,
    PRIMARY KEY (identifier, protocol)
);

CREATE SEQUENCE ticket_number_seq;
CREATE TABLE tickets (
    id              bigserial PRIMARY KEY,
    -- the number a customer quotes, e.g. AVL-2026-000042
    number          text NOT NULL UNIQUE,
    account_id      bigint REFERENCES accounts (id),
    device_id       bigint REFERENCES devices (id),
    type            text NOT NULL CHECK (type IN ('technical', 'information', 'field_service', 'platform')),
    -- fault category (the verdict), used for one-open-ticket-per-category and recurrence
    category        text NOT NULL,
    state           text NOT NULL DEFAULT 'open'
                    CHECK (state IN ('open', 'in_progress', 'waiting_customer', 'at_installation_center',
                                     'resolved', 'closed')),
    title           text NOT NULL,
    recurrence_of   bigint REFERENCES tickets (id),
    dead_on_arrival boolean NOT NULL DEFAULT false,
    opened_at       timestamptz NOT NULL DEFAULT now(),
    sla_due_at      timestamptz,
    first_response_at timestamptz,
    resolved_at     timestamptz,
    closed_at       timestamptz
);
CREATE INDEX tickets_device_idx ON tickets (device_id, category, state);
CREATE UNIQUE INDEX tickets_one_open_per_category ON tickets (device_id, category)
    WHERE state NOT IN ('resolved', 'closed') AND device_id IS NOT NULL;

CREATE TABLE ticket_activities (
    id              bigserial PRIMARY KEY,
    ticket_id       bigint NOT NULL REFERENCES tickets (id),
    at              timestamptz NOT NULL DEFAULT now(),
    who             text NOT NULL,
    channel         text NOT NULL CHECK (channel IN ('phone', 'email', 'whatsapp', 'sms', 'web', 'system')),
    reason          text,
    supplied        text,
    pending         text,
    solution        text,
    protocol_applied text,
    appointment_at  timestamptz,
    notes           text
);
CREATE INDEX ticket_activities_ticket_idx ON ticket_activities (ticket_id, at);

CREATE TABLE certifications (
    id                  bigserial PRIMARY KEY,
    device_id           bigint NOT NULL REFERENCES devices (id),
    installation_center_id bigint NOT NULL REFERENCES installation_centers (id),
    installer_user_id   bigint REFERENCES users (id),
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    result              text NOT NULL DEFAULT 'in_progress' CHECK (result IN ('in_progress', 'pass', 'fail')),
    checks              jsonb NOT NULL DEFAULT '{}',
    customer_signed_by  text,
    signed_at           timestamptz
);

CREATE TABLE sms_messages (
    id              bigserial PRIMARY KEY,
    direction       text NOT NULL CHECK (direction IN ('mt', 'mo')),
    msisdn          text NOT NULL,
    device_id       bigint REFERENCES devices (id),
    body            text NOT NULL,
    status          text NOT NULL DEFAULT 'queued',
    smpp_message_id text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    submitted_at    timestamptz,
    delivered_at    timestamptz,
    error           text
);
CREATE INDEX sms_messages_msisdn_idx ON sms_messages (msisdn, created_at DESC);

CREATE TABLE diagnostic_runs (
    id              bigserial PRIMARY KEY,
    device_id       bigint NOT NULL REFERENCES devices (id),
    requested_by    text NOT NULL DEFAULT 'sweep',
    status          text NOT NULL DEFAULT 'running' CHECK (status IN ('queued', 'running', 'done', 'failed')),
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    verdict         text,
    steps           jsonb NOT NULL DEFAULT '[]',
    ticket_id       bigint REFERENCES tickets (id)
);
CREATE INDEX diagnostic_runs_device_idx ON diagnostic_runs (device_id, started_at DESC);

CREATE TABLE geofences (
    id              bigserial PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    name            text NOT NULL,
    kind            text NOT NULL DEFAULT 'forbidden' CHECK (kind IN ('allowed', 'forbidden')),
    -- GeoJSON Polygon/MultiPolygon, WGS84; the bounding box pre-filters candidates
    geometry        jsonb NOT NULL,
    min_lat         double precision NOT NULL,
    min_lon         double precision NOT NULL,
    max_lat         double precision NOT NULL,
    max_lon         double precision NOT NULL,
    dwell_s         integer,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX geofences_account_idx ON geofences (account_id);

-- Reports refused from the positions table (fix time more than a day ahead or beyond
-- retention, impossible coordinates): kept here, counted, never silently dropped.
CREATE TABLE positions_quarantine (
    id              bigserial PRIMARY KEY,
    device_id       bigint NOT NULL REFERENCES devices (id),
    fix_time        timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    reason          text NOT NULL,
    latitude        double precision,
    longitude       double precision,
    record          jsonb NOT NULL,
    raw             bytea
);
CREATE INDEX positions_quarantine_device_idx ON positions_quarantine (device_id, received_at DESC);
