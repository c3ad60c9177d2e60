//! Rows back into values, for every SQL backend: deliveries, envelopes, the delivery log,
//! instances. A backend implements [`Columns`] for its row type; the columns are named as in
//! [`DELIVERY_SELECT`] and the tables of each backend's schema (integers are 64-bit).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::{AttemptRecord, DeliveryRecord, DeliveryStatus, InstanceRecord, StoredEvent};
use chrono::{DateTime, Utc};
use evolution_events::{
    Channel, Delivery, DeliveryId, Destination, EventEnvelope, EventFormat, EventKind, InstanceName,
    InstanceSettings, NamingProfile, RawValue, Scope, Sensitive, TraceContext, Uuid,
};

// Delivery states (the `deliveries.state` column).
/// Pending and claimable once due: unordered, or the head of its ordering key with nothing of that
/// key in flight.
pub(crate) const READY: i64 = 0;
/// Claimed, not settled.
pub(crate) const IN_FLIGHT: i64 = 1;
/// Delivered; kept for the delivery log until pruned.
pub(crate) const DELIVERED: i64 = 2;
/// Given up.
pub(crate) const DEAD: i64 = 3;
/// Pending behind the head of its ordering key, or while its key is in flight.
pub(crate) const WAITING: i64 = 4;

/// Reading a row's columns by name; errors name the column.
pub(crate) trait Columns {
    /// A `TEXT` column.
    fn text(&self, column: &str) -> Result<String, String>;
    /// A nullable `TEXT` column.
    fn opt_text(&self, column: &str) -> Result<Option<String>, String>;
    /// A 64-bit integer column.
    fn int(&self, column: &str) -> Result<i64, String>;
    /// A nullable 64-bit integer column.
    fn opt_int(&self, column: &str) -> Result<Option<i64>, String>;
}

/// A duration in whole milliseconds (saturating).
pub(crate) fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A count or id as a database integer (saturating).
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Destinations as stored (JSON), serialized once per shared destination.
#[derive(Default)]
pub(crate) struct DestinationJson(HashMap<usize, Arc<str>>);

impl DestinationJson {
    /// The JSON of `destination` (of a delivery on `channel`).
    pub(crate) fn of(
        &mut self,
        channel: Channel,
        destination: &Arc<Destination>,
    ) -> Result<Arc<str>, String> {
        let ptr = Arc::as_ptr(destination) as usize;
        if let Some(text) = self.0.get(&ptr) {
            return Ok(Arc::clone(text));
        }
        let text: Arc<str> = serde_json::to_string(&**destination)
            .map_err(|e| {
                format!("could not serialize a {channel} destination: {e}; this is a bug, please report it")
            })?
            .into();
        self.0.insert(ptr, Arc::clone(&text));
        Ok(text)
    }
}

/// Columns of a delivery joined with its event, as [`Decoder::delivery`] reads them.
pub(crate) const DELIVERY_SELECT: &str = "SELECT d.id AS id, d.channel AS channel, d.scope AS scope, \
    d.destination AS destination, d.okey AS okey, d.attempts AS attempts, d.due_at AS due_at, \
    d.last_error AS last_error, d.state AS state, e.id AS eid, e.uuid AS uuid, e.instance AS instance, \
    e.kind AS kind, e.data AS data, e.date_time AS date_time, e.sender AS sender, \
    e.server_url AS server_url, e.apikey AS apikey, e.sequence AS sequence, e.profile AS profile, \
    e.traceparent AS traceparent, e.tracestate AS tracestate, e.format AS format \
    FROM deliveries d JOIN events e ON e.id = d.event_id";

pub(crate) fn scope_str(scope: Scope) -> &'static str {
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
pub(crate) fn channel_named(name: &str) -> Channel {
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

pub(crate) fn millis_to_time(ms: i64) -> Result<DateTime<Utc>, String> {
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
pub(crate) struct Decoder {
    events: HashMap<i64, Arc<EventEnvelope>>,
    destinations: HashMap<String, Arc<Destination>>,
    keys: HashMap<String, Arc<str>>,
}

impl Decoder {
    /// A row of [`DELIVERY_SELECT`]; `attempt` is the next attempt (stored attempts + 1), except for
    /// dead letters, whose `attempt` is the last one made.
    pub(crate) fn delivery(&mut self, row: &impl Columns) -> Result<Delivery, String> {
        let id = row.int("id")?;
        let attempts = row.int("attempts")?;
        let state = row.int("state")?;
        let destination = row.text("destination")?;
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
        let eid = row.int("eid")?;
        let envelope = match self.events.get(&eid) {
            Some(e) => Arc::clone(e),
            None => {
                let e = Arc::new(envelope(row)?);
                self.events.insert(eid, Arc::clone(&e));
                e
            }
        };
        let ordering_key = match row.opt_text("okey")? {
            None => None,
            Some(key) => Some(match self.keys.get(&key) {
                Some(shared) => Arc::clone(shared),
                None => {
                    let shared: Arc<str> = Arc::from(key.as_str());
                    self.keys.insert(key, Arc::clone(&shared));
                    shared
                }
            }),
        };
        let profile = row.text("profile")?;
        let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
        Ok(Delivery {
            body: None,
            id: DeliveryId::try_from(id).map_err(|e| format!("id: {e}"))?,
            channel: channel_named(&row.text("channel")?),
            scope: parse_scope(&row.text("scope")?)?,
            profile: NamingProfile::parse(&profile).map_err(|e| e.to_string())?,
            envelope,
            destination,
            ordering_key,
            attempt: if state == DEAD {
                attempts
            } else {
                attempts.saturating_add(1)
            },
        })
    }
}

/// The event of a row with the columns `uuid, instance, kind, data, date_time, sender, server_url,
/// apikey, sequence, traceparent, tracestate, format`.
pub(crate) fn envelope(row: &impl Columns) -> Result<EventEnvelope, String> {
    let uuid = row.text("uuid")?;
    let instance = row.text("instance")?;
    let kind = row.text("kind")?;
    let data = row.text("data")?;
    let date_time = row.int("date_time")?;
    let sequence = row.int("sequence")?;
    let data = RawValue::from_string(data).map_err(|e| format!("data: {e}"))?;
    Ok(EventEnvelope::new(
        EventKind::parse(&kind).map_err(|e| e.to_string())?,
        InstanceName::new(&instance).map_err(|e| e.to_string())?,
        data,
    )
    .with_id(Uuid::parse_str(&uuid).map_err(|e| format!("uuid: {e}"))?)
    .with_date_time(millis_to_time(date_time)?)
    .with_sender(row.opt_text("sender")?)
    .with_server_url(row.opt_text("server_url")?)
    .with_apikey(row.opt_text("apikey")?.map(Sensitive::new))
    .with_sequence(u64::try_from(sequence).unwrap_or(0))
    .with_trace(trace(row)?)
    .with_format(match row.opt_text("format")? {
        Some(format) => EventFormat::parse(&format).map_err(|e| e.to_string())?,
        None => EventFormat::Evolution,
    }))
}

/// The trace context of a row with the columns `traceparent, tracestate` (validated when stored).
fn trace(row: &impl Columns) -> Result<Option<TraceContext>, String> {
    let Some(traceparent) = row.opt_text("traceparent")? else {
        return Ok(None);
    };
    let tracestate = row.opt_text("tracestate")?;
    TraceContext::parse(&traceparent, tracestate.as_deref())
        .map(Some)
        .map_err(|e| format!("traceparent: {e}"))
}

/// An accepted event of a row with the columns of [`envelope`] and `profile`.
pub(crate) fn stored_event(row: &impl Columns) -> Result<StoredEvent, String> {
    let profile = row.text("profile")?;
    Ok(StoredEvent {
        envelope: Arc::new(envelope(row)?),
        profile: NamingProfile::parse(&profile).map_err(|e| e.to_string())?,
    })
}

/// One delivery of the delivery log (its attempts are added by the caller).
pub(crate) fn log_record(
    row: &impl Columns,
    labels: &mut HashMap<String, String>,
) -> Result<DeliveryRecord, String> {
    let destination = row.text("destination")?;
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
    let state = row.int("state")?;
    let status = state_status(state);
    let id = row.int("id")?;
    let attempts = row.int("attempts")?;
    let kind = row.text("kind")?;
    let instance = row.text("instance")?;
    let uuid = row.text("uuid")?;
    let sequence = row.int("sequence")?;
    Ok(DeliveryRecord {
        id: DeliveryId::try_from(id).map_err(|e| format!("id: {e}"))?,
        event_id: Uuid::parse_str(&uuid).map_err(|e| format!("uuid: {e}"))?,
        event: EventKind::parse(&kind).map_err(|e| e.to_string())?,
        instance: InstanceName::new(&instance).map_err(|e| e.to_string())?,
        sequence: u64::try_from(sequence).unwrap_or(0),
        channel: channel_named(&row.text("channel")?),
        scope: parse_scope(&row.text("scope")?)?,
        destination: label,
        status,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        last_error: row.opt_text("last_error")?,
        next_attempt_at: if status == DeliveryStatus::Pending {
            Some(millis_to_time(row.int("due_at")?)?)
        } else {
            None
        },
        created_at: millis_to_time(row.int("date_time")?)?,
        attempt_log: Vec::new(),
    })
}

/// One attempt of the delivery log, with its delivery's id.
pub(crate) fn attempt_record(row: &impl Columns) -> Result<(u64, AttemptRecord), String> {
    let id = row.int("delivery_id")?;
    let attempt = row.int("attempt")?;
    let outcome = row.text("outcome")?;
    let status = row.opt_int("status")?;
    let latency = row.int("latency_ms")?;
    Ok((
        u64::try_from(id).map_err(|e| format!("delivery_id: {e}"))?,
        AttemptRecord {
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            at: millis_to_time(row.int("at")?)?,
            outcome: match outcome.as_str() {
                "delivered" => "delivered",
                "retry" => "retry",
                "dead" => "dead",
                other => return Err(format!("unknown outcome `{other}`")),
            },
            status: status.and_then(|s| u16::try_from(s).ok()),
            error: row.opt_text("error")?,
            latency_ms: u64::try_from(latency).unwrap_or(0),
        },
    ))
}

/// An instance row (`id, name, token, settings, created_at`).
pub(crate) fn instance_record(row: &impl Columns) -> Result<InstanceRecord, String> {
    let id = row.text("id")?;
    let name = row.text("name")?;
    let token = row.text("token")?;
    let settings = row.text("settings")?;
    let value: serde_json::Value =
        serde_json::from_str(&settings).map_err(|e| format!("settings of `{name}`: {e}"))?;
    Ok(InstanceRecord {
        id: Uuid::parse_str(&id).map_err(|e| format!("id of `{name}`: {e}"))?,
        settings: InstanceSettings::from_json(&value).map_err(|e| format!("settings of `{name}`: {e}"))?,
        name: InstanceName::new(&name).map_err(|e| e.to_string())?,
        token: Sensitive::new(token),
        created_at: millis_to_time(row.int("created_at")?)?,
    })
}
