-- Device retransmissions and spool replays must not duplicate status events or
-- quarantined reports either (positions already have their unique key).
CREATE UNIQUE INDEX device_events_once ON device_events (device_id, time, kind);
CREATE UNIQUE INDEX positions_quarantine_once ON positions_quarantine (device_id, fix_time, reason);
