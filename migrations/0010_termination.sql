-- Why a sandbox ended (API.md "Lifecycle additions"): set once, by the
-- transition that decided the end, and cleared when a recreate starts a
-- new lifetime. The deciding event carries the reason too.
ALTER TABLE sandboxes ADD COLUMN termination_reason TEXT;
ALTER TABLE sandboxes ADD COLUMN termination_at INTEGER;
ALTER TABLE sandboxes ADD COLUMN termination_detail TEXT;
ALTER TABLE events ADD COLUMN termination TEXT;
