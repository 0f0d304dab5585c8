-- Snapshots: content-addressed archives of a sandbox's workspace, stored as
-- files `<data_dir>/snapshots/<sha256>`. A row outlives its sandbox (forks
-- from the snapshot of a destroyed sandbox work until it is deleted), so it
-- copies what it needs of the sandbox instead of leaning on a foreign key.
-- Times are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE snapshots (
    id                 TEXT PRIMARY KEY NOT NULL,     -- snap_<ULID>
    sandbox_id         TEXT NOT NULL,
    sandbox_generation INTEGER NOT NULL,
    profile            TEXT NOT NULL,
    profile_version    INTEGER NOT NULL,
    extension          TEXT NOT NULL,
    host               TEXT NOT NULL,
    project            TEXT NOT NULL,
    label              TEXT,
    state              TEXT NOT NULL CHECK (state IN ('creating','ready','failed','deleted')),
    size_bytes         INTEGER,                       -- the stored (compressed) archive
    content_bytes      INTEGER,                       -- the archive before compression
    sha256             TEXT,                          -- hex; the blob's name once ready
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    ready_at           INTEGER,
    expires_at         INTEGER NOT NULL,
    deleted_at         INTEGER,
    failure_code       TEXT,
    failure_message    TEXT,
    CHECK (state <> 'ready' OR (sha256 IS NOT NULL AND size_bytes IS NOT NULL))
);

CREATE INDEX snapshots_sandbox_id ON snapshots (sandbox_id, id);
CREATE INDEX snapshots_project_id ON snapshots (project, id);
-- Who else holds a blob (delete removes it only when nobody does).
CREATE INDEX snapshots_sha256 ON snapshots (sha256) WHERE state <> 'deleted';
-- The quota (per project) and the start-up pass (`creating` rows).
CREATE INDEX snapshots_project_state ON snapshots (project, state);
-- The expiry sweep.
CREATE INDEX snapshots_live_expiry ON snapshots (expires_at)
    WHERE state IN ('ready','failed');

-- Forks: the snapshot whose workspace a sandbox starts from, read by every
-- provisioning of that sandbox (recreate included). Written just before the
-- sandbox row (whose id is made first), so a row here may name a sandbox id
-- that was never inserted (a replayed or refused create); nothing reads it then.
CREATE TABLE sandbox_forks (
    sandbox_id  TEXT PRIMARY KEY NOT NULL,
    snapshot_id TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
