-- Sandboxes, their lifecycle events (the outbox) and idempotency keys.
-- Times are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE sandboxes (
    id               TEXT PRIMARY KEY NOT NULL,       -- sbx_<ULID>
    profile          TEXT NOT NULL,
    profile_version  INTEGER NOT NULL,
    extension        TEXT NOT NULL,
    host             TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('requested','provisioning','ready','active','destroying','destroyed','failed','expired')),
    actor_type       TEXT NOT NULL,
    actor            TEXT NOT NULL,
    project          TEXT NOT NULL,
    inputs           TEXT NOT NULL DEFAULT '{}',       -- JSON object
    labels           TEXT NOT NULL DEFAULT '{}',       -- JSON object
    generation       INTEGER NOT NULL DEFAULT 1,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    ready_at         INTEGER,
    expires_at       INTEGER NOT NULL,
    max_expires_at   INTEGER NOT NULL,                 -- created_at + ttl.max: the hard ceiling
    destroyed_at     INTEGER,
    last_activity_at INTEGER NOT NULL,
    reachability     TEXT,                             -- JSON, set when ready
    backend_state    TEXT,                             -- JSON, the extension's handle
    failure_code     TEXT,
    failure_message  TEXT,
    estimate_credits INTEGER NOT NULL DEFAULT 0,
    accrued_credits  INTEGER NOT NULL DEFAULT 0,
    CHECK (expires_at <= max_expires_at)
);

CREATE INDEX sandboxes_project_id ON sandboxes (project, id);
CREATE INDEX sandboxes_state_id ON sandboxes (state, id);
-- The reaper's sweep: live rows by expiry.
CREATE INDEX sandboxes_live_expiry ON sandboxes (expires_at)
    WHERE state IN ('requested','provisioning','ready','active');

-- Every transition, appended in the same transaction as the state change.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,                 -- evt_<ULID>
    sandbox_id   TEXT NOT NULL REFERENCES sandboxes (id),
    generation   INTEGER NOT NULL,
    from_state   TEXT,
    to_state     TEXT NOT NULL,
    reason       TEXT NOT NULL,
    at           INTEGER NOT NULL,
    delivered_at INTEGER
);

CREATE INDEX events_sandbox ON events (sandbox_id, seq);

-- Idempotency-Key of creates, per project.
CREATE TABLE idempotency_keys (
    project      TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    sandbox_id   TEXT NOT NULL REFERENCES sandboxes (id),
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (project, key)
);
