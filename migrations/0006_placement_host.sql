-- The host a create asked for (`placement.host`); NULL when the router
-- chose. A sandbox whose host was asked for never moves to another host.
ALTER TABLE sandboxes ADD COLUMN placement_host TEXT;
