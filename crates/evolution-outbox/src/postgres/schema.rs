//! The schema of the PostgreSQL outbox: its name, and migrations run under an advisory lock so that
//! replicas starting at the same moment migrate once.

use sqlx::{Connection, Executor, PgConnection};

use super::{DbError, lock_id};

/// The migrations, in order; `schema_version.version` counts those applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_outbox.sql"),
    include_str!("../../migrations/postgres/0002_event_sequence.sql"),
    include_str!("../../migrations/postgres/0003_trace_context_and_format.sql"),
];

/// The default schema of the outbox's tables.
pub const DEFAULT_SCHEMA: &str = "evolution_events";

/// Checks a schema name: a plain lower-case identifier (letters, digits, `_`; not starting with a
/// digit; at most 63 bytes), so that it is the same quoted or not.
pub(super) fn check_schema(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid schema name: use 1 to 63 lower-case letters, digits or `_`, not \
             starting with a digit"
        ))
    }
}

/// Creates the schema if needed and applies the migrations it lacks, in one transaction under an
/// advisory lock of the schema (a replica starting at the same time waits, then finds it done).
///
/// Scripts of several statements run as plain `&str` queries (PostgreSQL's simple protocol):
/// sqlx's `raw_sql` futures are not recognisably `Send` for every lifetime, which a caller's
/// `tokio::spawn` needs.
pub(super) async fn migrate(conn: &mut PgConnection, schema: &str) -> Result<(), DbError> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_id(schema, "migrate", ""))
        .execute(&mut *tx)
        .await?;
    // `schema` was checked by `check_schema`: a plain identifier.
    let create = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema}; \
         CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL); \
         INSERT INTO schema_version (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM schema_version);"
    );
    (&mut *tx).execute(create.as_str()).await?;
    let (applied,): (i64,) = sqlx::query_as("SELECT version FROM schema_version")
        .fetch_one(&mut *tx)
        .await?;
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(DbError::Invalid(format!(
            "the schema `{schema}` was migrated by a newer version of evolution events (schema version \
             {applied}, this one knows {}): upgrade this server, or use another schema",
            MIGRATIONS.len()
        )));
    }
    for n in applied..MIGRATIONS.len() {
        let migration: &'static str = MIGRATIONS.get(n).copied().unwrap_or_default();
        (&mut *tx).execute(migration).await?;
        sqlx::query("UPDATE schema_version SET version = $1")
            .bind(i64::try_from(n + 1).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
