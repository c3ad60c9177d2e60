//! The event envelope and its payload.

use std::sync::OnceLock;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::format::{DEFAULT_SOURCE, EventFormat};
use crate::instance::InstanceName;
use crate::kind::EventKind;
use crate::naming::NamingProfile;
use crate::secret::Sensitive;
use crate::trace::TraceContext;

/// One event, as accepted from a producer.
///
/// The JSON payload is serialized at most once per naming profile (lazily, on first use) into
/// shared [`Bytes`]; every delivery of the event shares it. Field order of the payload:
/// `{"id","event","instance","data","date_time","sender","server_url","apikey","sequence"}`.
#[derive(Clone, Debug)]
pub struct EventEnvelope {
    id: Uuid,
    kind: EventKind,
    instance: InstanceName,
    data: Box<RawValue>,
    date_time: DateTime<Utc>,
    sender: Option<String>,
    server_url: Option<String>,
    apikey: Option<Sensitive>,
    sequence: u64,
    trace: Option<TraceContext>,
    format: EventFormat,
    payloads: [OnceLock<Bytes>; 2],
    cloudevent: OnceLock<Bytes>,
    evolution: EvolutionCache,
    /// `data` without the media's base64 ([`without_media`]); `None` inside: `data` has none.
    stripped: OnceLock<Option<Box<RawValue>>>,
    /// The payloads of `stripped`, per profile.
    stripped_payloads: [OnceLock<Bytes>; 2],
}

/// The `evolution-v2` payload of one channel: the fields Evolution API 2.3.6 sends on it, in its
/// order (`event`, `instance`, `data`, …), then this system's `id` and `sequence`. `sender` and
/// `server_url` are left out when unknown, as Evolution API does; `date_time` is true UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvolutionWire<'a> {
    /// WebSocket, RabbitMQ, NATS: `{event, instance, data, server_url, date_time, sender, apikey}`.
    Plain,
    /// Webhook: `{event, instance, data, destination, date_time, sender, server_url, apikey}`.
    Webhook {
        /// The instance's webhook URL (without the byEvents segment), or the global URL with it.
        destination: &'a str,
        /// Keep the media's base64 in `data` (the webhook's `base64`; see
        /// [`EventEnvelope::payload_media`]).
        media: bool,
    },
    /// Pusher: as the webhook, `destination` being the app id.
    Pusher {
        /// The Pusher app id.
        destination: &'a str,
    },
    /// SQS: `{event, instance, dataType: "json", data, server, server_url, date_time, sender, apikey}`.
    Sqs {
        /// `SERVER_NAME`.
        server: &'a str,
    },
    /// Kafka: `{event, instance, data, server_url, date_time, sender, apikey, timestamp}`,
    /// `timestamp` in milliseconds since the epoch.
    Kafka,
}

/// The `evolution-v2` payloads, each serialized once: the shared head (`{"event","instance"` and
/// `"data"`) and tail (`"date_time"` … `"sequence"}`) of the webhook and Pusher bodies, between
/// which each destination's `"destination"` goes, and the whole bodies of the other channels.
#[derive(Clone, Debug, Default)]
struct EvolutionCache {
    head: OnceLock<Bytes>,
    head_stripped: OnceLock<Bytes>,
    tail: OnceLock<Bytes>,
    plain: OnceLock<Bytes>,
    kafka: OnceLock<Bytes>,
    sqs: OnceLock<(String, Bytes)>,
}

#[derive(Serialize)]
struct Payload<'a> {
    id: &'a Uuid,
    event: &'static str,
    instance: &'a str,
    data: &'a RawValue,
    date_time: String,
    sender: Option<&'a str>,
    server_url: Option<&'a str>,
    apikey: Option<&'a str>,
    sequence: u64,
}

impl EventEnvelope {
    /// A new event with a fresh UUIDv7 `id`, `date_time` = now (UTC), sequence 0 (the outbox
    /// assigns the per-instance sequence when it accepts the event).
    #[must_use]
    pub fn new(kind: EventKind, instance: InstanceName, data: Box<RawValue>) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind,
            instance,
            data,
            date_time: Utc::now(),
            sender: None,
            server_url: None,
            apikey: None,
            sequence: 0,
            trace: None,
            format: EventFormat::Evolution,
            payloads: [OnceLock::new(), OnceLock::new()],
            cloudevent: OnceLock::new(),
            evolution: EvolutionCache::default(),
            stripped: OnceLock::new(),
            stripped_payloads: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// Sets the id (restoring a stored event).
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self.reset();
        self
    }

    /// Sets the time (restoring a stored event).
    #[must_use]
    pub fn with_date_time(mut self, date_time: DateTime<Utc>) -> Self {
        self.date_time = date_time;
        self.reset();
        self
    }

    /// Sets `sender` (the instance's own JID).
    #[must_use]
    pub fn with_sender(mut self, sender: Option<String>) -> Self {
        self.sender = sender;
        self.reset();
        self
    }

    /// Sets `server_url` (`SERVER_URL`).
    #[must_use]
    pub fn with_server_url(mut self, server_url: Option<String>) -> Self {
        self.server_url = server_url;
        self.reset();
        self
    }

    /// Sets `apikey`: the instance token, only when `AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES=true`.
    #[must_use]
    pub fn with_apikey(mut self, apikey: Option<Sensitive>) -> Self {
        self.apikey = apikey;
        self.reset();
        self
    }

    /// Sets the per-instance sequence.
    #[must_use]
    pub fn with_sequence(mut self, sequence: u64) -> Self {
        self.sequence = sequence;
        self.reset();
        self
    }

    /// Sets the W3C trace context the event belongs to (its ingest span's; see
    /// [`crate::trace`]). It is not part of the payload: each channel carries it in its headers.
    #[must_use]
    pub fn with_trace(mut self, trace: Option<TraceContext>) -> Self {
        self.trace = trace;
        self.cloudevent = OnceLock::new();
        self
    }

    /// Sets the format its deliveries are written in ([`EventFormat`]).
    #[must_use]
    pub fn with_format(mut self, format: EventFormat) -> Self {
        self.format = format;
        self
    }

    fn reset(&mut self) {
        self.payloads = [OnceLock::new(), OnceLock::new()];
        self.cloudevent = OnceLock::new();
        self.evolution = EvolutionCache::default();
        self.stripped = OnceLock::new();
        self.stripped_payloads = [OnceLock::new(), OnceLock::new()];
    }

    /// The id (UUIDv7): the idempotency key on every channel.
    #[must_use]
    pub fn id(&self) -> Uuid {
        self.id
    }
    /// The kind.
    #[must_use]
    pub fn kind(&self) -> EventKind {
        self.kind
    }
    /// The instance.
    #[must_use]
    pub fn instance(&self) -> &InstanceName {
        &self.instance
    }
    /// The `data` JSON, as given.
    #[must_use]
    pub fn data(&self) -> &RawValue {
        &self.data
    }
    /// When the event was accepted (UTC).
    #[must_use]
    pub fn date_time(&self) -> DateTime<Utc> {
        self.date_time
    }
    /// The payload's `date_time`: RFC 3339, UTC, milliseconds (`2025-10-21T11:40:39.123Z`).
    #[must_use]
    pub fn date_time_text(&self) -> String {
        self.date_time.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
    /// `sender`.
    #[must_use]
    pub fn sender(&self) -> Option<&str> {
        self.sender.as_deref()
    }
    /// `server_url`.
    #[must_use]
    pub fn server_url(&self) -> Option<&str> {
        self.server_url.as_deref()
    }
    /// `apikey`.
    #[must_use]
    pub fn apikey(&self) -> Option<&Sensitive> {
        self.apikey.as_ref()
    }
    /// The per-instance sequence number.
    #[must_use]
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The W3C trace context, if the event has one.
    #[must_use]
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// The headers that carry its trace context ([`TraceContext::headers`]); none without one.
    pub fn trace_headers(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        self.trace.iter().flat_map(TraceContext::headers)
    }

    /// The format its deliveries are written in.
    #[must_use]
    pub fn format(&self) -> EventFormat {
        self.format
    }

    /// What a delivery carries as its body when its channel writes no headers of the format:
    /// the Evolution payload for `profile`, or in CloudEvents mode (either) the structured
    /// CloudEvent.
    #[must_use]
    pub fn body(&self, profile: NamingProfile) -> Bytes {
        if self.format.is_cloudevents() {
            self.structured_cloudevent()
        } else {
            self.payload(profile)
        }
    }

    /// The CloudEvent's attributes but `data` and `datacontenttype`, in spec order (see
    /// [`crate::format`]); the same in both naming profiles.
    #[must_use]
    pub fn cloudevent_attributes(&self) -> Vec<(&'static str, String)> {
        let mut attributes = vec![
            ("specversion", "1.0".to_owned()),
            ("id", self.id.to_string()),
            (
                "source",
                self.server_url
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SOURCE.to_owned()),
            ),
            ("type", NamingProfile::cloudevents_type(self.kind)),
            (
                "time",
                self.date_time.to_rfc3339_opts(SecondsFormat::Millis, true),
            ),
            ("subject", self.instance.as_str().to_owned()),
            ("sequence", format!("{:020}", self.sequence)),
        ];
        if let Some(sender) = &self.sender {
            attributes.push(("sender", sender.clone()));
        }
        if let Some(apikey) = &self.apikey {
            attributes.push(("apikey", apikey.expose().to_owned()));
        }
        if let Some(trace) = &self.trace {
            attributes.extend(trace.headers());
        }
        attributes
    }

    /// The CloudEvent in CloudEvents' JSON format (structured content mode), serialized on first
    /// use and shared afterwards.
    #[must_use]
    pub fn structured_cloudevent(&self) -> Bytes {
        self.cloudevent
            .get_or_init(|| {
                // Key order is not significant in CloudEvents' JSON format.
                let mut object: serde_json::Map<String, serde_json::Value> = self
                    .cloudevent_attributes()
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value.into()))
                    .collect();
                object.insert("datacontenttype".to_owned(), "application/json".into());
                // A map of strings always serializes.
                let Ok(mut json) = serde_json::to_vec(&object) else {
                    return Bytes::from_static(b"null");
                };
                // `data` last, as given (already valid JSON): `…}` becomes `…,"data":<data>}`.
                json.pop();
                json.extend_from_slice(br#","data":"#);
                json.extend_from_slice(self.data.get().as_bytes());
                json.push(b'}');
                Bytes::from(json)
            })
            .clone()
    }

    /// The JSON payload for `profile`, serialized on first use and shared afterwards.
    #[must_use]
    pub fn payload(&self, profile: NamingProfile) -> Bytes {
        let slot = match profile {
            NamingProfile::Seed => &self.payloads[0],
            NamingProfile::EvolutionV2 => &self.payloads[1],
        };
        slot.get_or_init(|| self.serialize(profile)).clone()
    }

    /// The `evolution-v2` payload of one channel ([`EvolutionWire`]): each channel's body is
    /// serialized once and shared; the webhook and Pusher bodies share one head and tail, joined
    /// around each destination's `destination`.
    #[must_use]
    pub fn evolution_payload(&self, wire: EvolutionWire<'_>) -> Bytes {
        let cache = &self.evolution;
        match wire {
            EvolutionWire::Plain => cache.plain.get_or_init(|| self.evolution_body(None)).clone(),
            EvolutionWire::Kafka => cache
                .kafka
                .get_or_init(|| self.evolution_body(Some(self.date_time.timestamp_millis())))
                .clone(),
            EvolutionWire::Sqs { server } => {
                let (cached_for, body) = cache
                    .sqs
                    .get_or_init(|| (server.to_owned(), self.evolution_sqs(server)));
                if cached_for == server {
                    body.clone()
                } else {
                    self.evolution_sqs(server)
                }
            }
            EvolutionWire::Webhook { destination, .. } | EvolutionWire::Pusher { destination } => {
                let media = !matches!(wire, EvolutionWire::Webhook { media: false, .. });
                let head = match self.stripped_data().filter(|_| !media) {
                    Some(data) => cache.head_stripped.get_or_init(|| self.evolution_head_of(data)),
                    None => cache.head.get_or_init(|| self.evolution_head()),
                };
                let tail = cache.tail.get_or_init(|| self.evolution_tail());
                let destination = json_string(destination);
                let mut out = Vec::with_capacity(head.len() + destination.len() + tail.len() + 16);
                out.extend_from_slice(head);
                out.extend_from_slice(b",\"destination\":");
                out.extend_from_slice(destination.as_bytes());
                out.extend_from_slice(tail);
                Bytes::from(out)
            }
        }
    }

    /// `{"event":…,"instance":…,"data":…` (no closing brace).
    fn evolution_head(&self) -> Bytes {
        self.evolution_head_of(&self.data)
    }

    /// The head with `data`.
    fn evolution_head_of(&self, data: &RawValue) -> Bytes {
        let mut out = String::with_capacity(data.get().len() + 96);
        out.push_str("{\"event\":");
        out.push_str(&json_string(self.kind.wire()));
        out.push_str(",\"instance\":");
        out.push_str(&json_string(self.instance.as_str()));
        out.push_str(",\"data\":");
        out.push_str(data.get());
        Bytes::from(out)
    }

    /// `,"date_time":…,"sender":…,"server_url":…,"apikey":…,"id":…,"sequence":…}`.
    fn evolution_tail(&self) -> Bytes {
        let mut out = String::with_capacity(192);
        self.push_date_time(&mut out);
        self.push_sender(&mut out);
        self.push_server_url(&mut out);
        self.push_apikey(&mut out);
        self.push_ours(&mut out);
        Bytes::from(out)
    }

    /// The WebSocket/RabbitMQ/NATS body, or with `timestamp` the Kafka one.
    fn evolution_body(&self, timestamp: Option<i64>) -> Bytes {
        let mut out = String::from_utf8_lossy(&self.evolution_cache_head()).into_owned();
        self.push_server_url(&mut out);
        self.push_date_time(&mut out);
        self.push_sender(&mut out);
        self.push_apikey(&mut out);
        if let Some(ms) = timestamp {
            out.push_str(",\"timestamp\":");
            out.push_str(&ms.to_string());
        }
        self.push_ours(&mut out);
        Bytes::from(out)
    }

    fn evolution_sqs(&self, server: &str) -> Bytes {
        let mut out = String::with_capacity(self.data.get().len() + 256);
        out.push_str("{\"event\":");
        out.push_str(&json_string(self.kind.wire()));
        out.push_str(",\"instance\":");
        out.push_str(&json_string(self.instance.as_str()));
        out.push_str(",\"dataType\":\"json\",\"data\":");
        out.push_str(self.data.get());
        out.push_str(",\"server\":");
        out.push_str(&json_string(server));
        self.push_server_url(&mut out);
        self.push_date_time(&mut out);
        self.push_sender(&mut out);
        self.push_apikey(&mut out);
        self.push_ours(&mut out);
        Bytes::from(out)
    }

    fn evolution_cache_head(&self) -> Bytes {
        self.evolution.head.get_or_init(|| self.evolution_head()).clone()
    }

    fn push_date_time(&self, out: &mut String) {
        out.push_str(",\"date_time\":\"");
        out.push_str(&self.date_time_text());
        out.push('"');
    }

    fn push_sender(&self, out: &mut String) {
        if let Some(sender) = &self.sender {
            out.push_str(",\"sender\":");
            out.push_str(&json_string(sender));
        }
    }

    fn push_server_url(&self, out: &mut String) {
        if let Some(url) = &self.server_url {
            out.push_str(",\"server_url\":");
            out.push_str(&json_string(url));
        }
    }

    fn push_apikey(&self, out: &mut String) {
        out.push_str(",\"apikey\":");
        match &self.apikey {
            Some(key) => out.push_str(&json_string(key.expose())),
            None => out.push_str("null"),
        }
    }

    /// This system's additions, last: `"id"` and `"sequence"`, and the closing brace.
    fn push_ours(&self, out: &mut String) {
        out.push_str(",\"id\":\"");
        out.push_str(&self.id.to_string());
        out.push_str("\",\"sequence\":");
        out.push_str(&self.sequence.to_string());
        out.push('}');
    }

    /// The payload for `profile`, with the media's base64 in `data` (`media`) or without it: a
    /// webhook whose `base64` is false gets `data.message.base64` (of every message, when `data`
    /// is a list) removed. Each variant is serialized once and shared; an event without such a
    /// field has one variant.
    #[must_use]
    pub fn payload_media(&self, profile: NamingProfile, media: bool) -> Bytes {
        let Some(data) = self.stripped_data().filter(|_| !media) else {
            return self.payload(profile);
        };
        let slot = match profile {
            NamingProfile::Seed => &self.stripped_payloads[0],
            NamingProfile::EvolutionV2 => &self.stripped_payloads[1],
        };
        slot.get_or_init(|| self.serialize_with(profile, data)).clone()
    }

    /// `data` without the media's base64, when it has some.
    fn stripped_data(&self) -> Option<&RawValue> {
        self.stripped.get_or_init(|| without_media(&self.data)).as_deref()
    }

    fn serialize(&self, profile: NamingProfile) -> Bytes {
        self.serialize_with(profile, &self.data)
    }

    fn serialize_with(&self, profile: NamingProfile, data: &RawValue) -> Bytes {
        let payload = Payload {
            id: &self.id,
            event: profile.payload_event(self.kind),
            instance: self.instance.as_str(),
            data,
            date_time: self.date_time_text(),
            sender: self.sender.as_deref(),
            server_url: self.server_url.as_deref(),
            apikey: self.apikey.as_ref().map(Sensitive::expose),
            sequence: self.sequence,
        };
        // Serializing borrowed strings, a UUID and already-valid raw JSON cannot fail.
        match serde_json::to_vec(&payload) {
            Ok(bytes) => Bytes::from(bytes),
            Err(_) => Bytes::from_static(b"null"),
        }
    }
}

/// A JSON object's members in their order, values untouched.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

impl Members {
    fn to_raw(&self) -> Option<Box<RawValue>> {
        let mut out = String::from("{");
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&json_string(key));
            out.push(':');
            out.push_str(value.get());
        }
        out.push('}');
        RawValue::from_string(out).ok()
    }
}

/// One message object without its `message.base64`; `None` when it has none.
fn message_without_media(item: &RawValue) -> Option<Box<RawValue>> {
    let mut members: Members = serde_json::from_str(item.get()).ok()?;
    let (_, message) = members.0.iter_mut().find(|(k, _)| k == "message")?;
    let mut inner: Members = serde_json::from_str(message.get()).ok()?;
    let before = inner.0.len();
    inner.0.retain(|(k, _)| k != "base64");
    if inner.0.len() == before {
        return None;
    }
    *message = inner.to_raw()?;
    members.to_raw()
}

/// `data` without the media's base64 that Evolution API inlines (`message.base64` of a message,
/// or of every message of a list), other members and their order untouched; `None` when it has
/// none.
fn without_media(data: &RawValue) -> Option<Box<RawValue>> {
    if !data.get().contains("\"base64\"") {
        return None;
    }
    match data.get().trim_start().as_bytes().first() {
        Some(b'{') => message_without_media(data),
        Some(b'[') => {
            let items: Vec<Box<RawValue>> = serde_json::from_str(data.get()).ok()?;
            let mut changed = false;
            let items: Vec<String> = items
                .iter()
                .map(|item| match message_without_media(item) {
                    Some(stripped) => {
                        changed = true;
                        stripped.get().to_owned()
                    }
                    None => item.get().to_owned(),
                })
                .collect();
            changed
                .then(|| RawValue::from_string(format!("[{}]", items.join(","))).ok())
                .flatten()
        }
        _ => None,
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    // Serializing a string cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_design_field_order_and_is_cached() {
        let data = RawValue::from_string(r#"{"key":{"id":"MESSAGE_ID"},"texto":"olá 👋"}"#.into()).unwrap();
        let env = EventEnvelope::new(
            EventKind::MessagesUpsert,
            InstanceName::new("minha-instancia").unwrap(),
            data,
        )
        .with_date_time("2024-01-01T12:00:00Z".parse().unwrap())
        .with_sender(Some("5511999999999@s.whatsapp.net".into()))
        .with_server_url(Some("https://api.example.com".into()))
        .with_sequence(7);
        let json = String::from_utf8(env.payload(NamingProfile::Seed).to_vec()).unwrap();
        let expected = format!(
            r#"{{"id":"{}","event":"MESSAGES_UPSERT","instance":"minha-instancia","data":{{"key":{{"id":"MESSAGE_ID"}},"texto":"olá 👋"}},"date_time":"2024-01-01T12:00:00.000Z","sender":"5511999999999@s.whatsapp.net","server_url":"https://api.example.com","apikey":null,"sequence":7}}"#,
            env.id()
        );
        assert_eq!(json, expected);
        let v2 = env.payload(NamingProfile::EvolutionV2);
        assert!(
            std::str::from_utf8(&v2)
                .unwrap()
                .contains(r#""event":"messages.upsert""#)
        );
        // Same allocation on a second call: serialized once.
        assert_eq!(
            env.payload(NamingProfile::Seed).as_ptr(),
            env.payload(NamingProfile::Seed).as_ptr()
        );
        assert_eq!(env.id().get_version_num(), 7);
    }

    #[test]
    fn cloudevent_attributes_and_structured_json() {
        let data = RawValue::from_string(r#"{"texto":"olá"}"#.into()).unwrap();
        let env = EventEnvelope::new(
            EventKind::GroupParticipantsUpdate,
            InstanceName::new("minha-instancia").unwrap(),
            data,
        )
        .with_date_time("2024-01-01T12:00:00Z".parse().unwrap())
        .with_sender(Some("5511999999999@s.whatsapp.net".into()))
        .with_sequence(42)
        .with_format(EventFormat::CloudEventsStructured);
        let attributes = env.cloudevent_attributes();
        let names: Vec<&str> = attributes.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "specversion",
                "id",
                "source",
                "type",
                "time",
                "subject",
                "sequence",
                "sender"
            ]
        );
        let json: serde_json::Value = serde_json::from_slice(&env.structured_cloudevent()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["id"], env.id().to_string());
        assert_eq!(json["source"], "/evolution-events");
        assert_eq!(json["type"], "evolution.group-participants.update");
        assert_eq!(json["time"], "2024-01-01T12:00:00.000Z");
        assert_eq!(json["subject"], "minha-instancia");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["sequence"], "00000000000000000042");
        assert_eq!(json["data"]["texto"], "olá");
        assert!(json.get("apikey").is_none());
        // In CloudEvents mode the body is the structured event, in both profiles.
        assert_eq!(env.body(NamingProfile::Seed), env.structured_cloudevent());
        assert_eq!(env.body(NamingProfile::EvolutionV2), env.structured_cloudevent());
        let plain = env.with_format(EventFormat::Evolution);
        assert_eq!(
            plain.body(NamingProfile::Seed),
            plain.payload(NamingProfile::Seed)
        );
    }

    /// Each channel's `evolution-v2` body: Evolution API's fields in its order, then `id` and
    /// `sequence`; unknown `sender`/`server_url` left out; each body serialized once.
    #[test]
    fn evolution_bodies_per_channel() {
        let data = RawValue::from_string(r#"{"key":{"id":"M1"}}"#.into()).unwrap();
        let env = EventEnvelope::new(
            EventKind::MessagesUpsert,
            InstanceName::new("acme").unwrap(),
            data,
        )
        .with_date_time("2025-10-21T11:40:39.123Z".parse().unwrap())
        .with_sender(Some("5511999999999@s.whatsapp.net".into()))
        .with_sequence(3);
        let text = |b: Bytes| String::from_utf8(b.to_vec()).unwrap();
        let id = env.id();
        let common = r#""event":"messages.upsert","instance":"acme""#;
        let ours = format!(r#""id":"{id}","sequence":3}}"#);
        assert_eq!(
            text(env.evolution_payload(EvolutionWire::Webhook {
                destination: "https://h.example/w",
                media: true,
            })),
            format!(
                r#"{{{common},"data":{{"key":{{"id":"M1"}}}},"destination":"https://h.example/w","date_time":"2025-10-21T11:40:39.123Z","sender":"5511999999999@s.whatsapp.net","apikey":null,{ours}"#
            )
        );
        assert_eq!(
            text(env.evolution_payload(EvolutionWire::Plain)),
            format!(
                r#"{{{common},"data":{{"key":{{"id":"M1"}}}},"date_time":"2025-10-21T11:40:39.123Z","sender":"5511999999999@s.whatsapp.net","apikey":null,{ours}"#
            )
        );
        assert_eq!(
            text(env.evolution_payload(EvolutionWire::Kafka)),
            format!(
                r#"{{{common},"data":{{"key":{{"id":"M1"}}}},"date_time":"2025-10-21T11:40:39.123Z","sender":"5511999999999@s.whatsapp.net","apikey":null,"timestamp":1761046839123,{ours}"#
            )
        );
        assert_eq!(
            text(env.evolution_payload(EvolutionWire::Sqs {
                server: "Evolution API"
            })),
            format!(
                r#"{{{common},"dataType":"json","data":{{"key":{{"id":"M1"}}}},"server":"Evolution API","date_time":"2025-10-21T11:40:39.123Z","sender":"5511999999999@s.whatsapp.net","apikey":null,{ours}"#
            )
        );
        let env = env.with_server_url(Some("https://evo.example".into()));
        let pusher = text(env.evolution_payload(EvolutionWire::Pusher { destination: "123" }));
        assert!(
            pusher.contains(r#""destination":"123","date_time":"2025-10-21T11:40:39.123Z","sender":"5511999999999@s.whatsapp.net","server_url":"https://evo.example","apikey":null"#),
            "{pusher}"
        );
        let plain = text(env.evolution_payload(EvolutionWire::Plain));
        assert!(
            plain.contains(r#""data":{"key":{"id":"M1"}},"server_url":"https://evo.example","date_time""#),
            "{plain}"
        );
        for body in [pusher, plain] {
            let _: serde_json::Value = serde_json::from_str(&body).unwrap();
        }
        assert_eq!(
            env.evolution_payload(EvolutionWire::Plain).as_ptr(),
            env.evolution_payload(EvolutionWire::Plain).as_ptr(),
            "serialized once"
        );
    }

    /// A webhook whose `base64` is false gets its payload without the media's base64: of the
    /// message, or of every message of a list; other members keep their order and bytes. Each
    /// variant is serialized once.
    #[test]
    fn media_base64_is_left_out_on_request() {
        let text = |b: Bytes| String::from_utf8(b.to_vec()).unwrap();
        let event = |data: &str| {
            EventEnvelope::new(
                EventKind::MessagesUpsert,
                InstanceName::new("acme").unwrap(),
                RawValue::from_string(data.to_owned()).unwrap(),
            )
        };
        let env = event(
            r#"{"key":{"id":"M1"},"message":{"imageMessage":{"url":"u"},"base64":"AAAA","caption":"c"},"z":1}"#,
        );
        let full = text(env.payload_media(NamingProfile::Seed, true));
        assert!(full.contains(r#""base64":"AAAA""#), "{full}");
        let stripped = text(env.payload_media(NamingProfile::Seed, false));
        assert!(
            stripped.contains(
                r#""data":{"key":{"id":"M1"},"message":{"imageMessage":{"url":"u"},"caption":"c"},"z":1}"#
            ),
            "{stripped}"
        );
        assert_eq!(
            env.payload_media(NamingProfile::Seed, false).as_ptr(),
            env.payload_media(NamingProfile::Seed, false).as_ptr(),
            "serialized once"
        );
        let v2 = text(env.evolution_payload(EvolutionWire::Webhook {
            destination: "d",
            media: false,
        }));
        assert!(!v2.contains("AAAA") && v2.contains(r#""caption":"c""#), "{v2}");
        let v2 = text(env.evolution_payload(EvolutionWire::Webhook {
            destination: "d",
            media: true,
        }));
        assert!(v2.contains("AAAA"), "{v2}");

        let list = event(r#"[{"message":{"base64":"AAAA","x":1}},{"message":{"conversation":"oi"}},3]"#);
        let stripped = text(list.payload_media(NamingProfile::Seed, false));
        assert!(
            stripped.contains(r#""data":[{"message":{"x":1}},{"message":{"conversation":"oi"}},3]"#),
            "{stripped}"
        );
        // No media base64 (a QR code's is not media): one variant, the same bytes.
        let plain = event(r#"{"qrcode":{"base64":"data:image/png;base64,AAAA"}}"#);
        assert_eq!(
            plain.payload_media(NamingProfile::Seed, false).as_ptr(),
            plain.payload(NamingProfile::Seed).as_ptr()
        );
    }
}
