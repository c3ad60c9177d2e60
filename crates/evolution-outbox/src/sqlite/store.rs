//! The instance store's writes (run by the writer) and its read.

use evolution_events::{InstanceName, InstanceSettings};
use rusqlite::{Connection, ErrorCode, params};

use super::decode::instance_record;
use super::writer::{WriteError, db};
use crate::InstanceRecord;

pub(super) fn create_instance(conn: &Connection, record: &InstanceRecord) -> Result<(), WriteError> {
    let settings = serde_json::to_string(&record.settings).map_err(|e| {
        WriteError::Storage(format!(
            "could not serialize the settings of instance {}: {e}",
            record.name
        ))
    })?;
    let result = conn.execute(
        "INSERT INTO instances (id, name, token, settings, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            record.id.to_string(),
            record.name.as_str(),
            record.token.expose(),
            settings,
            record.created_at.timestamp_millis(),
        ],
    );
    match result {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::ConstraintViolation => {
            Err(WriteError::Conflict(record.name.to_string()))
        }
        Err(e) => Err(db("store the instance")(e)),
    }
}

pub(super) fn update_settings(
    conn: &Connection,
    name: &InstanceName,
    settings: &InstanceSettings,
) -> Result<bool, WriteError> {
    let json = serde_json::to_string(settings).map_err(|e| {
        WriteError::Storage(format!(
            "could not serialize the settings of instance {name}: {e}"
        ))
    })?;
    let changed = conn
        .execute(
            "UPDATE instances SET settings = ?2 WHERE name = ?1",
            params![name.as_str(), json],
        )
        .map_err(db("update the settings of the instance"))?;
    Ok(changed > 0)
}

pub(super) fn delete_instance(conn: &Connection, name: &InstanceName) -> Result<bool, WriteError> {
    let deleted = conn
        .execute("DELETE FROM instances WHERE name = ?1", [name.as_str()])
        .map_err(db("delete the instance"))?;
    Ok(deleted > 0)
}

/// Every instance, by name; an unreadable row is an error naming it.
pub(super) fn instances(conn: &Connection) -> Result<Result<Vec<InstanceRecord>, String>, rusqlite::Error> {
    let mut statement =
        conn.prepare_cached("SELECT id, name, token, settings, created_at FROM instances ORDER BY name")?;
    let mut rows = statement.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        match instance_record(row) {
            Ok(record) => out.push(record),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(out))
}
