-- Labels as rows, so `GET /v1/sandboxes?label=k=v` is an index lookup
-- instead of a JSON parse of every row. The `labels` JSON column stays the
-- source of truth; triggers keep this table equal to it on every insert and
-- every change of `labels`, whatever code path writes the row.
CREATE TABLE sandbox_labels (
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, key)
) WITHOUT ROWID;

CREATE INDEX sandbox_labels_by_pair ON sandbox_labels (key, value, sandbox_id);

INSERT INTO sandbox_labels (sandbox_id, key, value)
    SELECT s.id, j.key, j.value FROM sandboxes s, json_each(s.labels) j;

CREATE TRIGGER sandbox_labels_on_insert AFTER INSERT ON sandboxes
BEGIN
    INSERT INTO sandbox_labels (sandbox_id, key, value)
        SELECT NEW.id, j.key, j.value FROM json_each(NEW.labels) j;
END;

CREATE TRIGGER sandbox_labels_on_update AFTER UPDATE OF labels ON sandboxes
WHEN NEW.labels IS NOT OLD.labels
BEGIN
    DELETE FROM sandbox_labels WHERE sandbox_id = NEW.id;
    INSERT INTO sandbox_labels (sandbox_id, key, value)
        SELECT NEW.id, j.key, j.value FROM json_each(NEW.labels) j;
END;
