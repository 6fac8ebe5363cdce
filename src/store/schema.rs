//! The schema the writes need, checked against the database: every table, column, constraint
//! and function the statements of [`crate::store::write`] name.
//!
//! Migrations being recorded as applied says nothing about a column dropped by hand since: with
//! one gone, every write fails and, before this check, every message was dead-lettered. Checked
//! at start (the process refuses to run), after `migrate`, and in the readiness probe, so a
//! database that drifts is the database's fault (paused, not ready) and never a message's.

use sqlx::PgConnection;

/// Each table's columns the writes read or write.
const COLUMNS: &[(&str, &[&str])] = &[
    ("datapack", &["id", "identifier"]),
    (
        "datapack_resource",
        &[
            "id",
            "datapack_id",
            "bucket",
            "object_key",
            "path",
            "display",
            "content_type",
            "length",
            "etag",
            "sha256",
            "sha256_source",
            "submitter_name",
            "submitter_email",
            "object_last_modified",
            "version_id",
            "sequencer",
            "event_time",
            "ingested_at",
            "deleted_at",
        ],
    ),
    (
        "datapack_object_removal",
        &[
            "bucket",
            "object_key",
            "sequencer",
            "event_time",
            "version_id",
            "current_etag",
            "current_version_id",
            "recorded_at",
        ],
    ),
];

/// Constraints named by `ON CONFLICT ON CONSTRAINT`.
const CONSTRAINTS: &[(&str, &str)] = &[("datapack_resource", "datapack_resource_upload_key")];

/// Functions the statements call, with their argument types.
const FUNCTIONS: &[&str] = &[
    "datapack_event_newer(text, timestamp with time zone, text, timestamp with time zone)",
    WRITE_BATCH,
];

/// The write path's one statement (migration `write_batch`), by its signature.
pub(crate) const WRITE_BATCH: &str = "datapack_write_batch(bigint[], boolean[], text[], text[], \
    text[], timestamp with time zone[], text[], smallint[], text[], text[], text[], text[], \
    bigint[], text[], text[], text[], text[], timestamp with time zone[], text[], text[], boolean, \
    boolean)";

/// What the database lacks, one readable name each, looked up in the catalog (which, unlike
/// `information_schema`, shows every column whatever this role's privileges on it) (`datapack_resource.sha256`,
/// `function datapack_event_newer(…)`); empty when the schema serves the writes.
pub(crate) async fn missing(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    let (tables, columns): (Vec<&str>, Vec<&str>) = COLUMNS
        .iter()
        .flat_map(|(t, cs)| cs.iter().map(move |c| (*t, *c)))
        .unzip();
    let mut missing: Vec<String> = sqlx::query_scalar(
        "SELECT w.t || '.' || w.c
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS w (t, c, n)
         WHERE NOT EXISTS (
             SELECT 1 FROM pg_attribute a
             WHERE a.attrelid = to_regclass(w.t) AND a.attname = w.c
               AND a.attnum > 0 AND NOT a.attisdropped)
         ORDER BY w.n",
    )
    .bind(&tables)
    .bind(&columns)
    .fetch_all(&mut *conn)
    .await?;
    let (tables, names): (Vec<&str>, Vec<&str>) = CONSTRAINTS.iter().copied().unzip();
    let constraints: Vec<String> = sqlx::query_scalar(
        "SELECT 'constraint ' || w.t || '.' || w.c
         FROM unnest($1::text[], $2::text[]) AS w (t, c)
         WHERE NOT EXISTS (
             SELECT 1 FROM pg_constraint k JOIN pg_class r ON r.oid = k.conrelid
             WHERE r.oid = to_regclass(w.t) AND k.conname = w.c)",
    )
    .bind(&tables)
    .bind(&names)
    .fetch_all(&mut *conn)
    .await?;
    let functions: Vec<String> = sqlx::query_scalar(
        "SELECT 'function ' || f FROM unnest($1::text[]) AS f
         WHERE to_regprocedure(f) IS NULL",
    )
    .bind(FUNCTIONS)
    .fetch_all(&mut *conn)
    .await?;
    missing.extend(constraints);
    missing.extend(functions);
    Ok(missing)
}

/// The sentence for a log line or an exit message.
pub(crate) fn describe(missing: &[String]) -> String {
    format!(
        "the database schema lacks what this version writes: {} (run `datapack-worker migrate`, \
         or restore what was dropped by hand)",
        missing.join(", ")
    )
}

/// A schema that lacks something the writes need.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.0))]
pub(crate) struct Drift(pub Vec<String>);
