-- Issue 17: the `paused` state (every process frozen, memory kept).
--
-- SQLite cannot alter a CHECK constraint, and rebuilding `sandboxes` inside
-- the migration's transaction would cascade-delete its labels (foreign keys
-- cannot be switched off inside a transaction). The constraint is widened
-- in place instead, the way SQLite documents for loosening a CHECK
-- (https://www.sqlite.org/lang_altertable.html#otheralter): every row that
-- passed the old list passes the new one.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
   SET sql = replace(sql, '''failed'',''expired''))', '''failed'',''expired'',''paused''))')
 WHERE type = 'table' AND name = 'sandboxes';
PRAGMA writable_schema = RESET;
-- The edit took (the text above is 0001's): else the migration fails here.
CREATE TEMP TABLE paused_check (ok INTEGER NOT NULL CHECK (ok));
INSERT INTO paused_check
    SELECT instr(sql, '''paused''') > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'sandboxes';
DROP TABLE paused_check;

-- While paused: when the current pause began, and the paused time of the
-- generation so far (not billed as running time).
ALTER TABLE sandboxes ADD COLUMN paused_at INTEGER;
ALTER TABLE sandboxes ADD COLUMN paused_ms INTEGER NOT NULL DEFAULT 0;

-- A paused sandbox is live: it keeps its name and its TTL runs.
DROP INDEX sandboxes_live_name;
CREATE UNIQUE INDEX sandboxes_live_name ON sandboxes (project, name)
    WHERE name IS NOT NULL AND state IN ('requested', 'provisioning', 'ready', 'active', 'paused');
DROP INDEX sandboxes_live_expiry;
CREATE INDEX sandboxes_live_expiry ON sandboxes (expires_at)
    WHERE state IN ('requested','provisioning','ready','active','paused');
