-- Reports without a time of their own (an H02 report with an empty time field, an OsmAnd request
-- without `timestamp`, a command result, a heartbeat) get their arrival time as fix time, so the
-- unique keys of positions, device_events and positions_quarantine cannot tell a resend of the same
-- frame from a new report. The writer records here, per device, a digest of each such frame (and of
-- the record's place in it) with its first arrival, and gives a resend within AVL_DUPLICATE_WINDOW_S
-- that first arrival's time: the unique keys then absorb it. Rows older than the window are deleted
-- by the ingest service's upkeep; shared by every ingest process, so a device that reconnects to
-- another one is recognised too.
CREATE TABLE recent_frames (
    device_id   bigint NOT NULL,
    digest      bytea NOT NULL,
    first_at    timestamptz NOT NULL,
    PRIMARY KEY (device_id, digest)
);
CREATE INDEX recent_frames_first_at_idx ON recent_frames (first_at);
