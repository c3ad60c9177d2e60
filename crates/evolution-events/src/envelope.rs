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

    fn serialize(&self, profile: NamingProfile) -> Bytes {
        let payload = Payload {
            id: &self.id,
            event: profile.payload_event(self.kind),
            instance: self.instance.as_str(),
            data: &self.data,
            date_time: self.date_time.to_rfc3339_opts(SecondsFormat::Millis, true),
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
}
