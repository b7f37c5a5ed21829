-- Device passwords: where a protocol's frames carry a secret the terminal is configured with
-- (CalAmp's authentication word, a phone's `password` parameter or HTTP Basic password for
-- osmand), ingest checks it against the device's. NULL: no password required.
-- Stored as the SHA-256 of the UTF-8 password (CalAmp: of the word's lowercase hex):
--   UPDATE devices SET password_sha256 = sha256(convert_to('<password>', 'UTF8')) WHERE id = ...;
ALTER TABLE devices ADD COLUMN password_sha256 bytea;
ALTER TABLE devices ADD CONSTRAINT devices_password_sha256_length
    CHECK (password_sha256 IS NULL OR octet_length(password_sha256) = 32);
-- The other protocols carry no password: one set there could never be checked.
ALTER TABLE devices ADD CONSTRAINT devices_password_protocol
    CHECK (password_sha256 IS NULL OR protocol IN ('calamp', 'osmand'));

-- Ingest's device directory learns a new or changed password at once, as it learns a new device.
CREATE OR REPLACE FUNCTION avl_notify_device() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('avl_devices', json_build_object('id', NEW.id, 'identifier', NEW.identifier,
                                                       'protocol', NEW.protocol,
                                                       'password_sha256', encode(NEW.password_sha256, 'hex'))::text);
    RETURN NEW;
END
$$;

DROP TRIGGER devices_notify ON devices;
CREATE TRIGGER devices_notify AFTER INSERT OR UPDATE OF identifier, protocol, password_sha256 ON devices
    FOR EACH ROW EXECUTE FUNCTION avl_notify_device();
