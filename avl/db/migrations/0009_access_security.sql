-- Access hardening: one email normalisation for lookups and login throttling, login throttle
-- counters shared by every API process, single-use live-stream tickets, sessions told apart
-- from API tokens, and a NOTIFY on every change that can end someone's access, so open live
-- streams are closed by whichever process made the change (API, `avl` CLI, a billing job).

-- The login key of an email: NFKC + casefold, computed by the application (avl.admin.email_key).
-- Rows written without it (plain SQL) get the nearest SQL equivalent from the trigger below.
ALTER TABLE users ADD COLUMN email_key text;
UPDATE users SET email_key = lower(normalize(email, NFKC));
ALTER TABLE users ALTER COLUMN email_key SET NOT NULL;
CREATE UNIQUE INDEX users_email_key_key ON users (email_key);

CREATE FUNCTION avl_user_email_key() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.email_key IS NULL OR (TG_OP = 'UPDATE' AND NEW.email IS DISTINCT FROM OLD.email
                                 AND NEW.email_key IS NOT DISTINCT FROM OLD.email_key) THEN
        NEW.email_key := lower(normalize(NEW.email, NFKC));
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER users_email_key BEFORE INSERT OR UPDATE OF email, email_key ON users
    FOR EACH ROW EXECUTE FUNCTION avl_user_email_key();

-- A console session (from POST /auth/login) or an API token (issued by an admin).
ALTER TABLE api_tokens ADD COLUMN kind text NOT NULL DEFAULT 'api' CHECK (kind IN ('api', 'session'));
UPDATE api_tokens SET kind = 'session' WHERE name = 'session';
-- why it was revoked: logout, password_change, deactivated, admin
ALTER TABLE api_tokens ADD COLUMN revoked_reason text;
CREATE INDEX api_tokens_user_idx ON api_tokens (user_id) WHERE revoked_at IS NULL;

-- Failed console logins, per key: 'addr <address>' and 'login <email key> <address>'.
-- Updated with one atomic upsert per attempt, so concurrent attempts cannot overrun a limit.
CREATE TABLE login_throttle (
    key             text PRIMARY KEY,
    failures        integer NOT NULL,
    last_failure_at timestamptz NOT NULL,
    blocked_until   timestamptz
);
CREATE INDEX login_throttle_age_idx ON login_throttle (last_failure_at);

-- Single-use tickets for opening the live stream (a token in a URL ends up in proxy logs).
CREATE TABLE live_tickets (
    ticket_hash     bytea PRIMARY KEY,
    token_id        bigint NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    expires_at      timestamptz NOT NULL
);
CREATE INDEX live_tickets_expiry_idx ON live_tickets (expires_at);

-- NOTIFY avl_access '{"tokens": [id]}' | '{"users": [id]}' | '{"accounts": [id]}' when a change
-- can end access; delivered at commit. The live hub re-checks the streams concerned.
CREATE FUNCTION avl_notify_access() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    row_id bigint := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
BEGIN
    PERFORM pg_notify('avl_access', json_build_object(TG_ARGV[0], json_build_array(row_id))::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_tokens_access AFTER UPDATE OF revoked_at, expires_at, user_id, kind ON api_tokens
    FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
                       OR OLD.user_id IS DISTINCT FROM NEW.user_id OR OLD.kind IS DISTINCT FROM NEW.kind)
    EXECUTE FUNCTION avl_notify_access('tokens');
CREATE TRIGGER api_tokens_access_delete AFTER DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION avl_notify_access('tokens');

CREATE TRIGGER users_access AFTER UPDATE OF active, role, account_id, installation_center_id, password_hash,
                                            must_change_password ON users
    FOR EACH ROW WHEN (OLD.active IS DISTINCT FROM NEW.active OR OLD.role IS DISTINCT FROM NEW.role
                       OR OLD.account_id IS DISTINCT FROM NEW.account_id
                       OR OLD.installation_center_id IS DISTINCT FROM NEW.installation_center_id
                       OR OLD.password_hash IS DISTINCT FROM NEW.password_hash
                       OR OLD.must_change_password IS DISTINCT FROM NEW.must_change_password)
    EXECUTE FUNCTION avl_notify_access('users');
CREATE TRIGGER users_access_delete AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION avl_notify_access('users');

CREATE TRIGGER accounts_access AFTER UPDATE OF status ON accounts
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION avl_notify_access('accounts');
