-- Diagnosis you can trust: per-device reporting cadence, phone numbers in E.164, SMS
-- validity, and what the checklist needs to tell "parked" from "silent".

-- Terminals report every report_interval_s while moving and less often parked (ignition
-- off). An installer may declare the parked cadence; otherwise the checklist learns both
-- from the device's own history (device_cadence) and the sweep uses what it learned.
ALTER TABLE devices ADD COLUMN parked_interval_s integer CHECK (parked_interval_s > 0);

CREATE TABLE device_cadence (
    device_id           bigint PRIMARY KEY REFERENCES devices (id),
    -- medians of the gaps between consecutive arrivals, by the state of the earlier report
    moving_interval_s   real,
    parked_interval_s   real,
    moving_samples      integer NOT NULL DEFAULT 0,
    parked_samples      integer NOT NULL DEFAULT 0,
    learned_at          timestamptz NOT NULL DEFAULT now()
);

-- Any frame a terminal sends (a heartbeat, a status report without a fix) shows it is alive:
-- latest_positions.last_received_at already moves on every arrival of a position; the
-- writer now moves it on device events too (ingest/writer.py).

-- Phone numbers are stored in E.164 ("+584140000077"). Digits-only numbers of international
-- length are taken as international; national forms ("0414...") are normalised by `avl`
-- when they are next written (they cannot be converted without the default country).
UPDATE devices SET msisdn = '+' || msisdn WHERE msisdn ~ '^[1-9][0-9]{10,14}$';
UPDATE accounts SET contact_msisdn = '+' || contact_msisdn WHERE contact_msisdn ~ '^[1-9][0-9]{10,14}$';
UPDATE sms_messages SET msisdn = '+' || msisdn WHERE msisdn ~ '^[1-9][0-9]{10,14}$';

-- An SMS ping carries a validity period no longer than the checklist waits, so a terminal
-- that cannot take it yields an EXPIRED receipt within the wait instead of none at all.
ALTER TABLE sms_messages ADD COLUMN validity_s integer CHECK (validity_s > 0);
