-- Issue 17: `ttl.on_expire: snapshot` takes an exit snapshot before a
-- sandbox whose TTL ran out (or that sat idle) is torn down; its id is kept
-- on the sandbox. Set once per sandbox, in the transaction that makes the
-- snapshot and before its capture starts, so a crash never makes a second.
ALTER TABLE sandboxes ADD COLUMN exit_snapshot TEXT;
