-- The database roles of datapack-worker: run once per database, as a superuser (or the
-- database's owner with CREATEROLE), BEFORE the first migration. Idempotent.
--
--   datapack_owner   owns the schema objects; runs `datapack-worker migrate` (DDL)
--   datapack_worker  runs `datapack-worker run`: only the DML it needs, granted by grants.sql
--                    (run as datapack_owner after every migration); no DDL, no DELETE
--
-- Both roles can log in but get no password here: set one (ALTER ROLE … PASSWORD, or psql's
-- \password) or use your platform's authentication (on RDS: GRANT rds_iam TO …).
--   psql "postgres://admin@host/datapack" -v ON_ERROR_STOP=1 -f deploy/sql/roles.sql

DO $$
BEGIN
    -- Roles are cluster-wide: several databases (or concurrent runs) may create them at once.
    BEGIN
        CREATE ROLE datapack_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    BEGIN
        CREATE ROLE datapack_worker LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
            CONNECTION LIMIT 200;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
END
$$;

-- The two roles connect. (PUBLIC keeps whatever it had: the datapack application reads these
-- tables, often from the same database.)
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO datapack_owner, datapack_worker', current_database());
END
$$;

-- The objects live in "public" (the migrations name no schema). Only the owner creates there:
-- PostgreSQL < 15 still lets PUBLIC create in it by default (if another application's role
-- relies on that, grant it CREATE by name).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO datapack_owner;
GRANT USAGE ON SCHEMA public TO datapack_worker;

-- A worker's session never runs long: statements are bounded client-side too (DATABASE_STATEMENT_TIMEOUT_SECS).
ALTER ROLE datapack_worker SET idle_in_transaction_session_timeout = '60s';
