-- The support desk's ticket lifecycle (diagnostics/tickets.py, api/routes/support.py,
-- api/routes/client_tickets.py): the intake, who works a ticket, the 24 h rule to inform the
-- customer, the 7-day deadline to bring the vehicle in (with one reminder), and the checklist
-- run that decides a field-service ticket's resolution. Centers get their opening hours.

ALTER TABLE installation_centers ADD COLUMN hours text;  -- e.g. 'Lu-Vi 8:00-17:00, Sa 8:00-12:00'

ALTER TABLE tickets
    -- Intake, as the support seeds list it: who reported the fault and through which channel
    -- (*626 is the customer line, *FLOTA the sales consultant's), the product, quantity, the
    -- purchase or installation date, the fault as told, and the resolution the customer asks for.
    -- The checklist's own tickets come through 'system'.
    ADD COLUMN intake_channel text NOT NULL DEFAULT 'system'
        CHECK (intake_channel IN ('customer_line', 'consultant_line', 'phone', 'email', 'whatsapp', 'sms', 'web',
                                  'system')),
    ADD COLUMN reported_by text,
    ADD COLUMN product_model text,
    ADD COLUMN quantity integer NOT NULL DEFAULT 1 CHECK (quantity BETWEEN 1 AND 100000),
    ADD COLUMN purchase_date date,
    ADD COLUMN fault_reason text,
    ADD COLUMN requested_resolution text
        CHECK (requested_resolution IN ('repair', 'replacement', 'remote_fix', 'information', 'other')),
    -- Who works it: a queue, and within it possibly one support agent.
    ADD COLUMN queue text NOT NULL DEFAULT 'desk'
        CHECK (queue IN ('desk', 'technical', 'field_service', 'carrier', 'platform')),
    ADD COLUMN assignee_id bigint REFERENCES users (id),
    ADD COLUMN assigned_at timestamptz,
    -- The customer is told what is happening within 24 h of the opening (or a reopening).
    ADD COLUMN inform_due_at timestamptz,
    ADD COLUMN customer_informed_at timestamptz,
    -- Field service: the customer brings the vehicle to a center within 7 days of the diagnosis;
    -- one reminder by SMS before the deadline (reminded_at), the center the case named.
    ADD COLUMN bring_in_due_at timestamptz,
    ADD COLUMN brought_in_at timestamptz,
    ADD COLUMN reminded_at timestamptz,
    ADD COLUMN center_id bigint REFERENCES installation_centers (id),
    -- The checklist run asked for to resolve a field-service ticket (resolved only if healthy).
    ADD COLUMN resolution_run_id bigint REFERENCES diagnostic_runs (id);

-- Tickets opened before: their queue from their type, the 24 h rule from their opening (a
-- person's first action is the best record there is of the customer being told).
UPDATE tickets SET
    queue = CASE WHEN type = 'field_service' THEN 'field_service' WHEN type = 'platform' THEN 'platform'
                 WHEN category = 'line_fault' THEN 'carrier' WHEN type = 'technical' THEN 'technical' ELSE 'desk' END,
    inform_due_at = opened_at + interval '24 hours',
    customer_informed_at = first_response_at;

-- What the support agent spoke to and what the customer was told: the activity's only part a
-- client sees (never the internal reason, notes or pending work). Telling the customer
-- something meets the 24 h rule.
ALTER TABLE ticket_activities
    ADD COLUMN contact text,
    ADD COLUMN customer_message text;

-- The support desk's SLA views and the worker's reminder sweep.
CREATE INDEX tickets_inform_due_idx ON tickets (inform_due_at)
    WHERE customer_informed_at IS NULL AND state NOT IN ('resolved', 'closed');
CREATE INDEX tickets_bring_in_due_idx ON tickets (bring_in_due_at)
    WHERE brought_in_at IS NULL AND state NOT IN ('resolved', 'closed');
CREATE INDEX tickets_assignee_idx ON tickets (assignee_id, state) WHERE assignee_id IS NOT NULL;
CREATE INDEX tickets_queue_idx ON tickets (queue, state);
