//! Rows back into values: deliveries, envelopes, the delivery log, instances.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use chrono::{DateTime, Utc};
use evolution_events::{
    Channel, Delivery, DeliveryId, Destination, EventEnvelope, EventKind, InstanceName, InstanceSettings,
    NamingProfile, RawValue, Scope, Sensitive, Uuid,
};
use rusqlite::Row;
use rusqlite::types::FromSql;

use super::{DEAD, DELIVERED, IN_FLIGHT};
use crate::{AttemptRecord, DeliveryRecord, DeliveryStatus, InstanceRecord};

/// Columns of a delivery joined with its event, as [`Decoder::delivery`] reads them.
pub(super) const DELIVERY_SELECT: &str = "SELECT d.id AS id, d.channel AS channel, d.scope AS scope, \
    d.destination AS destination, d.okey AS okey, d.attempts AS attempts, d.due_at AS due_at, \
    d.last_error AS last_error, d.state AS state, e.id AS eid, e.uuid AS uuid, e.instance AS instance, \
    e.kind AS kind, e.data AS data, e.date_time AS date_time, e.sender AS sender, \
    e.server_url AS server_url, e.apikey AS apikey, e.sequence AS sequence, e.profile AS profile \
    FROM deliveries d JOIN events e ON e.id = d.event_id";

/// A column of `row`, or a message naming it.
pub(super) fn get<T: FromSql>(row: &Row<'_>, column: &str) -> Result<T, String> {
    row.get(column).map_err(|e| format!("column {column}: {e}"))
}

pub(super) fn scope_str(scope: Scope) -> &'static str {
    match scope {
        Scope::Instance => "instance",
        Scope::Global => "global",
    }
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    match s {
        "instance" => Ok(Scope::Instance),
        "global" => Ok(Scope::Global),
        other => Err(format!("unknown scope `{other}`")),
    }
}

/// The channel stored as `name`: a built-in one, or a custom channel (names interned once each).
pub(super) fn channel_named(name: &str) -> Channel {
    if let Ok(channel) = Channel::parse_built_in(name) {
        return channel;
    }
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return Channel::Custom(known);
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    Channel::Custom(leaked)
}

pub(super) fn millis_to_time(ms: i64) -> Result<DateTime<Utc>, String> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| format!("timestamp {ms} is out of range"))
}

fn state_status(state: i64) -> DeliveryStatus {
    match state {
        IN_FLIGHT => DeliveryStatus::InFlight,
        DELIVERED => DeliveryStatus::Delivered,
        DEAD => DeliveryStatus::Dead,
        _ => DeliveryStatus::Pending,
    }
}

/// Rebuilds deliveries from rows, sharing one envelope per event and one destination per distinct
/// destination.
#[derive(Default)]
pub(super) struct Decoder {
    events: HashMap<i64, Arc<EventEnvelope>>,
    destinations: HashMap<String, Arc<Destination>>,
}

impl Decoder {
    /// A row of [`DELIVERY_SELECT`]; `attempt` is the next attempt (stored attempts + 1), except for
    /// dead letters, whose `attempt` is the last one made.
    pub(super) fn delivery(&mut self, row: &Row<'_>) -> Result<Delivery, String> {
        let id: i64 = get(row, "id")?;
        let attempts: i64 = get(row, "attempts")?;
        let state: i64 = get(row, "state")?;
        let destination: String = get(row, "destination")?;
        let destination = match self.destinations.get(&destination) {
            Some(d) => Arc::clone(d),
            None => {
                let parsed: Destination =
                    serde_json::from_str(&destination).map_err(|e| format!("destination: {e}"))?;
                let parsed = Arc::new(parsed);
                self.destinations.insert(destination, Arc::clone(&parsed));
                parsed
            }
        };
        let eid: i64 = get(row, "eid")?;
        let envelope = match self.events.get(&eid) {
            Some(e) => Arc::clone(e),
            None => {
                let e = Arc::new(envelope(row)?);
                self.events.insert(eid, Arc::clone(&e));
                e
            }
        };
        let profile: String = get(row, "profile")?;
        let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
        Ok(Delivery {
            id: DeliveryId::try_from(id).map_err(|e| format!("id: {e}"))?,
            channel: channel_named(&get::<String>(row, "channel")?),
            scope: parse_scope(&get::<String>(row, "scope")?)?,
            profile: NamingProfile::parse(&profile).map_err(|e| e.to_string())?,
            envelope,
            destination,
            attempt: if state == DEAD {
                attempts
            } else {
                attempts.saturating_add(1)
            },
        })
    }
}

/// The event of a row with the columns `uuid, instance, kind, data, date_time, sender, server_url,
/// apikey, sequence`.
pub(super) fn envelope(row: &Row<'_>) -> Result<EventEnvelope, String> {
    let uuid: String = get(row, "uuid")?;
    let instance: String = get(row, "instance")?;
    let kind: String = get(row, "kind")?;
    let data: String = get(row, "data")?;
    let date_time: i64 = get(row, "date_time")?;
    let sequence: i64 = get(row, "sequence")?;
    let data = RawValue::from_string(data).map_err(|e| format!("data: {e}"))?;
    Ok(EventEnvelope::new(
        EventKind::parse(&kind).map_err(|e| e.to_string())?,
        InstanceName::new(&instance).map_err(|e| e.to_string())?,
        data,
    )
    .with_id(Uuid::parse_str(&uuid).map_err(|e| format!("uuid: {e}"))?)
    .with_date_time(millis_to_time(date_time)?)
    .with_sender(get(row, "sender")?)
    .with_server_url(get(row, "server_url")?)
    .with_apikey(get::<Option<String>>(row, "apikey")?.map(Sensitive::new))
    .with_sequence(u64::try_from(sequence).unwrap_or(0)))
}

/// One delivery of the delivery log (its attempts are added by the caller).
pub(super) fn log_record(
    row: &Row<'_>,
    labels: &mut HashMap<String, String>,
) -> Result<DeliveryRecord, String> {
    let destination: String = get(row, "destination")?;
    let label = match labels.get(&destination) {
        Some(label) => label.clone(),
        None => {
            let parsed: Destination =
                serde_json::from_str(&destination).map_err(|e| format!("destination: {e}"))?;
            let label = parsed.label();
            labels.insert(destination, label.clone());
            label
        }
    };
    let state: i64 = get(row, "state")?;
    let status = state_status(state);
    let id: i64 = get(row, "id")?;
    let attempts: i64 = get(row, "attempts")?;
    let kind: String = get(row, "kind")?;
    let instance: String = get(row, "instance")?;
    let uuid: String = get(row, "uuid")?;
    let sequence: i64 = get(row, "sequence")?;
    Ok(DeliveryRecord {
        id: DeliveryId::try_from(id).map_err(|e| format!("id: {e}"))?,
        event_id: Uuid::parse_str(&uuid).map_err(|e| format!("uuid: {e}"))?,
        event: EventKind::parse(&kind).map_err(|e| e.to_string())?,
        instance: InstanceName::new(&instance).map_err(|e| e.to_string())?,
        sequence: u64::try_from(sequence).unwrap_or(0),
        channel: channel_named(&get::<String>(row, "channel")?),
        scope: parse_scope(&get::<String>(row, "scope")?)?,
        destination: label,
        status,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        last_error: get(row, "last_error")?,
        next_attempt_at: if status == DeliveryStatus::Pending {
            Some(millis_to_time(get(row, "due_at")?)?)
        } else {
            None
        },
        created_at: millis_to_time(get(row, "date_time")?)?,
        attempt_log: Vec::new(),
    })
}

/// One attempt of the delivery log, with its delivery's id.
pub(super) fn attempt_record(row: &Row<'_>) -> Result<(u64, AttemptRecord), String> {
    let id: i64 = get(row, "delivery_id")?;
    let attempt: i64 = get(row, "attempt")?;
    let outcome: String = get(row, "outcome")?;
    let status: Option<i64> = get(row, "status")?;
    let latency: i64 = get(row, "latency_ms")?;
    Ok((
        u64::try_from(id).map_err(|e| format!("delivery_id: {e}"))?,
        AttemptRecord {
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            at: millis_to_time(get(row, "at")?)?,
            outcome: match outcome.as_str() {
                "delivered" => "delivered",
                "retry" => "retry",
                "dead" => "dead",
                other => return Err(format!("unknown outcome `{other}`")),
            },
            status: status.and_then(|s| u16::try_from(s).ok()),
            error: get(row, "error")?,
            latency_ms: u64::try_from(latency).unwrap_or(0),
        },
    ))
}

/// An instance row (`id, name, token, settings, created_at`).
pub(super) fn instance_record(row: &Row<'_>) -> Result<InstanceRecord, String> {
    let id: String = get(row, "id")?;
    let name: String = get(row, "name")?;
    let token: String = get(row, "token")?;
    let settings: String = get(row, "settings")?;
    let value: serde_json::Value =
        serde_json::from_str(&settings).map_err(|e| format!("settings of `{name}`: {e}"))?;
    Ok(InstanceRecord {
        id: Uuid::parse_str(&id).map_err(|e| format!("id of `{name}`: {e}"))?,
        settings: InstanceSettings::from_json(&value).map_err(|e| format!("settings of `{name}`: {e}"))?,
        name: InstanceName::new(&name).map_err(|e| e.to_string())?,
        token: Sensitive::new(token),
        created_at: millis_to_time(get(row, "created_at")?)?,
    })
}
