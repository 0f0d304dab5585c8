-- Every mutating request: who, what, which sandbox, outcome. Append-only.
CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor_type  TEXT NOT NULL,
    actor       TEXT NOT NULL,
    project     TEXT NOT NULL,
    role        TEXT NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    sandbox_id  TEXT,
    status      INTEGER NOT NULL,
    code        TEXT
);

CREATE INDEX audit_project ON audit (project, seq);
CREATE INDEX audit_sandbox ON audit (sandbox_id, seq);

CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
