-- The installation lifecycle after registration (api/routes/installers.py): the Engineering
-- Unit's review of 24 V vehicles and motorcycles, the customer's own check at sign-off, the
-- proof of purchase and the warranty findings, and the replacement of a terminal on a vehicle
-- with the old one returned under an RMA, the vehicle's history continuing across terminals.

-- Proof of purchase: the dead-on-arrival window also counts from the purchase date, which
-- counts only with the purchase document's reference (invoice or receipt number).
ALTER TABLE devices
    ADD COLUMN purchased_at date,
    ADD COLUMN proof_of_purchase text,
    ADD CONSTRAINT devices_purchase_proof CHECK (purchased_at IS NULL OR proof_of_purchase IS NOT NULL);

-- 24 V trucks and motorcycles are restricted installations: the Engineering Unit reviews them
-- (seed 004) before a certification may start. A decision is kept with who took it and why.
CREATE TABLE engineering_reviews (
    id              bigserial PRIMARY KEY,
    vehicle_id      bigint NOT NULL REFERENCES vehicles (id),
    -- the terminal whose installation asked for it
    device_id       bigint REFERENCES devices (id),
    -- why: 'supply_24v', 'motorcycle'
    reasons         text[] NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'approved', 'rejected')),
    requested_at    timestamptz NOT NULL DEFAULT now(),
    requested_by    bigint REFERENCES users (id),
    request_note    text,
    decided_at      timestamptz,
    decided_by      bigint REFERENCES users (id),
    decision_note   text,
    CHECK ((state = 'pending') = (decided_at IS NULL))
);
CREATE UNIQUE INDEX engineering_reviews_one_pending ON engineering_reviews (vehicle_id) WHERE state = 'pending';
CREATE INDEX engineering_reviews_vehicle_idx ON engineering_reviews (vehicle_id, requested_at DESC);
CREATE INDEX engineering_reviews_state_idx ON engineering_reviews (state, requested_at);

-- Sign-off: the customer's own test of the web platform (seed 004, step 12: they saw the
-- vehicle report on the map), and how many console sessions of the account's client users
-- were ended so that the password is changed at the next login.
ALTER TABLE certifications
    ADD COLUMN customer_saw_vehicle boolean,
    ADD COLUMN customer_check_note text,
    ADD COLUMN customer_checked_at timestamptz,
    ADD COLUMN client_sessions_revoked integer;

-- The installer's inspection of a terminal brought in with a fault: the findings that void
-- the warranty and the warranty outcome they and the dates gave at the time.
CREATE TABLE terminal_inspections (
    id                      bigserial PRIMARY KEY,
    device_id               bigint NOT NULL REFERENCES devices (id),
    installation_center_id  bigint NOT NULL REFERENCES installation_centers (id),
    inspected_by            bigint REFERENCES users (id),
    inspected_at            timestamptz NOT NULL DEFAULT now(),
    ticket_id               bigint REFERENCES tickets (id),
    -- the day the fault was reported (the ticket's opening day when there is one)
    fault_reported_on       date NOT NULL,
    physical_damage         boolean NOT NULL DEFAULT false,
    unauthorised_repair     boolean NOT NULL DEFAULT false,
    transport_damage        boolean NOT NULL DEFAULT false,
    notes                   text,
    warranty                text NOT NULL CHECK (warranty IN ('dead_on_arrival', 'warranty_repair', 'void', 'unknown')),
    -- which date the dead-on-arrival window counted from: 'purchase' or 'installation'
    warranty_basis          text CHECK (warranty_basis IN ('purchase', 'installation')),
    warranty_detail         text NOT NULL
);
CREATE INDEX terminal_inspections_device_idx ON terminal_inspections (device_id, inspected_at DESC);

-- A terminal swapped for another on the same vehicle. The old terminal leaves the account's
-- fleet (no account, no vehicle, line suspended) and goes back under an RMA; the vehicle's
-- history is the old terminal's reports before swapped_at and the new one's from then on.
CREATE TABLE terminal_replacements (
    id                      bigserial PRIMARY KEY,
    vehicle_id              bigint NOT NULL REFERENCES vehicles (id),
    account_id              bigint NOT NULL REFERENCES accounts (id),
    old_device_id           bigint NOT NULL UNIQUE REFERENCES devices (id),
    new_device_id           bigint NOT NULL UNIQUE REFERENCES devices (id),
    swapped_at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    installation_center_id  bigint NOT NULL REFERENCES installation_centers (id),
    replaced_by             bigint REFERENCES users (id),
    inspection_id           bigint NOT NULL REFERENCES terminal_inspections (id),
    ticket_id               bigint REFERENCES tickets (id),
    rma_state               text NOT NULL DEFAULT 'returned'
                            CHECK (rma_state IN ('returned', 'in_repair', 'replaced', 'scrapped')),
    rma_updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (old_device_id <> new_device_id)
);
CREATE INDEX terminal_replacements_vehicle_idx ON terminal_replacements (vehicle_id, swapped_at);

-- Every RMA state the returned terminal went through, with who set it and why.
CREATE TABLE rma_events (
    id              bigserial PRIMARY KEY,
    replacement_id  bigint NOT NULL REFERENCES terminal_replacements (id),
    at              timestamptz NOT NULL DEFAULT now(),
    state           text NOT NULL CHECK (state IN ('returned', 'in_repair', 'replaced', 'scrapped')),
    set_by          bigint REFERENCES users (id),
    note            text
);
CREATE INDEX rma_events_replacement_idx ON rma_events (replacement_id, at);
