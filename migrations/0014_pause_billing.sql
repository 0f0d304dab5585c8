-- Issue 17: what a pause costs and why a sandbox is paused.
--
-- The paused rate in hundredths of a credit per hour, fixed at create like
-- `rate_centicredits` (the extension's `credits_per_paused_hour` times the
-- profile's `price_factor_percent`; never above the running rate).
ALTER TABLE sandboxes ADD COLUMN paused_rate_centicredits INTEGER NOT NULL DEFAULT 0;
-- Who paused it: `user` (the API) or `credits_exhausted` (the budget
-- step-down, which resumes it when the project has credits again).
ALTER TABLE sandboxes ADD COLUMN pause_reason TEXT;
-- `ttl.pause_stops_clock`: while paused, the TTL left when the pause began
-- (the row's `expires_at` then holds the latest the pause may last), and
-- the credits reserved for the longest pause. NULL when the clock runs.
ALTER TABLE sandboxes ADD COLUMN ttl_left_ms INTEGER;
ALTER TABLE sandboxes ADD COLUMN pause_reserve_credits INTEGER NOT NULL DEFAULT 0;
