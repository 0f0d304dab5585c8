-- Issue 17: `ttl.on_expire: snapshot` takes an exit snapshot before a
-- sandbox whose TTL ran out (or that sat idle) is torn down; its id is kept
-- on the sandbox. Set once per generation, before the capture starts, so a
-- crash mid-capture never makes a second one.
ALTER TABLE sandboxes ADD COLUMN exit_snapshot TEXT;
