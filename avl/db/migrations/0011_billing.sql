-- Billing and the account lifecycle as the service runs them (avl/billing.py): the pre-paid ledger,
-- the billing system's events, an audit trail of every change of an account's state, why each
-- terminal's line is suspended, and "Solicitud de Posición" billed once, when a position answers it.
--
-- The mechanics are functions here so that every writer applies them alike and atomically: the API,
-- the `avl` command, the billing system's calls, and ingest's writer (a report answering a locate-now
-- request is billed in the transaction that stores it). The rules a person can be refused by, with
-- their messages, are in avl/billing.py.

-- Why an account is in its state: suspended for non_payment | no_balance (pre-paid at zero) |
-- administrative; retired voluntary | non_payment | by_payment (the procedure's retirement kinds).
ALTER TABLE accounts ADD COLUMN status_cause text
    CHECK (status_cause IN ('non_payment', 'no_balance', 'administrative', 'voluntary', 'by_payment'));
UPDATE accounts SET status_cause = 'non_payment' WHERE status = 'suspended';

-- Why a line is suspended: on its own ('line': the carrier, an administrator) or by its account's
-- suspension or retirement ('account'). Reconnecting the account restores only the latter.
ALTER TABLE devices ADD COLUMN line_suspended_by text CHECK (line_suspended_by IN ('line', 'account'));
UPDATE devices d SET line_suspended_by = CASE WHEN a.status IN ('suspended', 'retired') THEN 'account' ELSE 'line' END
    FROM accounts a WHERE a.id = d.account_id AND d.line_status = 'suspended';
UPDATE devices SET line_suspended_by = 'line' WHERE line_status = 'suspended' AND line_suspended_by IS NULL;
ALTER TABLE devices ADD CONSTRAINT devices_line_suspension
    CHECK ((line_status = 'active') = (line_suspended_by IS NULL));

-- Whoever writes line_status without saying why (the admin API's device PATCH, plain SQL) suspends the
-- line on its own account: it stays suspended when the account is reconnected.
CREATE FUNCTION avl_line_suspension() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.line_status = 'active' THEN
        NEW.line_suspended_by := NULL;
    ELSIF TG_OP = 'INSERT' THEN
        NEW.line_suspended_by := coalesce(NEW.line_suspended_by, 'line');
    ELSIF NEW.line_suspended_by IS NULL OR NEW.line_suspended_by IS NOT DISTINCT FROM OLD.line_suspended_by THEN
        NEW.line_suspended_by := 'line';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER devices_line_suspension BEFORE INSERT OR UPDATE OF line_status, line_suspended_by ON devices
    FOR EACH ROW EXECUTE FUNCTION avl_line_suspension();

-- A machine role: the billing system's token may post its events and nothing else.
ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('client', 'support', 'installer', 'admin', 'billing'));

-- The pre-paid balance's movements: accounts.balance is always the last balance_after. amount is
-- signed (a top-up adds, a debit takes); reference makes a movement idempotent per account (the
-- billing system's reference, `locate:<request id>` for a locate-now debit).
CREATE TABLE account_ledger (
    id              bigserial PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind            text NOT NULL CHECK (kind IN ('topup', 'debit', 'adjustment')),
    amount          numeric(12, 2) NOT NULL CHECK (amount <> 0),
    balance_after   numeric(12, 2) NOT NULL,
    reference       text,
    reason          text,
    -- who or what: 'admin ana@x', 'billing xpert@x', 'cli root', 'system'
    actor           text NOT NULL,
    via             text NOT NULL CHECK (via IN ('api', 'cli', 'billing', 'system')),
    CHECK (kind <> 'topup' OR amount > 0),
    CHECK (kind <> 'debit' OR amount < 0)
);
CREATE UNIQUE INDEX account_ledger_reference_key ON account_ledger (account_id, reference) WHERE reference IS NOT NULL;
CREATE INDEX account_ledger_account_idx ON account_ledger (account_id, id DESC);

-- Every change of an account's state: from, to, why (cause: the machine's; reason: the person's
-- words), who or what, through which door, the reference it came with (the billing system's, the
-- signed letter's, the ledger entry's) and what it did (lines, cancelled SMS, closed tickets...).
CREATE TABLE account_status_changes (
    id              bigserial PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    from_status     text NOT NULL,
    to_status       text NOT NULL,
    -- suspension/retirement causes as accounts.status_cause; reconnection: payment | topup | administrative
    cause           text,
    reason          text,
    actor           text NOT NULL,
    via             text NOT NULL CHECK (via IN ('api', 'cli', 'billing', 'system')),
    reference       text,
    details         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX account_status_changes_account_idx ON account_status_changes (account_id, id DESC);

-- What the billing system told us, once per reference: a replay answers what the first call did.
CREATE TABLE billing_system_events (
    reference       text PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('topup', 'payment_overdue', 'payment_received', 'retirement')),
    account_id      bigint NOT NULL REFERENCES accounts (id),
    amount          numeric(12, 2),
    retirement_kind text,
    note            text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    received_by     text NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('applied', 'unchanged')),
    detail          text NOT NULL,
    ledger_id       bigint REFERENCES account_ledger (id),
    status_change_id bigint REFERENCES account_status_changes (id)
);
CREATE INDEX billing_system_events_account_idx ON billing_system_events (account_id, received_at DESC);

-- An account created with a balance: its opening movement, so the ledger adds up to the balance.
CREATE FUNCTION avl_opening_balance() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_ledger (account_id, kind, amount, balance_after, reason, actor, via)
        VALUES (NEW.id, 'adjustment', NEW.balance, NEW.balance, 'opening balance', 'account creation', 'system');
    RETURN NULL;
END
$$;
CREATE TRIGGER accounts_opening_balance AFTER INSERT ON accounts
    FOR EACH ROW WHEN (NEW.balance <> 0) EXECUTE FUNCTION avl_opening_balance();

-- Locate-now: the price quoted when asked (NULL: not billable), until when a report answers it, and
-- what answered it. Answered = a position that arrived after the command SMS was delivered (its
-- DELIVRD receipt, or the terminal's SMS answer, which proves delivery) and before answer_by.
ALTER TABLE locate_requests
    ADD COLUMN price numeric(12, 2) CHECK (price >= 0),
    ADD COLUMN answer_by timestamptz,
    ADD COLUMN delivered_at timestamptz,
    ADD COLUMN answer_fix_time timestamptz,
    ADD COLUMN cancelled_at timestamptz,
    ADD COLUMN cancel_reason text;
UPDATE locate_requests SET answer_by = requested_at + interval '10 minutes';
ALTER TABLE locate_requests ALTER COLUMN answer_by SET NOT NULL,
    ALTER COLUMN answer_by SET DEFAULT clock_timestamp() + interval '10 minutes';
CREATE INDEX locate_requests_open_idx ON locate_requests (answer_by) WHERE answered_at IS NULL AND cancelled_at IS NULL;

-- A billable event is recorded when the action is delivered (a locate-now: when answered), once.
ALTER TABLE billable_events
    ADD COLUMN amount numeric(12, 2),
    ADD COLUMN ledger_id bigint REFERENCES account_ledger (id);
CREATE UNIQUE INDEX billable_events_once ON billable_events (kind, reference_id);

-- Changes an account's state and records it; returns the account_status_changes id. The caller has
-- checked the rules (avl/billing.py). Suspension and retirement suspend the account's active lines
-- (remembered as the account's doing); reconnection reactivates exactly those. Retirement also
-- cancels what is queued (SMS, locate-now requests: never sent, never billed), closes open tickets
-- with a note (p_note) and revokes every token and session of the account's users: their live
-- streams close through the avl_access NOTIFY (0009). The data is kept.
CREATE FUNCTION avl_account_transition(p_account bigint, p_status text, p_cause text, p_reason text, p_actor text,
                                       p_via text, p_reference text, p_details jsonb, p_note text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    acc accounts%ROWTYPE;
    details jsonb := coalesce(p_details, '{}');
    n integer;
    closed bigint[];
    change_id bigint;
BEGIN
    SELECT * INTO acc FROM accounts WHERE id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % not found', p_account;
    END IF;
    IF acc.status = 'retired' THEN
        RAISE EXCEPTION 'account % is retired', p_account;
    END IF;
    UPDATE accounts SET status = p_status, status_cause = CASE WHEN p_status = 'active' THEN NULL ELSE p_cause END,
                        status_reason = CASE WHEN p_status = 'active' THEN NULL ELSE p_reason END,
                        status_changed_at = now()
        WHERE id = p_account;
    IF p_status = 'active' THEN
        UPDATE devices SET line_status = 'active', line_suspended_by = NULL
            WHERE account_id = p_account AND line_suspended_by = 'account';
        GET DIAGNOSTICS n = ROW_COUNT;
        details := details || jsonb_build_object('lines_reactivated', n);
    ELSE
        UPDATE devices SET line_status = 'suspended', line_suspended_by = 'account'
            WHERE account_id = p_account AND line_status = 'active';
        GET DIAGNOSTICS n = ROW_COUNT;
        details := details || jsonb_build_object('lines_suspended', n);
    END IF;
    IF p_status = 'retired' THEN
        UPDATE sms_messages SET status = 'cancelled', error = 'account retired'
            WHERE direction = 'mt' AND status = 'queued'
              AND device_id IN (SELECT id FROM devices WHERE account_id = p_account);
        GET DIAGNOSTICS n = ROW_COUNT;
        details := details || jsonb_build_object('sms_cancelled', n);
        UPDATE locate_requests SET cancelled_at = now(), cancel_reason = 'account retired'
            WHERE account_id = p_account AND answered_at IS NULL AND cancelled_at IS NULL;
        GET DIAGNOSTICS n = ROW_COUNT;
        details := details || jsonb_build_object('locates_cancelled', n);
        WITH closing AS (
            UPDATE tickets SET state = 'closed', closed_at = now()
                WHERE (account_id = p_account OR device_id IN (SELECT id FROM devices WHERE account_id = p_account))
                  AND state NOT IN ('resolved', 'closed')
                RETURNING id
        ), noted AS (
            INSERT INTO ticket_activities (ticket_id, who, channel, reason, solution, notes)
                SELECT id, p_actor, 'system', 'account retired', 'closed: service retired', p_note FROM closing
                RETURNING ticket_id
        )
        SELECT coalesce(array_agg(ticket_id ORDER BY ticket_id), '{}') INTO closed FROM noted;
        details := details || jsonb_build_object('tickets_closed', to_jsonb(closed));
        UPDATE api_tokens SET revoked_at = now(), revoked_reason = 'account_retired'
            WHERE revoked_at IS NULL AND user_id IN (SELECT id FROM users WHERE account_id = p_account);
        GET DIAGNOSTICS n = ROW_COUNT;
        details := details || jsonb_build_object('tokens_revoked', n);
    END IF;
    INSERT INTO account_status_changes (account_id, from_status, to_status, cause, reason, actor, via, reference, details)
        VALUES (p_account, acc.status, p_status, p_cause, p_reason, p_actor, p_via, p_reference, details)
        RETURNING id INTO change_id;
    RETURN change_id;
END
$$;

-- Posts a movement to an account's ledger and moves its balance; a movement whose reference the
-- account already has is not posted again (replayed: true, entry_id: the first one). A pre-paid
-- account is suspended (no_balance) when a movement takes its balance to zero or below, and
-- reconnected when a movement brings it back above zero after such a suspension.
CREATE FUNCTION avl_ledger_post(p_account bigint, p_kind text, p_amount numeric, p_reference text, p_reason text,
                                p_actor text, p_via text,
                                OUT entry_id bigint, OUT replayed boolean, OUT status_change_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    acc accounts%ROWTYPE;
    balance_now numeric(12, 2);
BEGIN
    SELECT * INTO acc FROM accounts WHERE id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % not found', p_account;
    END IF;
    replayed := false;
    IF p_reference IS NOT NULL THEN
        SELECT id INTO entry_id FROM account_ledger WHERE account_id = p_account AND reference = p_reference;
        IF FOUND THEN
            replayed := true;
            RETURN;
        END IF;
    END IF;
    balance_now := acc.balance + p_amount;
    UPDATE accounts SET balance = balance_now WHERE id = p_account;
    INSERT INTO account_ledger (account_id, kind, amount, balance_after, reference, reason, actor, via)
        VALUES (p_account, p_kind, p_amount, balance_now, p_reference, p_reason, p_actor, p_via)
        RETURNING id INTO entry_id;
    IF acc.billing = 'pre_paid' THEN
        IF p_amount < 0 AND balance_now <= 0 AND acc.status = 'active' THEN
            status_change_id := avl_account_transition(p_account, 'suspended', 'no_balance', 'pre-paid balance exhausted',
                                                       'system', 'system', 'ledger:' || entry_id, '{}', NULL);
        ELSIF p_amount > 0 AND balance_now > 0 AND acc.status = 'suspended' AND acc.status_cause = 'no_balance' THEN
            status_change_id := avl_account_transition(p_account, 'active', 'topup', 'pre-paid balance topped up',
                                                       p_actor, p_via, 'ledger:' || entry_id, '{}', NULL);
        END IF;
    END IF;
END
$$;

-- Settles the locate-now requests a position has answered (of one account, or all): each once,
-- recording what answered it and, when billable, the billable event and (pre-paid) the debit at the
-- price quoted. p_nowait: give up at once on an account another transaction is changing (ingest's
-- writer must not wait on a person's transaction; the next report or look settles it).
CREATE FUNCTION avl_settle_locates(p_account bigint, p_nowait boolean DEFAULT false) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    settled integer := 0;
    event_id bigint;
    posted record;
BEGIN
    FOR r IN
        SELECT q.id, q.account_id, q.device_id, q.billable, q.price, q.requested_by, l.received_at, l.fix_time,
               w.delivered_at
        FROM locate_requests q
        JOIN latest_positions l ON l.device_id = q.device_id
        LEFT JOIN sms_messages m ON m.id = q.sms_id
        CROSS JOIN LATERAL (SELECT least(m.delivered_at,
                                         (SELECT min(mo.created_at) FROM sms_messages mo
                                          WHERE mo.device_id = q.device_id AND mo.direction = 'mo'
                                            AND mo.created_at >= q.requested_at)) AS delivered_at) w
        WHERE q.answered_at IS NULL AND q.cancelled_at IS NULL AND q.answer_by > now() - interval '1 day'
          AND (p_account IS NULL OR q.account_id = p_account)
          AND l.received_at > w.delivered_at AND l.received_at <= q.answer_by
        ORDER BY q.id
        FOR UPDATE OF q SKIP LOCKED
    LOOP
        IF p_nowait AND r.billable THEN
            PERFORM 1 FROM accounts WHERE id = r.account_id FOR UPDATE NOWAIT;
        END IF;
        UPDATE locate_requests SET answered_at = r.received_at, delivered_at = r.delivered_at, answer_fix_time = r.fix_time
            WHERE id = r.id;
        IF r.billable THEN
            event_id := NULL;
            INSERT INTO billable_events (account_id, device_id, kind, reference_id, requested_by, occurred_at, amount)
                VALUES (r.account_id, r.device_id, 'locate_request', r.id, r.requested_by, r.received_at, r.price)
                ON CONFLICT (kind, reference_id) DO NOTHING
                RETURNING id INTO event_id;
            IF event_id IS NOT NULL AND coalesce(r.price, 0) > 0
               AND (SELECT billing FROM accounts WHERE id = r.account_id) = 'pre_paid' THEN
                SELECT * INTO posted FROM avl_ledger_post(r.account_id, 'debit', -r.price, 'locate:' || r.id,
                                                          'locate-now request ' || r.id || ' answered', 'system', 'system');
                UPDATE billable_events SET ledger_id = posted.entry_id WHERE id = event_id;
            END IF;
        END IF;
        settled := settled + 1;
    END LOOP;
    RETURN settled;
END
$$;

-- Settled as the answer is stored: after each statement that moves a latest position or records an
-- SMS delivery or answer, when some request is waiting (one indexed look otherwise). A failure here
-- never fails the report's transaction: the request is settled at the next report or look.
CREATE FUNCTION avl_locate_answers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM locate_requests WHERE answered_at IS NULL AND cancelled_at IS NULL AND answer_by > now()) THEN
        BEGIN
            PERFORM avl_settle_locates(NULL, true);
        EXCEPTION
            WHEN lock_not_available THEN
                NULL;
            WHEN OTHERS THEN
                RAISE WARNING 'avl: locate-now answers not settled now (%); settled at the next report or look', SQLERRM;
        END;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER latest_positions_locate_answers AFTER INSERT OR UPDATE OF received_at ON latest_positions
    FOR EACH STATEMENT EXECUTE FUNCTION avl_locate_answers();
CREATE TRIGGER sms_messages_locate_answers AFTER INSERT OR UPDATE OF delivered_at ON sms_messages
    FOR EACH STATEMENT EXECUTE FUNCTION avl_locate_answers();
