-- Versioned buckets. A removal no longer always hides its key: the permanent deletion of one
-- version (an old one, a delete marker, a noncurrent version's expiry) leaves whatever version S3
-- then shows. The newest removal per key keeps what S3 said survived it, so the rows at or before
-- it converge to that version, and a late create of any other version stays deleted.
-- Additive only: rows written before this migration read as "nothing survived", today's meaning.

ALTER TABLE datapack_object_removal
    -- The version or delete marker the removal named, when it named one (kept for audit).
    ADD COLUMN version_id         text,
    -- S3's current version once the removal happened; null etag: nothing is live as of it (a
    -- plain delete, a delete marker, or no version left).
    ADD COLUMN current_etag       text CHECK (current_etag <> '' AND current_etag NOT LIKE '"%'),
    ADD COLUMN current_version_id text,
    ADD CONSTRAINT datapack_object_removal_current_check
        CHECK (current_version_id IS NULL OR current_etag IS NOT NULL);

-- Every committed change of a datapack_resource row is announced on the channel
-- datapack_resource_changed (pg_notify, in the transaction that made it); see the README.
COMMENT ON TABLE datapack_resource IS
    'One row per upload. Changes are announced by NOTIFY on channel datapack_resource_changed.';
