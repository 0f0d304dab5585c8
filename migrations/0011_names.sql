-- Issue 17: a sandbox may have a name, unique among one project's live
-- sandboxes (requested, provisioning, ready, active). The partial unique
-- index is what makes a get-or-create race-free: two creates with one name
-- can never both be live. A sandbox that ends frees its name.
ALTER TABLE sandboxes ADD COLUMN name TEXT;

CREATE UNIQUE INDEX sandboxes_live_name ON sandboxes (project, name)
    WHERE name IS NOT NULL AND state IN ('requested', 'provisioning', 'ready', 'active');
