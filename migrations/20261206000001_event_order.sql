-- The order of one key's events (docs/event-ordering.md):
--   1. S3 sequencers, when both events have one and they differ (padded right, compared as text);
--   2. else the event times, when they differ: equal sequencers are not proof of one event
--      (LocalStack puts the same sequencer on every record), a missing or unusable one says nothing;
--   3. else the tie rank: 0 unless the two events tied on 1 and 2 and were different objects, in
--      which case the worker asked S3 which one is current and ranked the later-written one above
--      (it is current) or below (it is not) every event it tied with.
-- Additive only: rows written before this migration rank 0, which is what they were.

ALTER TABLE datapack_resource
    ADD COLUMN tie_rank integer NOT NULL DEFAULT 0;
ALTER TABLE datapack_object_removal
    ADD COLUMN tie_rank integer NOT NULL DEFAULT 0;

-- Is event a newer than event b, ranks included?
CREATE FUNCTION datapack_event_newer(
    a_seq text, a_time timestamptz, a_rank integer,
    b_seq text, b_time timestamptz, b_rank integer)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN a_seq IS NOT NULL AND b_seq IS NOT NULL
             AND rpad(upper(a_seq), greatest(length(a_seq), length(b_seq)), '0') COLLATE "C"
                 <> rpad(upper(b_seq), greatest(length(a_seq), length(b_seq)), '0') COLLATE "C"
        THEN rpad(upper(a_seq), greatest(length(a_seq), length(b_seq)), '0') COLLATE "C"
                 > rpad(upper(b_seq), greatest(length(a_seq), length(b_seq)), '0') COLLATE "C"
        WHEN a_time <> b_time THEN a_time > b_time
        ELSE a_rank > b_rank
    END
$$;

-- The four-argument form keeps its name and signature for anything that calls it (it is granted
-- to the worker's role by deploy/sql/grants.sql), with the new rule for equal sequencers.
CREATE OR REPLACE FUNCTION datapack_event_newer(a_seq text, a_time timestamptz, b_seq text, b_time timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT datapack_event_newer(a_seq, a_time, 0, b_seq, b_time, 0)
$$;
