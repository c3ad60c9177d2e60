//! Reads (on the pool, never behind the ingest tasks), the instance store, and shared settings.

use std::collections::HashMap;
use std::time::Duration;

use evolution_events::{Channel, Delivery, InstanceName, InstanceSettings, Uuid};
use sqlx::Row;

use super::{DbError, Inner, NOW_MS};
use crate::rows::{
    DELIVERY_SELECT, Decoder, attempt_record, instance_record, log_record, stored_event, to_i64,
};
use crate::{
    AttemptRecord, ChannelStats, DeadLetter, DeliveryQuery, DeliveryRecord, InstanceRecord, StatusFilter,
    StoreError, StoredEvent,
};

/// The columns a stored event is read from (`stored_event` decodes them in this order).
const EVENT_COLUMNS: &str = "uuid, instance, kind, data, date_time, sender, server_url, apikey, sequence, profile, traceparent, tracestate, format";

pub(super) async fn next_due(inner: &Inner, channel: Channel) -> Result<Option<Duration>, DbError> {
    let wait: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT min(due_at) - {NOW_MS} FROM deliveries WHERE channel = $1 AND state = 0"
    ))
    .bind(channel.as_str())
    .fetch_one(&inner.pool)
    .await?;
    Ok(wait.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
}

pub(super) async fn stats(inner: &Inner, channel: Channel) -> Result<ChannelStats, DbError> {
    let (pending, in_flight, dead): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM deliveries WHERE channel = $1 AND state = 0) \
              + (SELECT count(*) FROM deliveries WHERE channel = $1 AND okey IS NOT NULL AND state = 4), \
                (SELECT count(*) FROM deliveries WHERE channel = $1 AND state = 1), \
                (SELECT count(*) FROM deliveries WHERE channel = $1 AND state = 3)",
    )
    .bind(channel.as_str())
    .fetch_one(&inner.pool)
    .await?;
    let count = |n: i64| usize::try_from(n).unwrap_or(0);
    Ok(ChannelStats {
        pending: count(pending),
        in_flight: count(in_flight),
        dead: count(dead),
    })
}

pub(super) async fn dead_letters(
    inner: &Inner,
    channel: Option<Channel>,
    limit: usize,
) -> Result<Vec<DeadLetter>, DbError> {
    let rows = sqlx::query(&format!(
        "{DELIVERY_SELECT} WHERE d.state = 3 AND ($1::text IS NULL OR d.channel = $1) \
         ORDER BY d.updated_at, d.id LIMIT $2"
    ))
    .bind(channel.map(Channel::as_str))
    .bind(to_i64(limit as u64))
    .fetch_all(&inner.pool)
    .await?;
    let mut decoder = Decoder::default();
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        match decoder.delivery(row) {
            Ok(delivery) => out.push(DeadLetter {
                delivery,
                error: row
                    .try_get::<Option<String>, _>("last_error")?
                    .unwrap_or_default(),
            }),
            Err(error) => {
                let id: i64 = row.try_get("id")?;
                tracing::warn!(delivery = id, %error, "skipping an unreadable dead letter");
            }
        }
    }
    Ok(out)
}

pub(super) async fn event(
    inner: &Inner,
    instance: &InstanceName,
    id: Uuid,
) -> Result<Option<StoredEvent>, DbError> {
    let row = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE uuid = $1 AND instance = $2 LIMIT 1"
    ))
    .bind(id.to_string())
    .bind(instance.as_str())
    .fetch_optional(&inner.pool)
    .await?;
    row.map(|row| stored_event(&row).map_err(DbError::Invalid))
        .transpose()
}

pub(super) async fn events_after(
    inner: &Inner,
    instance: &InstanceName,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, DbError> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE instance = $1 AND sequence > $2 ORDER BY sequence LIMIT $3"
    ))
    .bind(instance.as_str())
    .bind(to_i64(after))
    .bind(to_i64(limit as u64))
    .fetch_all(&inner.pool)
    .await?;
    rows.iter()
        .map(|row| stored_event(row).map_err(DbError::Invalid))
        .collect()
}

pub(super) async fn deliveries_after(
    inner: &Inner,
    channel: Channel,
    after: Uuid,
    instance: Option<&InstanceName>,
    limit: usize,
) -> Result<Option<Vec<Delivery>>, DbError> {
    let instance = instance.map(InstanceName::as_str);
    let from: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM events WHERE uuid = $1 AND ($2::text IS NULL OR instance = $2) LIMIT 1",
    )
    .bind(after.to_string())
    .bind(instance)
    .fetch_optional(&inner.pool)
    .await?;
    let Some(from) = from else {
        return Ok(None);
    };
    let rows = sqlx::query(&format!(
        "{DELIVERY_SELECT} WHERE d.event_id > $1 AND d.channel = $2 AND ($3::text IS NULL OR e.instance = $3) \
         ORDER BY d.event_id, d.id LIMIT $4"
    ))
    .bind(from)
    .bind(channel.as_str())
    .bind(instance)
    .bind(to_i64(limit as u64))
    .fetch_all(&inner.pool)
    .await?;
    let mut decoder = Decoder::default();
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        match decoder.delivery(row) {
            Ok(delivery) => out.push(delivery),
            Err(error) => {
                let id: i64 = row.try_get("id")?;
                tracing::warn!(delivery = id, %error, "skipping an unreadable delivery to replay");
            }
        }
    }
    Ok(Some(out))
}

pub(super) async fn deliveries(inner: &Inner, query: &DeliveryQuery) -> Result<Vec<DeliveryRecord>, DbError> {
    let status = match query.status {
        None => "TRUE",
        Some(StatusFilter::Pending) => "d.state IN (0, 1, 4)",
        Some(StatusFilter::Failed) => "d.state IN (0, 4) AND d.attempts > 0",
        Some(StatusFilter::Dead) => "d.state = 3",
        Some(StatusFilter::Delivered) => "d.state = 2",
    };
    let rows = sqlx::query(&format!(
        "SELECT d.id AS id, d.channel AS channel, d.scope AS scope, d.destination AS destination, \
         d.attempts AS attempts, d.due_at AS due_at, d.last_error AS last_error, d.state AS state, \
         e.uuid AS uuid, e.instance AS instance, e.kind AS kind, e.date_time AS date_time, \
         e.sequence AS sequence \
         FROM deliveries d JOIN events e ON e.id = d.event_id \
         WHERE {status} AND ($1::text IS NULL OR e.instance = $1) AND ($2::text IS NULL OR d.channel = $2) \
         ORDER BY d.id DESC LIMIT $3"
    ))
    .bind(query.instance.as_ref().map(InstanceName::as_str))
    .bind(query.channel.map(Channel::as_str))
    .bind(to_i64(query.limit as u64))
    .fetch_all(&inner.pool)
    .await?;
    let mut records = Vec::with_capacity(rows.len());
    let mut labels: HashMap<String, String> = HashMap::new();
    for row in &rows {
        match log_record(row, &mut labels) {
            Ok(record) => records.push(record),
            Err(error) => {
                let id: i64 = row.try_get("id")?;
                tracing::warn!(delivery = id, %error, "skipping an unreadable delivery in the log");
            }
        }
    }
    if records.is_empty() {
        return Ok(records);
    }
    let ids: Vec<i64> = records.iter().map(|r| to_i64(r.id)).collect();
    let rows = sqlx::query(
        "SELECT delivery_id, attempt, at, outcome, status, error, latency_ms FROM attempts \
         WHERE delivery_id = ANY($1) ORDER BY delivery_id, id",
    )
    .bind(&ids)
    .fetch_all(&inner.pool)
    .await?;
    let mut logs: HashMap<u64, Vec<AttemptRecord>> = HashMap::new();
    for row in &rows {
        match attempt_record(row) {
            Ok((id, record)) => logs.entry(id).or_default().push(record),
            Err(error) => tracing::warn!(%error, "skipping an unreadable attempt in the log"),
        }
    }
    for record in &mut records {
        record.attempt_log = logs.remove(&record.id).unwrap_or_default();
    }
    Ok(records)
}

pub(super) async fn instances(inner: &Inner) -> Result<Vec<InstanceRecord>, DbError> {
    let rows = sqlx::query("SELECT id, name, token, settings, created_at FROM instances ORDER BY name")
        .fetch_all(&inner.pool)
        .await?;
    rows.iter()
        .map(|row| instance_record(row).map_err(DbError::Invalid))
        .collect()
}

pub(super) async fn create_instance(inner: &Inner, record: &InstanceRecord) -> Result<(), StoreError> {
    let settings = serde_json::to_string(&record.settings).map_err(|e| {
        StoreError::Storage(format!(
            "could not serialize the settings of `{}`: {e}",
            record.name
        ))
    })?;
    let created = sqlx::query(
        "WITH created AS (INSERT INTO instances (id, name, token, settings, created_at) \
           VALUES ($1, $2, $3, $4, $5) RETURNING name) \
         SELECT pg_notify($6, name) FROM created",
    )
    .bind(record.id.to_string())
    .bind(record.name.as_str())
    .bind(record.token.expose())
    .bind(settings)
    .bind(record.created_at.timestamp_millis())
    .bind(&inner.instances_topic)
    .execute(&inner.pool)
    .await;
    match created {
        Ok(_) => {
            inner.changes.send_modify(|n| *n = n.wrapping_add(1));
            Ok(())
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
            Err(StoreError::Conflict(record.name.to_string()))
        }
        Err(e) => Err(inner.store_error("store the instance", &DbError::Db(e))),
    }
}

pub(super) async fn update_settings(
    inner: &Inner,
    name: &InstanceName,
    settings: &InstanceSettings,
) -> Result<bool, DbError> {
    let settings = serde_json::to_string(settings)
        .map_err(|e| DbError::Invalid(format!("could not serialize the settings of `{name}`: {e}")))?;
    let changed = sqlx::query(
        "WITH changed AS (UPDATE instances SET settings = $2 WHERE name = $1 RETURNING name) \
         SELECT pg_notify($3, name) FROM changed",
    )
    .bind(name.as_str())
    .bind(settings)
    .bind(&inner.instances_topic)
    .fetch_all(&inner.pool)
    .await?
    .len();
    inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    Ok(changed > 0)
}

pub(super) async fn delete_instance(inner: &Inner, name: &InstanceName) -> Result<bool, DbError> {
    let deleted = sqlx::query(
        "WITH deleted AS (DELETE FROM instances WHERE name = $1 RETURNING name) \
         SELECT pg_notify($2, name) FROM deleted",
    )
    .bind(name.as_str())
    .bind(&inner.instances_topic)
    .fetch_all(&inner.pool)
    .await?
    .len();
    inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    Ok(deleted > 0)
}

pub(super) async fn shared_setting(inner: &Inner, name: &str, value: &str) -> Result<String, DbError> {
    sqlx::query("INSERT INTO shared_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(value)
        .execute(&inner.pool)
        .await?;
    let stored: String = sqlx::query_scalar("SELECT value FROM shared_settings WHERE name = $1")
        .bind(name)
        .fetch_one(&inner.pool)
        .await?;
    Ok(stored)
}
