-- Reconcile: where a comparison of a bucket (or a prefix of it) with datapack_resource has got
-- to, so an interrupted run continues from its checkpoint, and who is running it, so a second
-- reconciler of an overlapping scope does not repeat the work (see the README: Reconcile).
CREATE TABLE datapack_reconcile (
    bucket       text        NOT NULL,
    -- The scope: every key starting with this ('' is the whole bucket).
    prefix       text        NOT NULL,
    -- `list` (ListObjectsV2 / ListObjectVersions) or `inventory:<manifest key>`: a checkpoint is
    -- a position in one source's key order only.
    source       text        NOT NULL,
    -- The last key whose comparison and repairs are complete, in S3's (byte) order; null: none.
    cursor       text,
    -- The process holding the scope, until when (renewed while it runs).
    owner        text,
    lease_until  timestamptz,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    -- What the run found and did so far (the report's counts), carried across resumptions.
    counts       jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (bucket, prefix)
);

-- The comparison reads a bucket's live rows by key range in S3's order (bytes, hence "C"), one
-- listing page at a time.
CREATE INDEX datapack_resource_live_key_idx
    ON datapack_resource (bucket, (object_key COLLATE "C")) WHERE deleted_at IS NULL;
