//! Per-instance settings: the specification's JSON bodies of each channel, and everything one
//! instance configured ([`InstanceSettings`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::EventSelection;
use super::filter::Filter;
use super::reader::{FieldError, Need, Reader, ValidationErrors, as_object, finish, join, read};
use crate::channel::Channel;
use crate::destination::PusherApp;
use crate::format::EventFormat;
use crate::kind::EventKind;
use crate::naming;
use crate::secret::Sensitive;

/// The fields of Evolution API's stored settings rows that its clients send back to `set` (after
/// reading `find`): accepted and ignored.
pub(super) const EVOLUTION_ROW_FIELDS: &[&str] = &["id", "createdAt", "updatedAt", "instanceId"];

/// `{"enabled", "events"}`: the per-instance settings of WebSocket, RabbitMQ, SQS, Kafka and NATS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChannelSettings {
    /// Deliver this instance's events on the channel.
    pub enabled: bool,
    /// Which events (empty = all). Kept when `enabled` is false.
    pub events: EventSelection,
    /// Only events whose payload passes this filter (`filter`); none: every event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
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
    /// `rateLimit`: at most this many events per second reach the URL (the Dispatcher spaces them
    /// out, other destinations unaffected); none: as fast as it goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Only events whose payload passes this filter (`filter`); none: every event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
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
    /// Only events whose payload passes this filter (`filter`); none: every event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
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
    /// `eventFormat`: the format of this instance's events on every channel; `None` follows the
    /// server's (`EVENT_FORMAT`).
    #[serde(rename = "eventFormat", skip_serializing_if = "Option::is_none")]
    pub event_format: Option<EventFormat>,
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

    /// The payload filter of `channel`'s settings, if any.
    #[must_use]
    pub fn filter(&self, channel: Channel) -> Option<&Filter> {
        match channel {
            Channel::Webhook => self.webhook.as_ref()?.filter.as_ref(),
            Channel::Pusher => self.pusher.as_ref()?.filter.as_ref(),
            Channel::Websocket => self.websocket.as_ref()?.filter.as_ref(),
            Channel::Rabbitmq => self.rabbitmq.as_ref()?.filter.as_ref(),
            Channel::Sqs => self.sqs.as_ref()?.filter.as_ref(),
            Channel::Kafka => self.kafka.as_ref()?.filter.as_ref(),
            Channel::Nats => self.nats.as_ref()?.filter.as_ref(),
            Channel::Custom(_) => None,
        }
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

    /// `channel`'s settings as JSON: its object in the specification, `null` when not configured
    /// (and for a custom channel). Secrets serialize in clear, as stored: call
    /// [`redacted`](Self::redacted) first to show them to anyone.
    #[must_use]
    pub fn get(&self, channel: Channel) -> Value {
        let value = match channel {
            Channel::Webhook => serde_json::to_value(&self.webhook),
            Channel::Pusher => serde_json::to_value(&self.pusher),
            Channel::Websocket => serde_json::to_value(&self.websocket),
            Channel::Rabbitmq => serde_json::to_value(&self.rabbitmq),
            Channel::Sqs => serde_json::to_value(&self.sqs),
            Channel::Kafka => serde_json::to_value(&self.kafka),
            Channel::Nats => serde_json::to_value(&self.nats),
            Channel::Custom(_) => Ok(Value::Null),
        };
        value.unwrap_or(Value::Null)
    }

    /// Parses `value` as `channel`'s settings (its object in the specification; problems are named
    /// `<channel>.<field>`) and stores them, replacing the channel's previous settings. Nothing
    /// changes when there is a problem.
    ///
    /// # Errors
    /// Every problem found; a custom channel has no per-instance settings.
    pub fn set(&mut self, channel: Channel, value: &Value) -> Result<(), ValidationErrors> {
        let mut errors = Vec::new();
        let mut updated = self.clone();
        updated.parse_channel(channel, value, &mut errors);
        *self = finish(updated, errors)?;
        Ok(())
    }

    /// Parses `channel`'s settings into `self`, collecting the problems.
    fn parse_channel(&mut self, channel: Channel, value: &Value, errors: &mut Vec<FieldError>) {
        let path = channel.as_str();
        match channel {
            Channel::Webhook => self.webhook = WebhookSettings::parse(value, path, errors),
            Channel::Pusher => self.pusher = PusherSettings::parse(value, path, errors),
            Channel::Websocket => self.websocket = ChannelSettings::parse(value, path, errors),
            Channel::Rabbitmq => self.rabbitmq = ChannelSettings::parse(value, path, errors),
            Channel::Sqs => self.sqs = ChannelSettings::parse(value, path, errors),
            Channel::Kafka => self.kafka = ChannelSettings::parse(value, path, errors),
            Channel::Nats => self.nats = ChannelSettings::parse(value, path, errors),
            Channel::Custom(name) => errors.push(FieldError {
                field: join("", name),
                message: "a custom channel has no per-instance settings".to_owned(),
            }),
        }
    }

    /// Parses `{"webhook"?, "websocket"?, "rabbitmq"?, "sqs"?, "kafka"?, "nats"?, "pusher"?,
    /// "eventFormat"?}` (the settings part of `POST /instance/create`). Other keys are refused.
    ///
    /// # Errors
    /// Every problem found.
    pub fn from_json(value: &Value) -> Result<Self, ValidationErrors> {
        let mut errors = Vec::new();
        let mut out = Self::default();
        if let Some(obj) = as_object(value, "", &mut errors) {
            for (key, v) in obj {
                if key == EVENT_FORMAT_FIELD {
                    out.event_format = parse_event_format(v, &mut errors);
                    continue;
                }
                match Channel::BUILT_IN.into_iter().find(|c| c.as_str() == key) {
                    Some(channel) => out.parse_channel(channel, v, &mut errors),
                    None => errors.push(FieldError {
                        field: join("", key),
                        message:
                            "unknown channel; use webhook, websocket, rabbitmq, sqs, kafka, nats or pusher (or eventFormat)"
                                .to_owned(),
                    }),
                }
            }
        }
        finish(out, errors)
    }
}

/// The name of the instance setting that chooses its event format.
pub const EVENT_FORMAT_FIELD: &str = "eventFormat";

/// Reads `eventFormat`: `evolution`, `cloudevents`, `cloudevents-structured`, or `null` (the
/// server's); a problem is pushed to `errors` under the field's name.
pub fn parse_event_format(value: &Value, errors: &mut Vec<FieldError>) -> Option<EventFormat> {
    match value {
        Value::Null => None,
        Value::String(s) => match EventFormat::parse(s) {
            Ok(format) => Some(format),
            Err(e) => {
                errors.push(FieldError {
                    field: EVENT_FORMAT_FIELD.to_owned(),
                    message: e.to_string(),
                });
                None
            }
        },
        _ => {
            errors.push(FieldError {
                field: EVENT_FORMAT_FIELD.to_owned(),
                message: "expected evolution, cloudevents, cloudevents-structured or null".to_owned(),
            });
            None
        }
    }
}

impl ChannelSettings {
    /// Parses `{"enabled": bool, "events": [..]}`; `path` prefixes field names in errors.
    ///
    /// # Errors
    /// Every problem found.
    pub fn from_json(value: &Value, path: &str) -> Result<Self, ValidationErrors> {
        read(value, path, Self::parse)
    }

    fn parse(value: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        let mut r = Reader::new(value, path, errors)?;
        let enabled = r.bool("enabled", Need::Required);
        let events = r.events("events");
        let filter = r.filter("filter");
        r.ignore(EVOLUTION_ROW_FIELDS);
        r.finish();
        Some(Self {
            enabled,
            events,
            filter,
        })
    }
}

impl WebhookSettings {
    /// Parses the specification's webhook JSON; `path` prefixes field names in errors.
    ///
    /// # Errors
    /// Every problem found: missing or mistyped fields, unknown fields, unknown events, a URL
    /// that is not absolute http(s), invalid header names or values.
    pub fn from_json(value: &Value, path: &str) -> Result<Self, ValidationErrors> {
        read(value, path, Self::parse)
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
        // Evolution API answers `webhookBase64`/`webhookByEvents` (v1: snake case); clients send
        // them back.
        let base64 = r.bool_aliased(&["base64", "webhookBase64", "webhook_base64"]);
        let by_events = r.bool_aliased(&["byEvents", "webhookByEvents", "webhook_by_events"]);
        let secrets = r.secrets("secret");
        let rate_limit = r.rate("rateLimit");
        let filter = r.filter("filter");
        r.ignore(EVOLUTION_ROW_FIELDS);
        r.finish();
        Some(Self {
            enabled,
            url,
            events,
            headers,
            base64,
            by_events,
            secrets,
            rate_limit,
            filter,
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
        read(value, path, Self::parse)
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
        let filter = r.filter("filter");
        r.ignore(EVOLUTION_ROW_FIELDS);
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
            filter,
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
    fn one_channel_is_read_and_set_by_name() {
        let mut s = InstanceSettings::default();
        assert_eq!(s.get(Channel::Kafka), Value::Null);
        s.set(Channel::Kafka, &json!({"enabled": true, "events": ["CALL"]}))
            .unwrap();
        assert_eq!(
            s.get(Channel::Kafka),
            json!({"enabled": true, "events": ["CALL"]})
        );
        s.set(
            Channel::Pusher,
            &json!({"enabled": true, "appId": "1", "key": "k", "secret": "xyz789", "cluster": "us2", "useTLS": true}),
        )
        .unwrap();
        assert_eq!(s.get(Channel::Pusher)["secret"], "xyz789", "as stored");
        assert_eq!(s.redacted().get(Channel::Pusher)["secret"], "**REDACTED**");
        let before = s.clone();
        let errors = s
            .set(Channel::Kafka, &json!({"enabled": "yes", "extra": 1}))
            .unwrap_err()
            .0;
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["kafka.enabled", "kafka.extra"]);
        assert_eq!(s, before, "nothing changes on a problem");
        let errors = s.set(Channel::Custom("mqtt"), &json!({})).unwrap_err().0;
        assert_eq!(errors[0].field, "mqtt");
        assert_eq!(s.get(Channel::Custom("mqtt")), Value::Null);
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

    /// What Evolution API's `find` answers, sent back to `set`, is accepted: its row fields are
    /// ignored, `webhookByEvents`/`webhookBase64` are `byEvents`/`base64`.
    #[test]
    fn evolution_rows_are_accepted() {
        let w = WebhookSettings::from_json(
            &json!({"id": "clx1", "url": "https://h.example/w", "headers": {}, "enabled": true,
                    "events": ["MESSAGES_UPSERT"], "webhookByEvents": true, "webhookBase64": true,
                    "createdAt": "2025-10-21T11:40:39.123Z", "updatedAt": "2025-10-21T11:40:39.123Z",
                    "instanceId": "2f0c"}),
            "webhook",
        )
        .unwrap();
        assert!(w.by_events && w.base64);
        let w = WebhookSettings::from_json(
            &json!({"enabled": true, "url": "https://h.example/w", "webhook_by_events": true}),
            "webhook",
        )
        .unwrap();
        assert!(w.by_events && !w.base64);
        let errors = WebhookSettings::from_json(
            &json!({"enabled": true, "url": "https://h.example/w", "byEvents": true, "webhookByEvents": false}),
            "webhook",
        )
        .unwrap_err()
        .0;
        assert_eq!(errors[0].field, "webhook.webhookByEvents");
        assert!(errors[0].message.contains("contradicts `byEvents`"));
        let s = ChannelSettings::from_json(
            &json!({"id": "clx2", "enabled": true, "events": [], "instanceId": "2f0c", "createdAt": "x"}),
            "rabbitmq",
        )
        .unwrap();
        assert!(s.enabled);
        let errors = ChannelSettings::from_json(&json!({"enabled": true, "bogus": 1}), "nats")
            .unwrap_err()
            .0;
        assert_eq!(
            errors[0].field, "nats.bogus",
            "a field nobody sends stays an error"
        );
    }

    #[test]
    fn disabled_keeps_the_event_list() {
        let s = ChannelSettings::from_json(&json!({"enabled": false, "events": ["CALL"]}), "").unwrap();
        assert_eq!(s.events.kinds(), [EventKind::Call]);
    }
}
