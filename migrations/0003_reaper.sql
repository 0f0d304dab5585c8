-- Teardown retries: a failed teardown leaves the row in `destroying` (or
-- `expired`) with the time of its next attempt; the reaper retries it.
ALTER TABLE sandboxes ADD COLUMN teardown_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN next_teardown_at INTEGER;

-- Idle reap: live rows by last activity.
CREATE INDEX sandboxes_live_activity ON sandboxes (last_activity_at)
    WHERE state IN ('ready','active');

-- Teardowns due: rows on their way out.
CREATE INDEX sandboxes_leaving ON sandboxes (next_teardown_at)
    WHERE state IN ('destroying','expired');

-- The outbox dispatcher: undelivered events in order.
CREATE INDEX events_undelivered ON events (seq) WHERE delivered_at IS NULL;
