//! Settings: per instance (the specification's JSON bodies) and global (environment).
//!
//! Per-instance settings are parsed with [`WebhookSettings::from_json`] and friends, which report
//! every problem found (not only the first), each naming its field, so a REST API can answer one
//! 400 listing them all and store nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::channel::Channel;
use crate::destination::PusherApp;
use crate::kind::EventKind;
use crate::naming::{self, NamingProfile};
use crate::secret::Sensitive;

/// One problem in a settings document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the field: `webhook.events[2]`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a settings document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<FieldError>);

/// Which events a channel delivers. An empty list means every event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct EventSelection(Vec<EventKind>);

impl EventSelection {
    /// Every event.
    #[must_use]
    pub fn all() -> Self {
        Self(Vec::new())
    }

    /// Only these events (duplicates removed, order kept). An empty iterator means every event.
    #[must_use]
    pub fn only(kinds: impl IntoIterator<Item = EventKind>) -> Self {
        let mut list = Vec::new();
        for kind in kinds {
            if !list.contains(&kind) {
                list.push(kind);
            }
        }
        Self(list)
    }

    /// Whether `kind` is selected.
    #[must_use]
    pub fn matches(&self, kind: EventKind) -> bool {
        self.0.is_empty() || self.0.contains(&kind)
    }

    /// The listed kinds (empty = every event).
    #[must_use]
    pub fn kinds(&self) -> &[EventKind] {
        &self.0
    }

    /// The selected kinds, expanded.
    pub fn expanded(&self) -> impl Iterator<Item = EventKind> + '_ {
        EventKind::all().filter(|k| self.matches(*k))
    }
}

/// `{"enabled", "events"}`: the per-instance settings of WebSocket, RabbitMQ, SQS, Kafka and NATS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChannelSettings {
    /// Deliver this instance's events on the channel.
    pub enabled: bool,
    /// Which events (empty = all). Kept when `enabled` is false.
    pub events: EventSelection,
}

/// The per-instance webhook: `{"enabled","url","events","headers","base64","byEvents"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSettings {
    /// Deliver to the URL.
    pub enabled: bool,
    /// Absolute http(s) URL.
    pub url: String,
    /// Which events (empty = all).
    pub events: EventSelection,
    /// Extra request headers; values are secrets.
    pub headers: BTreeMap<String, Sensitive>,
    /// Ask the producer to inline media as base64.
    pub base64: bool,
    /// Append the event as a path segment of the URL.
    pub by_events: bool,
    /// Standard Webhooks signing secrets (`secret`: one `whsec_…` string, or several during a
    /// rotation); none: the global `WEBHOOK_SIGNING_SECRET`, if any, signs.
    #[serde(
        rename = "secret",
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "one_or_many"
    )]
    pub secrets: Vec<Sensitive>,
}

fn one_or_many<S: serde::Serializer>(secrets: &[Sensitive], serializer: S) -> Result<S::Ok, S::Error> {
    match secrets {
        [one] => one.serialize(serializer),
        many => many.serialize(serializer),
    }
}

/// A URL with its password and every query value replaced by [`crate::REDACTED`] (tokens often
/// travel there); anything that is not an absolute URL is returned as is.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if parsed.password().is_some() {
        // Only fails for URLs that cannot have credentials, which have no password either.
        let _ignored = parsed.set_password(Some(crate::REDACTED));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, _)| (k.into_owned(), String::new()))
            .collect();
        let query = pairs
            .iter()
            .map(|(k, _)| format!("{k}={}", crate::REDACTED))
            .collect::<Vec<_>>()
            .join("&");
        parsed.set_query(Some(&query));
    }
    parsed.into()
}

/// Checks a Standard Webhooks signing secret: `whsec_` followed by base64 of at least 16 bytes.
///
/// # Errors
/// What is wrong, without the secret.
pub fn check_signing_secret(secret: &str) -> Result<(), &'static str> {
    use base64::Engine as _;
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return Err("a signing secret starts with `whsec_` (Standard Webhooks format)");
    };
    match base64::engine::general_purpose::STANDARD.decode(encoded) {
        Ok(key) if key.len() >= 16 => Ok(()),
        Ok(_) => Err("a signing secret holds at least 16 bytes (24 base64 characters after `whsec_`)"),
        Err(_) => Err("the part after `whsec_` is not valid base64"),
    }
}

/// The per-instance Pusher app: `{"enabled","appId","key","secret","cluster","useTLS","events"}`
/// plus optional `host` and `port` (a self-hosted Pusher-protocol server).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PusherSettings {
    /// Deliver to the app.
    pub enabled: bool,
    /// `appId`.
    pub app_id: String,
    /// `key`.
    pub key: String,
    /// `secret`.
    pub secret: Sensitive,
    /// `cluster`.
    pub cluster: String,
    /// `useTLS`.
    #[serde(rename = "useTLS")]
    pub use_tls: bool,
    /// Which events (empty = all).
    pub events: EventSelection,
    /// API host override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// API port override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl PusherSettings {
    /// The app these settings describe.
    #[must_use]
    pub fn app(&self) -> PusherApp {
        PusherApp {
            app_id: self.app_id.clone(),
            key: self.key.clone(),
            secret: self.secret.clone(),
            cluster: self.cluster.clone(),
            use_tls: self.use_tls,
            host: self.host.clone(),
            port: self.port,
        }
    }
}

/// Everything one instance configured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InstanceSettings {
    /// `webhook`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSettings>,
    /// `websocket`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<ChannelSettings>,
    /// `rabbitmq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<ChannelSettings>,
    /// `sqs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqs: Option<ChannelSettings>,
    /// `kafka`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<ChannelSettings>,
    /// `nats`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<ChannelSettings>,
    /// `pusher`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pusher: Option<PusherSettings>,
}

impl InstanceSettings {
    /// Whether `channel` is enabled for this instance and selects `kind`.
    #[must_use]
    pub fn wants(&self, channel: Channel, kind: EventKind) -> bool {
        let (enabled, events) = match channel {
            Channel::Webhook => match &self.webhook {
                Some(s) => (s.enabled, &s.events),
                None => return false,
            },
            Channel::Pusher => match &self.pusher {
                Some(s) => (s.enabled, &s.events),
                None => return false,
            },
            Channel::Websocket => return Self::basic(self.websocket.as_ref(), kind),
            Channel::Rabbitmq => return Self::basic(self.rabbitmq.as_ref(), kind),
            Channel::Sqs => return Self::basic(self.sqs.as_ref(), kind),
            Channel::Kafka => return Self::basic(self.kafka.as_ref(), kind),
            Channel::Nats => return Self::basic(self.nats.as_ref(), kind),
            Channel::Custom(_) => return false,
        };
        enabled && events.matches(kind)
    }

    fn basic(settings: Option<&ChannelSettings>, kind: EventKind) -> bool {
        settings.is_some_and(|s| s.enabled && s.events.matches(kind))
    }

    /// A copy with every secret replaced by [`crate::REDACTED`] (for `find` responses).
    #[must_use]
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        if let Some(w) = &mut copy.webhook {
            *w = w.redacted();
        }
        if let Some(p) = &mut copy.pusher {
            *p = p.redacted();
        }
        copy
    }

    /// Parses `{"webhook"?, "websocket"?, "rabbitmq"?, "sqs"?, "kafka"?, "nats"?, "pusher"?}`
    /// (the channel part of `POST /instance/create`). Other keys are refused.
    ///
    /// # Errors
    /// Every problem found.
    pub fn from_json(value: &Value) -> Result<Self, ValidationErrors> {
        let mut errors = Vec::new();
        let mut out = Self::default();
        if let Some(obj) = as_object(value, "", &mut errors) {
            for (key, v) in obj {
                match key.as_str() {
                    "webhook" => out.webhook = WebhookSettings::parse(v, key, &mut errors),
                    "pusher" => out.pusher = PusherSettings::parse(v, key, &mut errors),
                    "websocket" => out.websocket = ChannelSettings::parse(v, key, &mut errors),
                    "rabbitmq" => out.rabbitmq = ChannelSettings::parse(v, key, &mut errors),
                    "sqs" => out.sqs = ChannelSettings::parse(v, key, &mut errors),
                    "kafka" => out.kafka = ChannelSettings::parse(v, key, &mut errors),
                    "nats" => out.nats = ChannelSettings::parse(v, key, &mut errors),
                    other => errors.push(FieldError {
                        field: join("", other),
                        message:
                            "unknown channel; use webhook, websocket, rabbitmq, sqs, kafka, nats or pusher"
                                .to_owned(),
                    }),
                }
            }
        }
        finish(out, errors)
    }
}

impl ChannelSettings {
    /// Parses `{"enabled": bool, "events": [..]}`; `path` prefixes field names in errors.
    ///
    /// # Errors
    /// Every problem found.
    pub fn from_json(value: &Value, path: &str) -> Result<Self, ValidationErrors> {
        let mut errors = Vec::new();
        let parsed = Self::parse(value, path, &mut errors);
        finish(parsed.unwrap_or_default(), errors)
    }

    fn parse(value: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        let mut r = Reader::new(value, path, errors)?;
        let enabled = r.bool("enabled", Need::Required);
        let events = r.events("events");
        r.finish();
        Some(Self { enabled, events })
    }
}

impl WebhookSettings {
    /// Parses the specification's webhook JSON; `path` prefixes field names in errors.
    ///
    /// # Errors
    /// Every problem found: missing or mistyped fields, unknown fields, unknown events, a URL
    /// that is not absolute http(s), invalid header names or values.
    pub fn from_json(value: &Value, path: &str) -> Result<Self, ValidationErrors> {
        let mut errors = Vec::new();
        let parsed = Self::parse(value, path, &mut errors);
        finish(parsed.unwrap_or_default(), errors)
    }

    fn parse(value: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        let mut r = Reader::new(value, path, errors)?;
        let enabled = r.bool("enabled", Need::Required);
        let url = r.string("url", Need::Required);
        if (enabled || !url.is_empty())
            && let Err(e) = naming::check_webhook_url(&url)
        {
            r.error("url", e.rule);
        }
        let events = r.events("events");
        let headers = r.headers("headers");
        let base64 = r.bool("base64", Need::Optional);
        let by_events = r.bool("byEvents", Need::Optional);
        let secrets = r.secrets("secret");
        r.finish();
        Some(Self {
            enabled,
            url,
            events,
            headers,
            base64,
            by_events,
            secrets,
        })
    }

    /// A copy with header values redacted.
    #[must_use]
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        for v in copy.headers.values_mut() {
            *v = v.redacted();
        }
        for s in &mut copy.secrets {
            *s = s.redacted();
        }
        copy.url = redact_url(&copy.url);
        copy
    }
}

impl PusherSettings {
    /// Parses the specification's Pusher JSON; `path` prefixes field names in errors.
    ///
    /// # Errors
    /// Every problem found.
    pub fn from_json(value: &Value, path: &str) -> Result<Self, ValidationErrors> {
        let mut errors = Vec::new();
        let parsed = Self::parse(value, path, &mut errors);
        finish(parsed.unwrap_or_default(), errors)
    }

    fn parse(value: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        let mut r = Reader::new(value, path, errors)?;
        let enabled = r.bool("enabled", Need::Required);
        let app_id = r.string("appId", Need::NonEmpty);
        let key = r.string("key", Need::NonEmpty);
        let secret = Sensitive::new(r.string("secret", Need::NonEmpty));
        let cluster = r.string("cluster", Need::NonEmpty);
        let use_tls = r.bool("useTLS", Need::Required);
        let events = r.events("events");
        let host = r.optional_string("host");
        let port = r.port("port");
        r.finish();
        Some(Self {
            enabled,
            app_id,
            key,
            secret,
            cluster,
            use_tls,
            events,
            host,
            port,
        })
    }

    /// A copy with the secret redacted.
    #[must_use]
    pub fn redacted(&self) -> Self {
        Self {
            secret: self.secret.redacted(),
            ..self.clone()
        }
    }
}

macro_rules! deserialize_via_from_json {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = Value::deserialize(deserializer)?;
                Self::from_json(&value, "").map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_via_from_json!(ChannelSettings, WebhookSettings, PusherSettings);

impl<'de> Deserialize<'de> for InstanceSettings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_json(&value).map_err(serde::de::Error::custom)
    }
}

fn finish<T>(value: T, errors: Vec<FieldError>) -> Result<T, ValidationErrors> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(ValidationErrors(errors))
    }
}

fn join(path: &str, field: &str) -> String {
    // An empty key is shown as `""`, so that every error names a field.
    let field = if field.is_empty() { "\"\"" } else { field };
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn as_object<'a>(
    value: &'a Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a Map<String, Value>> {
    if let Value::Object(obj) = value {
        Some(obj)
    } else {
        errors.push(FieldError {
            field: if path.is_empty() {
                "(body)".to_owned()
            } else {
                path.to_owned()
            },
            message: format!("expected a JSON object, got {}", type_name(value)),
        });
        None
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Optional,
    Required,
    NonEmpty,
}

/// Reads one JSON object field by field, collecting every problem.
struct Reader<'a> {
    obj: &'a Map<String, Value>,
    path: String,
    errors: &'a mut Vec<FieldError>,
    known: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    fn new(value: &'a Value, path: &str, errors: &'a mut Vec<FieldError>) -> Option<Self> {
        let obj = as_object(value, path, errors)?;
        Some(Self {
            obj,
            path: path.to_owned(),
            errors,
            known: Vec::new(),
        })
    }

    fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: join(&self.path, field),
            message: message.into(),
        });
    }

    fn get(&mut self, field: &'static str, need: Need) -> Option<&'a Value> {
        self.known.push(field);
        match self.obj.get(field) {
            None | Some(Value::Null) if need != Need::Optional => {
                self.error(field, "is required");
                None
            }
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn bool(&mut self, field: &'static str, need: Need) -> bool {
        match self.get(field, need) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                let got = type_name(other);
                self.error(field, format!("expected true or false, got {got}"));
                false
            }
        }
    }

    fn string(&mut self, field: &'static str, need: Need) -> String {
        match self.get(field, need) {
            None => String::new(),
            Some(Value::String(s)) if need == Need::NonEmpty && s.trim().is_empty() => {
                self.error(field, "cannot be empty");
                String::new()
            }
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                let got = type_name(other);
                self.error(field, format!("expected a string, got {got}"));
                String::new()
            }
        }
    }

    fn optional_string(&mut self, field: &'static str) -> Option<String> {
        let present = self.obj.get(field).is_some_and(|v| !v.is_null());
        let s = self.string(field, Need::Optional);
        present.then_some(s)
    }

    fn port(&mut self, field: &'static str) -> Option<u16> {
        match self.get(field, Need::Optional) {
            None => None,
            Some(v) => match v.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|p| *p != 0) {
                Some(p) => Some(p),
                None => {
                    self.error(field, "expected a port number from 1 to 65535");
                    None
                }
            },
        }
    }

    fn events(&mut self, field: &'static str) -> EventSelection {
        let Some(value) = self.get(field, Need::Optional) else {
            return EventSelection::all();
        };
        let Value::Array(items) = value else {
            let got = type_name(value);
            self.error(field, format!("expected an array of event names, got {got}"));
            return EventSelection::all();
        };
        let mut kinds = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(name) => match EventKind::parse(name) {
                    Ok(kind) => kinds.push(kind),
                    Err(e) => self.error(&format!("{field}[{i}]"), e.to_string()),
                },
                other => {
                    let got = type_name(other);
                    self.error(
                        &format!("{field}[{i}]"),
                        format!("expected an event name, got {got}"),
                    );
                }
            }
        }
        EventSelection::only(kinds)
    }

    fn headers(&mut self, field: &'static str) -> BTreeMap<String, Sensitive> {
        let mut out = BTreeMap::new();
        let Some(value) = self.get(field, Need::Optional) else {
            return out;
        };
        let Value::Object(map) = value else {
            let got = type_name(value);
            self.error(
                field,
                format!("expected an object of header names to string values, got {got}"),
            );
            return out;
        };
        for (name, v) in map {
            let path = format!("{field}.{name}");
            if name.is_empty() || !name.bytes().all(is_header_token) {
                self.error(&path, "not a valid HTTP header name");
                continue;
            }
            match v {
                Value::String(s) if s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) => {
                    self.error(&path, "a header value cannot contain CR, LF or NUL");
                }
                Value::String(s) => {
                    out.insert(name.clone(), Sensitive::new(s.clone()));
                }
                other => {
                    let got = type_name(other);
                    self.error(&path, format!("expected a string, got {got}"));
                }
            }
        }
        out
    }

    fn secrets(&mut self, field: &'static str) -> Vec<Sensitive> {
        let items: Vec<Value> = match self.get(field, Need::Optional) {
            None => return Vec::new(),
            Some(Value::String(s)) => vec![Value::String(s.clone())],
            Some(Value::Array(a)) => a.clone(),
            Some(other) => {
                let got = type_name(other);
                self.error(
                    field,
                    format!("expected a `whsec_…` string or an array of them, got {got}"),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = if items.len() == 1 {
                field.to_owned()
            } else {
                format!("{field}[{i}]")
            };
            match item.as_str().map(check_signing_secret) {
                Some(Ok(())) => out.push(Sensitive::new(item.as_str().unwrap_or_default())),
                Some(Err(why)) => self.error(&path, why),
                None => self.error(&path, "expected a `whsec_…` string"),
            }
        }
        out
    }

    fn finish(self) {
        for key in self.obj.keys() {
            if !self.known.contains(&key.as_str()) {
                let expected = self.known.join(", ");
                self.errors.push(FieldError {
                    field: join(&self.path, key),
                    message: format!("unknown field; expected one of: {expected}"),
                });
            }
        }
    }
}

fn is_header_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Global webhook (`WEBHOOK_GLOBAL_*`, `WEBHOOK_EVENTS_*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlobalWebhook {
    /// `WEBHOOK_GLOBAL_ENABLED`.
    pub enabled: bool,
    /// `WEBHOOK_GLOBAL_URL`.
    pub url: String,
    /// `WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS`.
    pub by_events: bool,
    /// `WEBHOOK_EVENTS_<KEY>=true`.
    pub events: BTreeSet<EventKind>,
    /// `WEBHOOK_EVENTS_ERRORS_WEBHOOK` (when `WEBHOOK_EVENTS_ERRORS=true`): every `ERRORS` event is also
    /// posted here, whether or not the global webhook is enabled.
    pub errors_url: Option<String>,
    /// `WEBHOOK_SIGNING_SECRET` (comma-separated during a rotation): Standard Webhooks secrets
    /// signing every webhook that has no secret of its own.
    pub signing_secrets: Vec<Sensitive>,
}

/// Global WebSocket (`WEBSOCKET_*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlobalWebsocket {
    /// `WEBSOCKET_ENABLED`.
    pub enabled: bool,
    /// `WEBSOCKET_GLOBAL_EVENTS`: every event of every instance on the global stream.
    pub global_events: bool,
}

/// Global settings of a broker channel (`<CH>_ENABLED`, `<CH>_GLOBAL_ENABLED`, `<CH>_EVENTS_*`,
/// the name prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalBroker {
    /// `<CH>_ENABLED`: the channel is on (for instance and global deliveries).
    pub enabled: bool,
    /// `<CH>_GLOBAL_ENABLED`: deliver the selected events of every instance.
    pub global_enabled: bool,
    /// Events selected for global delivery.
    pub events: BTreeSet<EventKind>,
    /// Name prefix (`RABBITMQ_PREFIX_KEY`, `KAFKA_TOPIC_PREFIX`, `NATS_PREFIX_KEY`).
    pub prefix: String,
}

impl Default for GlobalBroker {
    fn default() -> Self {
        Self {
            enabled: false,
            global_enabled: false,
            events: BTreeSet::new(),
            prefix: "evolution".to_owned(),
        }
    }
}

/// Global SQS (`SQS_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalSqs {
    /// Enabled, global mode, events, `seed` prefix.
    pub broker: GlobalBroker,
    /// `SQS_GLOBAL_FORCE_SINGLE_QUEUE`.
    pub force_single_queue: bool,
    /// `SQS_GLOBAL_PREFIX_NAME` (`evolution-v2` global queues).
    pub global_prefix: String,
    /// `SQS_FIFO`.
    pub fifo: bool,
}

impl Default for GlobalSqs {
    fn default() -> Self {
        Self {
            broker: GlobalBroker::default(),
            force_single_queue: false,
            global_prefix: "global".to_owned(),
            fifo: false,
        }
    }
}

/// Global Pusher (`PUSHER_*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlobalPusher {
    /// `PUSHER_ENABLED`.
    pub enabled: bool,
    /// `PUSHER_GLOBAL_ENABLED`.
    pub global_enabled: bool,
    /// The global app (`PUSHER_GLOBAL_APP_ID`, `_KEY`, `_SECRET`, `_CLUSTER`, `_USE_TLS`).
    pub app: Option<PusherApp>,
    /// `PUSHER_EVENTS_<KEY>=true`.
    pub events: BTreeSet<EventKind>,
    /// `PUSHER_HOST` / `PUSHER_PORT`: API location override applied to every app.
    pub host: Option<String>,
    /// API port override.
    pub port: Option<u16>,
}

/// Everything the environment configures about routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalSettings {
    /// `EVENT_NAMING`.
    pub naming: NamingProfile,
    /// Webhook.
    pub webhook: GlobalWebhook,
    /// WebSocket.
    pub websocket: GlobalWebsocket,
    /// RabbitMQ (`prefix` = `RABBITMQ_PREFIX_KEY`).
    pub rabbitmq: GlobalBroker,
    /// `RABBITMQ_EXCHANGE_NAME`.
    pub rabbitmq_exchange: String,
    /// SQS.
    pub sqs: GlobalSqs,
    /// Kafka (`prefix` = `KAFKA_TOPIC_PREFIX`).
    pub kafka: GlobalBroker,
    /// NATS (`prefix` = `NATS_PREFIX_KEY`).
    pub nats: GlobalBroker,
    /// Pusher.
    pub pusher: GlobalPusher,
    /// Prefix of Pusher channel names in the `seed` profile (`evolution`).
    pub pusher_prefix: String,
}

impl Default for GlobalSettings {
    fn default() -> Self {
        Self {
            naming: NamingProfile::Seed,
            webhook: GlobalWebhook::default(),
            websocket: GlobalWebsocket::default(),
            rabbitmq: GlobalBroker::default(),
            rabbitmq_exchange: "evolution".to_owned(),
            sqs: GlobalSqs::default(),
            kafka: GlobalBroker::default(),
            nats: GlobalBroker::default(),
            pusher: GlobalPusher::default(),
            pusher_prefix: "evolution".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_webhook_json_parses() {
        let v = json!({
            "enabled": true,
            "url": "https://meusite.com/webhook",
            "events": ["MESSAGES_UPSERT", "MESSAGES_UPDATE", "CONNECTION_UPDATE"],
            "headers": {"Authorization": "Bearer token"},
            "base64": true,
            "byEvents": false
        });
        let w = WebhookSettings::from_json(&v, "webhook").unwrap();
        assert!(w.enabled && w.base64 && !w.by_events);
        assert!(w.events.matches(EventKind::ConnectionUpdate));
        assert!(!w.events.matches(EventKind::Call));
        assert!(!format!("{w:?}").contains("Bearer token"));
        let out = serde_json::to_value(w.redacted()).unwrap();
        assert_eq!(out["headers"]["Authorization"], "**REDACTED**");
        assert_eq!(out["url"], "https://meusite.com/webhook");
        assert_eq!(
            redact_url("https://u:p@h.example/x?token=abc&b=2"),
            "https://u:**REDACTED**@h.example/x?token=**REDACTED**&b=**REDACTED**"
        );
        assert_eq!(out["byEvents"], false);
        assert_eq!(
            out["events"],
            json!(["MESSAGES_UPSERT", "MESSAGES_UPDATE", "CONNECTION_UPDATE"])
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let v = json!({
            "enabled": "yes",
            "url": "ftp://x",
            "events": ["MESSAGES_UPSERT", "NOPE", 3],
            "headers": {"bad name": "x", "X-Ok": 1},
            "extra": 1
        });
        let errs = WebhookSettings::from_json(&v, "webhook").unwrap_err().0;
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "webhook.enabled",
                "webhook.url",
                "webhook.events[1]",
                "webhook.events[2]",
                "webhook.headers.X-Ok",
                "webhook.headers.bad name",
                "webhook.extra"
            ]
        );
        let missing = WebhookSettings::from_json(&json!({}), "webhook").unwrap_err().0;
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(ChannelSettings::from_json(&json!([]), "nats").is_err());
    }

    #[test]
    fn pusher_and_instance_settings() {
        let v = json!({
            "webhook": {"enabled": true, "url": "http://h/w"},
            "pusher": {"enabled": true, "appId": "123456", "key": "abc123", "secret": "xyz789", "cluster": "us2", "useTLS": true, "events": ["MESSAGES_UPSERT"]},
            "nats": {"enabled": true, "events": []}
        });
        let s = InstanceSettings::from_json(&v).unwrap();
        assert!(s.wants(Channel::Pusher, EventKind::MessagesUpsert));
        assert!(!s.wants(Channel::Pusher, EventKind::Call));
        assert!(s.wants(Channel::Nats, EventKind::Call));
        assert!(s.wants(Channel::Webhook, EventKind::Call));
        assert!(!s.wants(Channel::Kafka, EventKind::Call));
        assert!(!format!("{s:?}").contains("xyz789"));
        let red = serde_json::to_value(s.redacted()).unwrap();
        assert_eq!(red["pusher"]["secret"], "**REDACTED**");
        assert_eq!(red["pusher"]["useTLS"], true);
        let bad = InstanceSettings::from_json(&json!({"pusher": {"enabled": true}, "mqtt": {}})).unwrap_err();
        assert!(bad.0.len() >= 6, "{bad}");
        assert!(bad.to_string().contains("pusher.appId: is required"));
    }

    #[test]
    fn an_empty_key_is_still_named() {
        let errors = InstanceSettings::from_json(&json!({"": 0})).unwrap_err().0;
        assert_eq!(errors[0].field, "\"\"");
        let errors =
            WebhookSettings::from_json(&json!({"enabled": true, "url": "http://h/", "": 1}), "webhook")
                .unwrap_err()
                .0;
        assert_eq!(errors[0].field, "webhook.\"\"");
    }

    #[test]
    fn disabled_keeps_the_event_list() {
        let s = ChannelSettings::from_json(&json!({"enabled": false, "events": ["CALL"]}), "").unwrap();
        assert_eq!(s.events.kinds(), [EventKind::Call]);
    }
}
