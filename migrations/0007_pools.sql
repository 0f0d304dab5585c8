-- Warm pools (issue 8): sandboxes provisioned ahead of demand for a profile
-- that declares `pool`, held unassigned until a create claims one.
--
-- `pool` is the profile id while the sandbox is unassigned (and stays on a
-- member retired without ever being handed out); a create that claims the
-- member clears it in the same transaction that assigns the consumer. An
-- unassigned member belongs to the project '' (which no token or create can
-- name), has generation 0 (its events are the pool's, not the consumer's),
-- is priced at 0 and reserves nothing, and expires at made + `max_age` so
-- the reaper retires it like any other sandbox.
ALTER TABLE sandboxes ADD COLUMN pool TEXT;

-- The claim (ready members of a pool, oldest expiry first), the refill's
-- stock count and `/metrics`.
CREATE INDEX sandboxes_pool ON sandboxes (pool, state, expires_at) WHERE pool IS NOT NULL;
