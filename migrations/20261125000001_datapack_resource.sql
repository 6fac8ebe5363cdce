-- The integration surface the datapack application reads. Column names are a contract.

CREATE TABLE IF NOT EXISTS datapack (
    id          bigserial   PRIMARY KEY,
    identifier  text        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE datapack_resource (
    id                   bigserial   PRIMARY KEY,
    datapack_id          bigint      NOT NULL REFERENCES datapack (id),
    bucket               text        NOT NULL,
    object_key           text        NOT NULL,
    path                 text        NOT NULL,
    display              text        NOT NULL,
    content_type         text,
    length               bigint      NOT NULL CHECK (length >= 0),
    etag                 text        NOT NULL CHECK (etag <> '' AND etag NOT LIKE '"%'),
    sha256               text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    submitter_name       text,
    submitter_email      text,
    object_last_modified timestamptz,
    version_id           text,
    sequencer            text,
    -- When S3 says the upload happened; orders events of one key when there is no sequencer.
    event_time           timestamptz NOT NULL,
    ingested_at          timestamptz NOT NULL DEFAULT now(),
    deleted_at           timestamptz,
    -- One row per upload: redelivery and concurrent replicas collapse onto it.
    CONSTRAINT datapack_resource_upload_key UNIQUE (bucket, object_key, etag)
);

CREATE INDEX datapack_resource_live_idx
    ON datapack_resource (datapack_id, path, display) WHERE deleted_at IS NULL;

-- The newest removal seen per key, so a create handled after a newer removal stays deleted.
CREATE TABLE datapack_object_removal (
    bucket      text        NOT NULL,
    object_key  text        NOT NULL,
    sequencer   text,
    event_time  timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, object_key)
);

-- Is event a newer than event b? S3 sequencers when both have one (padded right with zeros,
-- compared as strings, AWS's rule), event times otherwise.
CREATE FUNCTION datapack_event_newer(a_seq text, a_time timestamptz, b_seq text, b_time timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN a_seq IS NOT NULL AND b_seq IS NOT NULL THEN
            rpad(upper(a_seq), greatest(length(a_seq), length(b_seq)), '0') COLLATE "C"
                > rpad(upper(b_seq), greatest(length(a_seq), length(b_seq)), '0') COLLATE "C"
        ELSE a_time > b_time
    END
$$;
