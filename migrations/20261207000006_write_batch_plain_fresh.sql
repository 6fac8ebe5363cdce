-- A batch of new uploads in fewer statements (measured with bench/db_floor.py; the result file
-- names the run). When every write the batch will make is the one write of a fresh key (a key
-- with no row and no removal, under its lock) and no write carries a tiebreak, which is what a
-- batch of new uploads is:
--   - the rows are inserted and announced, and the outcome of each write found, by one statement
--     instead of three (the general insert, the settle check, the announcements); the general
--     insert's choice among writes of one key and its lookup of earlier rows have nothing to do
--     for distinct fresh keys;
--   - and, for every batch without a tiebreak, step 3's ranking query is not run at all.
-- Everything is decided exactly as before, and the announcements are the same, byte for byte,
-- in the same order (row order). Any other batch takes the general path unchanged.
--
-- CREATE OR REPLACE keeps the signature (a worker of the previous release is served by the new
-- body during a rolling deploy); the function's settings are restated, as REPLACE drops those
-- not given.
SET LOCAL lock_timeout = '10s';

CREATE OR REPLACE FUNCTION datapack_write_batch(
    p_lock bigint[], p_removal boolean[], p_bucket text[], p_key text[], p_sequencer text[],
    p_event_time timestamptz[], p_identity text[], p_tiebreak smallint[],
    p_datapack text[], p_path text[], p_display text[], p_content_type text[], p_length bigint[],
    p_sha256 text[], p_sha256_source text[], p_submitter_name text[], p_submitter_email text[],
    p_last_modified timestamptz[], p_version_id text[], p_survivor_version text[],
    p_create_datapacks boolean, p_notify boolean)
RETURNS smallint[] LANGUAGE plpgsql
-- Every table this reads is read by key, through an index. The statements' plans are cached
-- (generic plans, made once per connection); one made while a table is small (a fresh database)
-- would otherwise scan it whole, and go on doing so for every batch as it grows, until the next
-- ANALYZE. Without sequential scans the cached plans stay index lookups at any size.
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    n      integer := coalesce(array_length(p_bucket, 1), 0);
    v_outcome smallint[] := array_fill(0::smallint, ARRAY[n]);
    v_aside   boolean[] := array_fill(false, ARRAY[n]);
    v_rank    integer[] := array_fill(0, ARRAY[n]);
    v_fresh   boolean[] := array_fill(false, ARRAY[n]);
    found_ boolean;
    r      record;
    hi     integer;
    lo     integer;
    w_id   bigint[];
    w_i    integer[];
    w_new  boolean[];
    w_live boolean[];
    m_i    integer[];
    v_buckets text[];
    v_keys    text[];
    v_announced bigint;
    -- No tiebreak in the batch: no write to rank (step 3).
    v_unranked boolean := NOT (0 <> ANY (p_tiebreak));
    -- Every write that will be made is the one write of a fresh key: the short path below.
    v_plain    boolean := NOT (0 <> ANY (p_tiebreak));
BEGIN
    IF n = 0 THEN
        RETURN v_outcome;
    END IF;

    -- 1. Redeliveries, without a lock.
    FOR r IN
        SELECT w.i, w.removal FROM unnest(p_removal, p_bucket, p_key, p_sequencer, p_event_time,
                p_identity, p_tiebreak) WITH ORDINALITY
            AS w (removal, bucket, object_key, sequencer, event_time, identity, tiebreak, i)
        WHERE w.tiebreak = 0 AND CASE
            WHEN w.removal THEN EXISTS (SELECT 1 FROM datapack_object_removal t
                WHERE t.bucket = w.bucket AND t.object_key = w.object_key
                  AND datapack_event_same(t.sequencer, t.event_time, w.sequencer, w.event_time))
            ELSE EXISTS (SELECT 1 FROM datapack_resource x
                WHERE x.bucket = w.bucket AND x.object_key = w.object_key AND x.etag = w.identity
                  AND datapack_event_same(x.sequencer, x.event_time, w.sequencer, w.event_time))
            END
    LOOP
        v_aside[r.i] := true;
        v_outcome[r.i] := CASE WHEN r.removal THEN 4 ELSE 0 END;
    END LOOP;
    IF NOT (false = ANY (v_aside)) THEN
        RETURN v_outcome;
    END IF;

    -- 2. The other keys' locks, ascending; then redeliveries and ties under them.
    PERFORM count(pg_advisory_xact_lock(k)) FROM (
        SELECT DISTINCT k FROM unnest(p_lock, v_aside) AS u (k, aside) WHERE NOT u.aside ORDER BY k
    ) AS s;
    -- A key with no row and no removal (under its lock none can appear) is fresh: nothing there
    -- to repeat or tie with, and nothing to settle once its one write is in (step 4).
    FOR r IN
        SELECT f.i, f.removal, f.fresh,
            NOT f.fresh AND CASE
                WHEN f.removal THEN EXISTS (SELECT 1 FROM datapack_object_removal t
                    WHERE t.bucket = f.bucket AND t.object_key = f.object_key
                      AND datapack_event_same(t.sequencer, t.event_time, f.sequencer, f.event_time))
                ELSE EXISTS (SELECT 1 FROM datapack_resource x
                    WHERE x.bucket = f.bucket AND x.object_key = f.object_key AND x.etag = f.identity
                      AND datapack_event_same(x.sequencer, x.event_time, f.sequencer, f.event_time))
            END AS repeated,
            NOT f.fresh AND (
                EXISTS (SELECT 1 FROM datapack_resource x
                    WHERE x.bucket = f.bucket AND x.object_key = f.object_key
                      AND x.etag IS DISTINCT FROM f.identity
                      AND datapack_event_same(x.sequencer, x.event_time, f.sequencer, f.event_time))
                OR (NOT f.removal AND EXISTS (SELECT 1 FROM datapack_object_removal t
                    WHERE t.bucket = f.bucket AND t.object_key = f.object_key
                      AND t.current_etag IS DISTINCT FROM f.identity
                      AND datapack_event_same(t.sequencer, t.event_time, f.sequencer, f.event_time))))
            AS tied
        FROM (
            SELECT w.*,
                NOT w.removal
                AND NOT EXISTS (SELECT 1 FROM datapack_resource x
                    WHERE x.bucket = w.bucket AND x.object_key = w.object_key)
                AND NOT EXISTS (SELECT 1 FROM datapack_object_removal t
                    WHERE t.bucket = w.bucket AND t.object_key = w.object_key) AS fresh
            FROM unnest(p_removal, p_bucket, p_key, p_sequencer, p_event_time, p_identity,
                    p_tiebreak, v_aside) WITH ORDINALITY
                AS w (removal, bucket, object_key, sequencer, event_time, identity, tiebreak, aside, i)
            WHERE w.tiebreak = 0 AND NOT w.aside
            -- Computed once per write: not folded into the tests above, which it skips.
            OFFSET 0) AS f
    LOOP
        IF r.repeated THEN
            v_aside[r.i] := true;
            v_outcome[r.i] := CASE WHEN r.removal THEN 4 ELSE 0 END;
        ELSIF r.tied THEN
            v_aside[r.i] := true;
            v_outcome[r.i] := 5;
        ELSE
            v_fresh[r.i] := r.fresh;
            v_plain := v_plain AND r.fresh;
        END IF;
    END LOOP;

    -- Ties inside the batch: a write against an earlier one of its key that will be applied (in
    -- order: one set aside no longer counts). Only keys written more than once are looked at.
    FOR r IN
        SELECT s.i FROM (
            SELECT w.i, w.tiebreak, count(*) OVER (PARTITION BY w.bucket, w.object_key) AS writes
            FROM unnest(p_bucket, p_key, p_tiebreak) WITH ORDINALITY AS w (bucket, object_key, tiebreak, i)
        ) AS s
        WHERE s.writes > 1 AND s.tiebreak = 0
        ORDER BY s.i
    LOOP
        -- A key written twice in the batch: the general path chooses between its writes.
        v_plain := false;
        CONTINUE WHEN v_aside[r.i];
        SELECT EXISTS (
            SELECT 1 FROM unnest(p_removal, p_bucket, p_key, p_sequencer, p_event_time, p_identity)
                WITH ORDINALITY AS e (removal, bucket, object_key, sequencer, event_time, identity, i)
            WHERE e.i < r.i AND NOT v_aside[e.i]
              AND e.bucket = p_bucket[r.i] AND e.object_key = p_key[r.i]
              AND NOT (e.removal AND p_removal[r.i])
              AND e.identity IS DISTINCT FROM p_identity[r.i]
              AND datapack_event_same(e.sequencer, e.event_time, p_sequencer[r.i], p_event_time[r.i]))
        INTO found_;
        IF found_ THEN
            v_aside[r.i] := true;
            v_outcome[r.i] := 5;
        END IF;
    END LOOP;

    -- 3. Writes S3 settled rank one above (current) or below (not) every other object of their
    -- key at their position.
    IF NOT v_unranked THEN
        FOR r IN SELECT w.i, w.tiebreak FROM unnest(p_tiebreak) WITH ORDINALITY AS w (tiebreak, i)
                 WHERE w.tiebreak <> 0
        LOOP
            SELECT coalesce(max(t.tie_rank), 0), coalesce(min(t.tie_rank), 0) INTO hi, lo FROM (
                SELECT x.tie_rank FROM datapack_resource x
                WHERE x.bucket = p_bucket[r.i] AND x.object_key = p_key[r.i]
                  AND x.etag IS DISTINCT FROM p_identity[r.i]
                  AND datapack_event_same(x.sequencer, x.event_time, p_sequencer[r.i], p_event_time[r.i])
                UNION ALL
                SELECT t.tie_rank FROM datapack_object_removal t
                WHERE NOT p_removal[r.i]
                  AND t.bucket = p_bucket[r.i] AND t.object_key = p_key[r.i]
                  AND datapack_event_same(t.sequencer, t.event_time, p_sequencer[r.i], p_event_time[r.i])
            ) AS t;
            v_rank[r.i] := CASE WHEN r.tiebreak > 0 THEN hi + 1 ELSE lo - 1 END;
        END LOOP;
    END IF;

    IF p_create_datapacks THEN
        INSERT INTO datapack (identifier)
        SELECT DISTINCT d.identifier FROM unnest(p_datapack, v_aside) AS d (identifier, aside)
        WHERE d.identifier IS NOT NULL AND NOT d.aside
          AND NOT EXISTS (SELECT 1 FROM datapack x WHERE x.identifier = d.identifier)
        ON CONFLICT (identifier) DO NOTHING;
    END IF;

    -- The newest write per upload (resources) and per key (removals), the first among equals:
    -- ON CONFLICT may touch a row only once. Resources of unknown datapacks are answered so;
    -- removals are stale until recorded.
    FOR r IN
        SELECT w.i FROM unnest(p_removal, p_datapack, v_aside) WITH ORDINALITY AS w (removal, datapack, aside, i)
        WHERE NOT w.aside AND (w.removal OR NOT EXISTS (
            SELECT 1 FROM datapack d WHERE d.identifier = w.datapack))
    LOOP
        v_outcome[r.i] := CASE WHEN p_removal[r.i] THEN 4 ELSE 2 END;
        v_aside[r.i] := NOT p_removal[r.i];
    END LOOP;

    -- The short path: distinct fresh keys, one write each, no rank. The general statement below
    -- would choose every write (nothing competes on a key), find no earlier row, insert them all
    -- as new, and leave nothing to settle; this statement does exactly that, finds each row's
    -- write, and announces each row as `created`, in row order, as the general path does.
    IF v_plain THEN
        WITH written AS (
            INSERT INTO datapack_resource AS x (datapack_id, bucket, object_key, path, display,
                content_type, length, etag, sha256, submitter_name, submitter_email,
                object_last_modified, version_id, sequencer, event_time, sha256_source, tie_rank)
            SELECT d.id, w.bucket, w.object_key, p_path[w.i], p_display[w.i], p_content_type[w.i],
                   p_length[w.i], w.identity, p_sha256[w.i], p_submitter_name[w.i],
                   p_submitter_email[w.i], p_last_modified[w.i], p_version_id[w.i], w.sequencer,
                   w.event_time, p_sha256_source[w.i], 0
            FROM unnest(p_bucket, p_key, p_sequencer, p_event_time, p_identity, v_aside)
                    WITH ORDINALITY AS w (bucket, object_key, sequencer, event_time, identity, aside, i)
                JOIN datapack d ON d.identifier = p_datapack[w.i]
            WHERE NOT w.aside
            -- Under the key's lock, with no row for it, nothing can conflict; kept as the general
            -- insert has it, so that the short path can never write what the general one would not.
            ON CONFLICT ON CONSTRAINT datapack_resource_upload_key DO UPDATE SET
                datapack_id = EXCLUDED.datapack_id, path = EXCLUDED.path, display = EXCLUDED.display,
                content_type = EXCLUDED.content_type, length = EXCLUDED.length, sha256 = EXCLUDED.sha256,
                sha256_source = EXCLUDED.sha256_source,
                submitter_name = EXCLUDED.submitter_name, submitter_email = EXCLUDED.submitter_email,
                object_last_modified = EXCLUDED.object_last_modified, version_id = EXCLUDED.version_id,
                sequencer = EXCLUDED.sequencer, event_time = EXCLUDED.event_time,
                tie_rank = EXCLUDED.tie_rank, ingested_at = now(), deleted_at = NULL
              WHERE datapack_event_newer(EXCLUDED.sequencer, EXCLUDED.event_time, EXCLUDED.tie_rank,
                                         x.sequencer, x.event_time, x.tie_rank)
            RETURNING x.id, x.bucket, x.object_key, x.etag),
        origin AS MATERIALIZED (
            SELECT jsonb_object_agg(w.bucket || chr(1) || w.identity || chr(1) || w.object_key, w.i)
                       AS of
            FROM unnest(p_bucket, p_key, p_identity, v_aside) WITH ORDINALITY
                AS w (bucket, object_key, identity, aside, i)
            WHERE NOT w.aside)
        SELECT array_agg(g.i),
               count(CASE WHEN p_notify THEN
                         pg_notify('datapack_resource_changed',
                                   CASE WHEN octet_length(t.full_text) <= 7999 THEN t.full_text
                                        ELSE t.short_text END) END)
        INTO m_i, v_announced
        FROM (
            SELECT wr.id, (o.of ->> (wr.bucket || chr(1) || wr.etag || chr(1) || wr.object_key))::int
                       AS i
            FROM written wr CROSS JOIN origin o
            ORDER BY wr.id) AS g
        CROSS JOIN LATERAL (
            SELECT g.id, 'created'::text AS change, true AS live, p_datapack[g.i] AS datapack,
                   p_key[g.i] AS key, p_identity[g.i] AS etag, p_version_id[g.i] AS version_id) AS f
        CROSS JOIN LATERAL (
            SELECT row_to_json(f)::text AS full_text, row_to_json(s)::text AS short_text
            FROM (SELECT f.id, f.change, f.live, f.etag, true AS truncated) AS s) AS t;
        IF m_i IS NOT NULL THEN
            FOR j IN 1 .. array_length(m_i, 1) LOOP
                v_outcome[m_i[j]] := 1;
            END LOOP;
        END IF;
        RETURN v_outcome;
    END IF;

    WITH w AS (
        SELECT w.* FROM unnest(p_removal, p_bucket, p_key, p_sequencer, p_event_time, p_identity,
                v_rank, v_aside) WITH ORDINALITY
            AS w (removal, bucket, object_key, sequencer, event_time, identity, rank, aside, i)
        WHERE NOT w.aside),
    chosen AS (
        SELECT w.* FROM w WHERE NOT EXISTS (
            SELECT 1 FROM w o
            WHERE o.removal = w.removal AND o.bucket = w.bucket AND o.object_key = w.object_key
              AND (w.removal OR o.identity = w.identity)
              AND o.i <> w.i
              AND (datapack_event_newer(o.sequencer, o.event_time, o.rank,
                                        w.sequencer, w.event_time, w.rank)
                   OR (o.i < w.i AND NOT datapack_event_newer(w.sequencer, w.event_time, w.rank,
                                                              o.sequencer, o.event_time, o.rank))))),
    -- MATERIALIZED here and below: computed once, never re-run per row of a join (the planner
    -- sees a CTE as one row, and a nested loop over it is quadratic in the batch).
    prior AS MATERIALIZED (
        SELECT x.id, x.deleted_at IS NULL AS live
        FROM chosen c JOIN datapack_resource x
          ON x.bucket = c.bucket AND x.object_key = c.object_key AND x.etag = c.identity
        WHERE NOT c.removal AND NOT v_fresh[c.i]),
    written AS (
        INSERT INTO datapack_resource AS x (datapack_id, bucket, object_key, path, display,
            content_type, length, etag, sha256, submitter_name, submitter_email,
            object_last_modified, version_id, sequencer, event_time, sha256_source, tie_rank)
        SELECT d.id, c.bucket, c.object_key, p_path[c.i], p_display[c.i], p_content_type[c.i],
               p_length[c.i], c.identity, p_sha256[c.i], p_submitter_name[c.i],
               p_submitter_email[c.i], p_last_modified[c.i], p_version_id[c.i], c.sequencer,
               c.event_time, p_sha256_source[c.i], c.rank
        FROM chosen c JOIN datapack d ON d.identifier = p_datapack[c.i]
        WHERE NOT c.removal
        ON CONFLICT ON CONSTRAINT datapack_resource_upload_key DO UPDATE SET
            datapack_id = EXCLUDED.datapack_id, path = EXCLUDED.path, display = EXCLUDED.display,
            content_type = EXCLUDED.content_type, length = EXCLUDED.length, sha256 = EXCLUDED.sha256,
            sha256_source = EXCLUDED.sha256_source,
            submitter_name = EXCLUDED.submitter_name, submitter_email = EXCLUDED.submitter_email,
            object_last_modified = EXCLUDED.object_last_modified, version_id = EXCLUDED.version_id,
            sequencer = EXCLUDED.sequencer, event_time = EXCLUDED.event_time,
            tie_rank = EXCLUDED.tie_rank, ingested_at = now(), deleted_at = NULL
          WHERE datapack_event_newer(EXCLUDED.sequencer, EXCLUDED.event_time, EXCLUDED.tie_rank,
                                     x.sequencer, x.event_time, x.tie_rank)
        RETURNING x.id, x.bucket, x.object_key, x.etag),
    removed AS (
        INSERT INTO datapack_object_removal AS t (bucket, object_key, sequencer, event_time,
            version_id, current_etag, current_version_id, tie_rank)
        SELECT c.bucket, c.object_key, c.sequencer, c.event_time, p_version_id[c.i], c.identity,
               p_survivor_version[c.i], c.rank
        FROM chosen c WHERE c.removal
        ON CONFLICT (bucket, object_key) DO UPDATE SET
            sequencer = EXCLUDED.sequencer, event_time = EXCLUDED.event_time,
            version_id = EXCLUDED.version_id, current_etag = EXCLUDED.current_etag,
            current_version_id = EXCLUDED.current_version_id, tie_rank = EXCLUDED.tie_rank,
            recorded_at = now()
          WHERE datapack_event_newer(EXCLUDED.sequencer, EXCLUDED.event_time, EXCLUDED.tie_rank,
                                     t.sequencer, t.event_time, t.tie_rank)
        RETURNING t.bucket, t.object_key),
    -- Which write each changed row or removal came from, by its upload (or key), looked up in
    -- one map instead of joined back: a join of two CTEs is planned as a nested loop.
    origin AS MATERIALIZED (
        SELECT jsonb_object_agg(
                   CASE WHEN c.removal THEN 'r' ELSE 'u' END || c.bucket || chr(1)
                   || CASE WHEN c.removal THEN '' ELSE c.identity END || chr(1) || c.object_key,
                   c.i) AS of
        FROM chosen c),
    results AS (
        SELECT (o.of ->> ('u' || wr.bucket || chr(1) || wr.etag || chr(1) || wr.object_key))::int
                   AS i,
               wr.id, p.id IS NULL AS inserted, coalesce(p.live, false) AS was_live
        FROM written wr CROSS JOIN origin o LEFT JOIN prior p ON p.id = wr.id
        UNION ALL
        SELECT (o.of ->> ('r' || rm.bucket || chr(1) || chr(1) || rm.object_key))::int,
               NULL, NULL, NULL
        FROM removed rm CROSS JOIN origin o)
    SELECT array_agg(s.id) FILTER (WHERE s.id IS NOT NULL),
           array_agg(s.i) FILTER (WHERE s.id IS NOT NULL),
           array_agg(s.inserted) FILTER (WHERE s.id IS NOT NULL),
           array_agg(s.was_live) FILTER (WHERE s.id IS NOT NULL),
           array_agg(s.i)
    INTO w_id, w_i, w_new, w_live, m_i
    FROM results s;

    IF m_i IS NULL THEN
        RETURN v_outcome;
    END IF;
    FOR j IN 1 .. array_length(m_i, 1) LOOP
        v_outcome[m_i[j]] := CASE WHEN p_removal[m_i[j]] THEN 3 ELSE 1 END;
    END LOOP;

    -- 4. Settle the keys something changed, and announce every row whose state changed.
    --
    -- The touched keys' rows are found first, through the (bucket, object_key, etag) key, and only
    -- those are tested: written as one UPDATE with `deleted_at IS NULL` beside the tests, a database
    -- without statistics yet plans a walk over every live row. Only live rows can end and only a
    -- survivor can come back (a row made live by a refresh is live here already).
    --
    -- A key's newest removal splits its rows: those at or before it are live only as the version S3
    -- said survived it (none for a plain delete or a delete marker) and only while no upload newer
    -- than the removal exists; among those after it, the newest upload is live.
    --
    -- The announcements: one per row whose state changed, in row order, with the net change of the
    -- whole batch (a row inserted and then ended by a newer removal in it is one `created`, not
    -- live). The payload stays under PostgreSQL's 8000 bytes: past 7999 it keeps id, change, live
    -- and etag, says "truncated": true, and the app reads the rest from the row.
    --
    -- A fresh key changed by one write holds one row, live, as inserted: nothing to settle, and
    -- its announcement (`created`) comes from the write itself.
    SELECT array_agg(s.bucket), array_agg(s.object_key) INTO v_buckets, v_keys FROM (
        SELECT p_bucket[i] AS bucket, p_key[i] AS object_key, v_fresh[i] AS fresh,
               count(*) OVER (PARTITION BY p_bucket[i], p_key[i]) AS writes
        FROM unnest(m_i) AS i) AS s
    WHERE NOT s.fresh OR s.writes > 1;
    -- Nothing to settle: every change was a fresh key's one write, and is announced as the
    -- settle statement would announce it, by a statement a fraction of its size.
    IF v_buckets IS NULL THEN
        IF p_notify AND w_id IS NOT NULL THEN
            PERFORM count(pg_notify('datapack_resource_changed',
                                    CASE WHEN octet_length(t.full_text) <= 7999 THEN t.full_text
                                         ELSE t.short_text END))
            FROM (
                SELECT w.id, CASE WHEN w.inserted THEN 'created' WHEN w.was_live THEN 'updated'
                                  ELSE 'restored' END AS change,
                       true AS live, p_datapack[w.i] AS datapack, p_key[w.i] AS key,
                       p_identity[w.i] AS etag, p_version_id[w.i] AS version_id
                FROM unnest(w_id, w_i, w_new, w_live) AS w (id, i, inserted, was_live)
                ORDER BY w.id) AS f
            CROSS JOIN LATERAL (
                SELECT row_to_json(f)::text AS full_text, row_to_json(s)::text AS short_text
                FROM (SELECT f.id, f.change, f.live, f.etag, true AS truncated) AS s) AS t;
        END IF;
        RETURN v_outcome;
    END IF;
    WITH candidate AS MATERIALIZED (
        SELECT rs.id, rs.bucket, rs.object_key, rs.etag, rs.version_id, rs.sequencer, rs.event_time,
               rs.tie_rank, rs.deleted_at
        FROM (SELECT DISTINCT * FROM unnest(v_buckets, v_keys)) AS k (bucket, object_key)
        JOIN datapack_resource rs ON rs.bucket = k.bucket AND rs.object_key = k.object_key),
    placed AS (
        SELECT c.*, t.current_etag, t.current_version_id,
               t.object_key IS NOT NULL
                 AND NOT datapack_event_newer(c.sequencer, c.event_time, c.tie_rank,
                                              t.sequencer, t.event_time, t.tie_rank)
                 AS before_removal,
               t.sequencer AS t_sequencer, t.event_time AS t_event_time, t.tie_rank AS t_tie_rank
        FROM candidate c
        LEFT JOIN datapack_object_removal t ON t.bucket = c.bucket AND t.object_key = c.object_key
        WHERE c.deleted_at IS NULL OR c.etag = t.current_etag),
    decided AS (
        SELECT p.id, p.deleted_at IS NULL AS was_live, p.current_version_id,
               p.before_removal AND p.etag = p.current_etag AS survivor,
               CASE WHEN p.before_removal THEN
                   p.etag IS NOT DISTINCT FROM p.current_etag
                   AND NOT EXISTS (SELECT 1 FROM datapack_resource nw
                       WHERE nw.bucket = p.bucket AND nw.object_key = p.object_key
                         AND datapack_event_newer(nw.sequencer, nw.event_time, nw.tie_rank,
                                                  p.t_sequencer, p.t_event_time, p.t_tie_rank))
               ELSE
                   NOT EXISTS (SELECT 1 FROM datapack_resource nw
                       WHERE nw.bucket = p.bucket AND nw.object_key = p.object_key AND nw.id <> p.id
                         AND datapack_event_newer(nw.sequencer, nw.event_time, nw.tie_rank,
                                                  p.sequencer, p.event_time, p.tie_rank))
               END AS live
        FROM placed p),
    settled AS (
        UPDATE datapack_resource rs SET
            deleted_at = CASE WHEN d.live THEN NULL ELSE coalesce(rs.deleted_at, now()) END,
            -- The survivor's row names the version S3 shows: the same bytes may have been
            -- recorded from a version that is gone now.
            version_id = CASE WHEN d.live AND d.survivor
                              THEN coalesce(d.current_version_id, rs.version_id)
                              ELSE rs.version_id END
        FROM decided d
        WHERE rs.id = d.id
          AND (d.live <> d.was_live
               OR (d.live AND d.survivor AND d.current_version_id IS DISTINCT FROM rs.version_id
                   AND d.current_version_id IS NOT NULL))
        RETURNING rs.id, d.was_live, rs.deleted_at IS NULL AS live, rs.object_key, rs.etag,
                  rs.version_id, rs.datapack_id),
    written AS (
        SELECT * FROM unnest(w_id, w_i, w_new, w_live)
            AS w (id, i, inserted, was_live)),
    merged AS (
        SELECT coalesce(w.id, s.id) AS id,
               CASE WHEN w.id IS NULL THEN s.was_live WHEN w.inserted THEN NULL ELSE w.was_live END
                   AS was_live,
               w.id IS NOT NULL OR s.was_live = s.live AS rewritten,
               coalesce(s.live, true) AS live,
               coalesce((SELECT identifier FROM datapack WHERE id = s.datapack_id), p_datapack[w.i])
                   AS datapack,
               CASE WHEN s.id IS NULL THEN p_key[w.i] ELSE s.object_key END AS object_key,
               CASE WHEN s.id IS NULL THEN p_identity[w.i] ELSE s.etag END AS etag,
               CASE WHEN s.id IS NULL THEN p_version_id[w.i] ELSE s.version_id END AS version_id
        FROM written w FULL JOIN settled s ON s.id = w.id
        WHERE p_notify),
    announced AS (
        SELECT m.id, m.live, m.datapack, m.object_key AS key, m.etag, m.version_id,
               CASE WHEN m.was_live IS NULL THEN 'created'
                    WHEN m.was_live AND NOT m.live THEN 'deleted'
                    WHEN NOT m.was_live AND m.live THEN 'restored'
                    WHEN m.rewritten THEN 'updated' END AS change
        FROM merged m),
    payload AS (
        SELECT a.id, row_to_json(f)::text AS full_text,
               row_to_json(s)::text AS short_text
        FROM announced a
        CROSS JOIN LATERAL (SELECT a.id, a.change, a.live, a.datapack, a.key, a.etag,
                                   a.version_id) AS f
        CROSS JOIN LATERAL (SELECT a.id, a.change, a.live, a.etag, true AS truncated) AS s
        WHERE a.change IS NOT NULL
        ORDER BY a.id)
    SELECT count(pg_notify('datapack_resource_changed',
                           CASE WHEN octet_length(full_text) <= 7999 THEN full_text
                                ELSE short_text END))
    INTO v_announced FROM payload;
    RETURN v_outcome;
END
$fn$;
