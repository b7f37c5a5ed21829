-- The fleet sweep keeps each device's expected cadence and serviceability (what devices, accounts
-- and device_cadence say: they change rarely) in the diagnostics worker's memory, and re-reads only
-- the devices named here (diagnostics/sweep.py). Every change that can alter what the sweep decides
-- for a device adds a row in the same transaction; the sweeper deletes the rows it has read in the
-- same snapshot it reads the devices with, so a change is seen exactly once, whenever it commits.
-- latest_positions is not logged: it changes with every report and the sweep reads its three
-- columns whole.
CREATE TABLE sweep_changes (
    device_id   bigint,  -- this device
    account_id  bigint,  -- every device of this account (its status changed)
    CHECK ((device_id IS NULL) <> (account_id IS NULL))
);

-- Which sweeper's memory the log is kept for: a sweeper that finds another's token here (the sweeper
-- moved to another worker and back) reads the whole fleet again instead of trusting its memory.
CREATE TABLE sweep_reader (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    token       text NOT NULL DEFAULT ''
);
INSERT INTO sweep_reader DEFAULT VALUES;

CREATE FUNCTION avl_sweep_rows_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO sweep_changes (device_id) SELECT id FROM old_rows;
    ELSE
        INSERT INTO sweep_changes (device_id) SELECT id FROM new_rows;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION avl_sweep_row_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'accounts' THEN
        INSERT INTO sweep_changes (account_id) VALUES (NEW.id);
    ELSIF TG_TABLE_NAME = 'devices' THEN
        INSERT INTO sweep_changes (device_id) VALUES (NEW.id);
    ELSE  -- device_cadence
        INSERT INTO sweep_changes (device_id) VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.device_id ELSE NEW.device_id END);
    END IF;
    RETURN NULL;
END
$$;

-- A truncated table leaves no rows to log: every sweeper reads the whole fleet again.
CREATE FUNCTION avl_sweep_forget() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sweep_reader SET token = '';
    RETURN NULL;
END
$$;

-- Devices come and go in bulk (imports): one statement-level insert per statement.
CREATE TRIGGER devices_sweep_insert AFTER INSERT ON devices REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION avl_sweep_rows_changed();
CREATE TRIGGER devices_sweep_delete AFTER DELETE ON devices REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION avl_sweep_rows_changed();
CREATE TRIGGER devices_sweep_update AFTER UPDATE OF account_id, line_status, report_interval_s, parked_interval_s
    ON devices FOR EACH ROW
    WHEN (OLD.account_id IS DISTINCT FROM NEW.account_id OR OLD.line_status IS DISTINCT FROM NEW.line_status
          OR OLD.report_interval_s IS DISTINCT FROM NEW.report_interval_s
          OR OLD.parked_interval_s IS DISTINCT FROM NEW.parked_interval_s)
    EXECUTE FUNCTION avl_sweep_row_changed();

CREATE TRIGGER accounts_sweep_status AFTER UPDATE OF status ON accounts FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION avl_sweep_row_changed();

CREATE TRIGGER device_cadence_sweep AFTER INSERT OR DELETE ON device_cadence FOR EACH ROW
    EXECUTE FUNCTION avl_sweep_row_changed();
CREATE TRIGGER device_cadence_sweep_update AFTER UPDATE ON device_cadence FOR EACH ROW
    WHEN (OLD.moving_interval_s IS DISTINCT FROM NEW.moving_interval_s
          OR OLD.parked_interval_s IS DISTINCT FROM NEW.parked_interval_s
          OR OLD.moving_samples IS DISTINCT FROM NEW.moving_samples
          OR OLD.parked_samples IS DISTINCT FROM NEW.parked_samples)
    EXECUTE FUNCTION avl_sweep_row_changed();

CREATE TRIGGER devices_sweep_truncate AFTER TRUNCATE ON devices FOR EACH STATEMENT EXECUTE FUNCTION avl_sweep_forget();
CREATE TRIGGER accounts_sweep_truncate AFTER TRUNCATE ON accounts FOR EACH STATEMENT EXECUTE FUNCTION avl_sweep_forget();
CREATE TRIGGER device_cadence_sweep_truncate AFTER TRUNCATE ON device_cadence FOR EACH STATEMENT
    EXECUTE FUNCTION avl_sweep_forget();
