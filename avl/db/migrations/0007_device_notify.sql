-- A newly registered terminal is acknowledged at once: ingest listens for this and adds it
-- to its device directory (otherwise it would wait for the periodic refresh).
CREATE FUNCTION avl_notify_device() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('avl_devices', json_build_object('id', NEW.id, 'identifier', NEW.identifier,
                                                       'protocol', NEW.protocol)::text);
    RETURN NEW;
END
$$;

CREATE TRIGGER devices_notify AFTER INSERT OR UPDATE OF identifier, protocol ON devices
    FOR EACH ROW EXECUTE FUNCTION avl_notify_device();
