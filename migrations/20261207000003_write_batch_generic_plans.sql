-- The batch function plans its statements once per connection, not once per call.
--
-- PL/pgSQL caches each statement's plan, but under the default plan_cache_mode (auto) PostgreSQL
-- compares the generic plan's estimate against a plan made for the call's own arguments. The
-- generic plan assumes every `unnest` of an argument yields 100 rows, the worker's batches are
-- usually a handful (a replica at its default concurrency of 16 commits what finishes together),
-- so the custom plan always looks cheaper and every statement was planned again on every call.
-- Measured with pgbench at the worker's 4 connections (bench/results/db-floor-batch.md names
-- the run): a one-row call did 3.4 times more calls per second with generic plans, and every
-- batch size up to 64 was faster. The plans are index lookups either way (the function already
-- sets enable_seqscan = off), so nothing is lost by keeping one.
--
-- ALTER FUNCTION ... SET adds this setting beside enable_seqscan; it takes no lock that a running
-- call would hold, and the next call on each connection uses it.
SET LOCAL lock_timeout = '10s';

ALTER FUNCTION datapack_write_batch(
    bigint[], boolean[], text[], text[], text[], timestamptz[], text[], smallint[], text[], text[],
    text[], text[], bigint[], text[], text[], text[], text[], timestamptz[], text[], text[],
    boolean, boolean)
    SET plan_cache_mode = force_generic_plan;
