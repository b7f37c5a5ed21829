-- Wialon IPS (the #L# login password) and JT/T 808 (the authentication code) carry a device
-- password too: admit one for them as 0010 did for calamp and osmand.
ALTER TABLE devices DROP CONSTRAINT devices_password_protocol;
ALTER TABLE devices ADD CONSTRAINT devices_password_protocol
    CHECK (password_sha256 IS NULL OR protocol IN ('calamp', 'osmand', 'wialon', 'jt808'));
