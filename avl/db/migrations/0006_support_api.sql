-- The support center, installation center and admin API (api/routes/support.py,
-- installers.py, admin.py): what the certification session needs beyond 0001.

-- A certification is evaluated live from the reports stored since it started: the
-- radius around the center the vehicle must be in, the SMS round trip queued at its start,
-- and, at sign-off, who recorded it and why it ended (e.g. superseded by a new session).
ALTER TABLE certifications
    ADD COLUMN radius_m integer NOT NULL DEFAULT 500 CHECK (radius_m BETWEEN 10 AND 50000),
    ADD COLUMN sms_message_id bigint REFERENCES sms_messages (id),
    ADD COLUMN customer_document text,
    ADD COLUMN signed_recorded_by bigint REFERENCES users (id),
    ADD COLUMN outcome_note text;
CREATE INDEX certifications_device_idx ON certifications (device_id, started_at DESC);
CREATE INDEX certifications_center_idx ON certifications (installation_center_id, started_at DESC);

-- Unknown devices are listed newest first.
CREATE INDEX unknown_devices_last_seen_idx ON unknown_devices (last_seen DESC);

-- Ticket search by account and state (the support desk's queue).
CREATE INDEX tickets_account_state_idx ON tickets (account_id, state, opened_at DESC);
