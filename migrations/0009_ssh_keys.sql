-- Public keys that may open SSH sessions into a sandbox through the
-- daemon's SSH gateway (user = the sandbox id). Gone with the sandbox row.
CREATE TABLE sandbox_ssh_keys (
    sandbox_id  TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (sandbox_id, fingerprint)
) WITHOUT ROWID;
