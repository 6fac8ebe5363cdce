-- What datapack_worker may do on the tables it uses: run as datapack_owner after every
-- `datapack-worker migrate` (the owner grants on its own objects; no superuser needed).
-- Idempotent. See roles.sql for the roles, docs/deploying.md ("The database roles") for the order.
--   psql "postgres://datapack_owner@host/datapack" -v ON_ERROR_STOP=1 -f deploy/sql/grants.sql
--
-- The worker (src/store.rs):
--   datapack                 SELECT id by identifier
--   datapack_resource        INSERT … ON CONFLICT DO UPDATE … RETURNING (needs SELECT too), and
--                            UPDATE deleted_at when a newer upload or a removal replaces a row
--   datapack_object_removal  the same upsert, per key
--   sequences                nextval for the rows it inserts
--   datapack_write_batch     the write of a batch, one statement (runs with the worker's rights:
--                            every table privilege above still applies)
--   datapack_event_newer,    the ordering functions it calls (newer: both signatures, the older
--   datapack_event_same      kept for anything that still calls it)
--   datapack_reconcile       `datapack-worker reconcile`: its checkpoint and lease, one row per scope
-- plus transaction-scoped advisory locks (pg_advisory_xact_lock: open to every role). No DELETE,
-- no TRUNCATE, no REFERENCES, no TRIGGER, no DDL.

REVOKE ALL ON datapack, datapack_resource, datapack_object_removal, datapack_reconcile
    FROM PUBLIC, datapack_worker;
GRANT SELECT ON datapack TO datapack_worker;
GRANT SELECT, INSERT, UPDATE ON datapack_resource TO datapack_worker;
GRANT SELECT, INSERT, UPDATE ON datapack_object_removal TO datapack_worker;
GRANT SELECT, INSERT, UPDATE ON datapack_reconcile TO datapack_worker;

REVOKE ALL ON SEQUENCE datapack_id_seq, datapack_resource_id_seq FROM PUBLIC, datapack_worker;
GRANT USAGE ON SEQUENCE datapack_resource_id_seq TO datapack_worker;

REVOKE ALL ON FUNCTION datapack_event_newer(text, timestamptz, text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION datapack_event_newer(text, timestamptz, text, timestamptz) TO datapack_worker;
REVOKE ALL ON FUNCTION datapack_event_newer(text, timestamptz, integer, text, timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION datapack_event_newer(text, timestamptz, integer, text, timestamptz, integer) TO datapack_worker;

REVOKE ALL ON FUNCTION datapack_event_same(text, timestamptz, text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION datapack_event_same(text, timestamptz, text, timestamptz) TO datapack_worker;
REVOKE ALL ON FUNCTION datapack_write_batch(bigint[], boolean[], text[], text[], text[],
    timestamptz[], text[], smallint[], text[], text[], text[], text[], bigint[], text[], text[],
    text[], text[], timestamptz[], text[], text[], boolean, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION datapack_write_batch(bigint[], boolean[], text[], text[], text[],
    timestamptz[], text[], smallint[], text[], text[], text[], text[], bigint[], text[], text[],
    text[], text[], timestamptz[], text[], text[], boolean, boolean) TO datapack_worker;

-- The migrations' bookkeeping is the owner's alone.
REVOKE ALL ON _sqlx_migrations FROM PUBLIC;

-- If `datapack` already existed, owned by the datapack application's role, that role runs the
-- lines about `datapack` and datapack_id_seq instead. The application reads the tables with its
-- own role: GRANT SELECT ON datapack_resource, datapack_object_removal TO <its role>.

-- With CREATE_MISSING_DATAPACKS=true the worker also creates `datapack` rows (identifier only;
-- id and created_at come from defaults). Run these two lines too in that case:
--   GRANT INSERT (identifier) ON datapack TO datapack_worker;
--   GRANT USAGE ON SEQUENCE datapack_id_seq TO datapack_worker;
