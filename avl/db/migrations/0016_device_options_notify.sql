-- Per-device decoder options (devices.options: gt06 "model", atrack "form", t800x "ack"...) reach
-- ingest's device directory at once, as a new device and a changed password do (0007, 0010): the
-- notice carries them, so an option set while ingest runs applies to the device's next frame.
-- Keys other services keep in the same column (diagnostics' "sms_password") are left out: ingest
-- has no use for them. A notice's payload is at most 8000 bytes, so options are capped well under it,
-- and they are an object (what the decoders read by key).
ALTER TABLE devices ADD CONSTRAINT devices_options_object CHECK (jsonb_typeof(options) = 'object');
ALTER TABLE devices ADD CONSTRAINT devices_options_size CHECK (octet_length(options::text) <= 4096);

CREATE OR REPLACE FUNCTION avl_notify_device() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('avl_devices', json_build_object('id', NEW.id, 'identifier', NEW.identifier,
                                                       'protocol', NEW.protocol,
                                                       'password_sha256', encode(NEW.password_sha256, 'hex'),
                                                       'options', NEW.options - 'sms_password')::text);
    RETURN NEW;
END
$$;

DROP TRIGGER devices_notify ON devices;
CREATE TRIGGER devices_notify AFTER INSERT OR UPDATE OF identifier, protocol, password_sha256, options ON devices
    FOR EACH ROW EXECUTE FUNCTION avl_notify_device();
