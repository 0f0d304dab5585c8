-- Credits (issue 6): an append-only ledger, a cached balance per project
-- kept in step in the same transaction as every ledger row, and what each
-- sandbox is charged at and how its use was settled.
-- Amounts are whole credits, never negative; the kind says which way they
-- move: balance = grants + refunds - debits, reserved = reserves - releases.
-- Times are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE ledger (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,  -- order (newest first = highest)
    id              TEXT NOT NULL UNIQUE,               -- led_<ULID>
    project         TEXT NOT NULL,
    sandbox_id      TEXT,                               -- NULL for grants
    generation      INTEGER,                            -- the sandbox generation it is about
    kind            TEXT NOT NULL CHECK (kind IN ('grant','reserve','release','debit','refund')),
    amount          INTEGER NOT NULL CHECK (typeof(amount) = 'integer' AND amount >= 0),
    reason          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,               -- writing a key twice records it once
    created_at      INTEGER NOT NULL
);

CREATE INDEX ledger_project ON ledger (project, seq);
CREATE INDEX ledger_sandbox ON ledger (sandbox_id, generation) WHERE sandbox_id IS NOT NULL;
CREATE INDEX ledger_debits ON ledger (created_at) WHERE kind = 'debit';

CREATE TRIGGER ledger_append_only_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger rows are append-only'); END;
CREATE TRIGGER ledger_append_only_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger rows are append-only'); END;

-- The cache of the sums above, one row per project.
CREATE TABLE balances (
    project    TEXT PRIMARY KEY NOT NULL,
    balance    INTEGER NOT NULL DEFAULT 0 CHECK (typeof(balance) = 'integer'),
    reserved   INTEGER NOT NULL DEFAULT 0 CHECK (typeof(reserved) = 'integer' AND reserved >= 0),
    updated_at INTEGER NOT NULL
);

-- Hundredths of a credit per hour of running time: the extension's
-- credits_per_hour times the profile's price_factor_percent, fixed at create
-- (and at a failover), so a catalog change never reprices a running sandbox.
ALTER TABLE sandboxes ADD COLUMN rate_centicredits INTEGER NOT NULL DEFAULT 0;
-- When this generation stopped being usable (destroy, expiry, failure): billing ends.
ALTER TABLE sandboxes ADD COLUMN ended_at INTEGER;
-- When this generation's use was settled (final debit, rest released).
ALTER TABLE sandboxes ADD COLUMN settled_at INTEGER;
-- The router's decision (JSON) for profiles that route over candidates.
ALTER TABLE sandboxes ADD COLUMN route TEXT;

-- Rows of an earlier version carry no charges: nothing to settle.
UPDATE sandboxes SET settled_at = updated_at, ended_at = COALESCE(destroyed_at, updated_at)
    WHERE state NOT IN ('requested','provisioning','ready','active');

-- The metering ticker's settlement sweep: ended generations not settled yet.
CREATE INDEX sandboxes_unsettled ON sandboxes (id)
    WHERE settled_at IS NULL AND state IN ('destroying','expired','destroyed','failed');
