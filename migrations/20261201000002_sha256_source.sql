-- Where each row's sha256 came from: `computed` (the worker read and hashed the bytes) or
-- `s3_checksum` (S3's stored SHA-256 of a single-part upload, taken from HeadObject when the
-- bucket's checksums are trusted by configuration). Rows written before this column existed were
-- all hashed by the worker, hence the default.
--
-- Adding a column with a constant default rewrites nothing. The check is added NOT VALID: every
-- existing row holds the default, so scanning the table under this migration's lock to prove it
-- would only delay start-up on a large table; new and updated rows are checked all the same.
ALTER TABLE datapack_resource
    ADD COLUMN sha256_source text NOT NULL DEFAULT 'computed';
ALTER TABLE datapack_resource
    ADD CONSTRAINT datapack_resource_sha256_source_check
        CHECK (sha256_source IN ('computed', 's3_checksum')) NOT VALID;
