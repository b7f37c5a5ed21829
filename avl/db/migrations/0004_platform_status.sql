-- Each running service reports its health here every few seconds; the diagnostics
-- checklist's "platform health" step reads it (ingest alive and keeping up, spool, queue).
CREATE TABLE platform_status (
    component       text NOT NULL,          -- ingest | diagnostics | api
    instance        text NOT NULL,          -- host:pid
    updated_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz NOT NULL DEFAULT now(),
    details         jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (component, instance)
);

-- SMS pings: at most one per device per period, found by this index.
CREATE INDEX sms_messages_device_idx ON sms_messages (device_id, created_at DESC);

-- The SMS outbox: the API (locate now, certification) queues MT messages here with a
-- purpose; the diagnostics worker, which holds the SMPP bind, sends them and records
-- receipts and the terminals' replies (direction 'mo', device_id set).
ALTER TABLE sms_messages ADD COLUMN purpose text NOT NULL DEFAULT 'ping'
    CHECK (purpose IN ('ping', 'notice', 'locate', 'certification', 'reply'));
CREATE INDEX sms_messages_queued_idx ON sms_messages (id) WHERE status = 'queued';
