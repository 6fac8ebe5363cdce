-- The same rule for `sha256` (64 lower-case hex digits), at a twentieth of the CPU.
--
-- PostgreSQL's regex engine expands the bounded repetition of `^[0-9a-f]{64}$` into a
-- 64-state automaton and ran it for every row written: a profile of the write path put 6 % of
-- the database's CPU there (bench/results/db-floor.md names the run). Here the length is a
-- byte count and the regex only looks for a character outside the set, which needs no counting;
-- together they accept exactly what the old check accepted (only ASCII hex digits remain, so
-- 64 bytes are 64 characters).
--
-- The swap takes a brief ACCESS EXCLUSIVE lock on the table. Behind a long reader it would wait,
-- and every writer and reader would queue behind it: within 10 s it fails instead (the migration
-- runs in a transaction, so nothing is left half done), and `migrate` can simply be run again.
SET LOCAL lock_timeout = '10s';

-- NOT VALID: every existing row already passed the equivalent check this replaces, so there is
-- nothing to scan; new and updated rows are checked as before.
ALTER TABLE datapack_resource
    DROP CONSTRAINT datapack_resource_sha256_check,
    ADD CONSTRAINT datapack_resource_sha256_check
        CHECK (octet_length(sha256) = 64 AND sha256 !~ '[^0-9a-f]') NOT VALID;
