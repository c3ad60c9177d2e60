//! Resolved destinations: where one delivery goes on its channel.

use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::error::{ErrorKind, SinkError};
use crate::rules::{self, NameError};
use crate::secret::Sensitive;

/// Where a delivery goes. The Router computes it from the naming registry and the settings; sinks
/// never compute names themselves.
///
/// `Debug` never shows a secret (webhook header values and Pusher secrets are [`Sensitive`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "lowercase")]
pub enum Destination {
    /// An HTTP POST.
    Webhook(WebhookTarget),
    /// A Socket.IO emission.
    Websocket(WebsocketTarget),
    /// An AMQP publish.
    Rabbitmq(RabbitmqTarget),
    /// An SQS message.
    Sqs(SqsTarget),
    /// A Kafka record.
    Kafka(KafkaTarget),
    /// A NATS message.
    Nats(NatsTarget),
    /// A Pusher trigger.
    Pusher(PusherTarget),
    /// A destination of a channel added by a library user.
    Custom(CustomTarget),
}

/// An HTTP POST target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WebhookTarget {
    /// Absolute http(s) URL, byEvents segment already joined.
    pub url: String,
    /// Extra request headers (the instance's `headers`), values secret.
    #[serde(default)]
    pub headers: Vec<(String, Sensitive)>,
    /// Standard Webhooks signing secrets (`whsec_…`): each signs the request (several during a
    /// rotation); none, no signature.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_secrets: Vec<Sensitive>,
    /// The `evolution-v2` payload's `destination` (Evolution API's: the instance's webhook URL
    /// without the byEvents segment, or the global URL with it); `None`: `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_destination: Option<String>,
    /// Deliver the media's base64 inlined in `data` (the instance webhook's `base64`; true for the
    /// global webhooks, and for deliveries stored before the field existed).
    #[serde(default = "yes")]
    pub base64: bool,
}

fn yes() -> bool {
    true
}

/// A Socket.IO emission target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WebsocketTarget {
    /// Namespace, starting with `/`.
    pub namespace: String,
    /// Socket.IO event name.
    pub event: String,
    /// Room inside the namespace: the instance name (sockets allowed to see that instance),
    /// [`GLOBAL_ROOM`](crate::naming::GLOBAL_ROOM) (sockets allowed to see every instance), or `None` for every socket of the
    /// namespace (namespaces are authorized per instance).
    pub room: Option<String>,
}

/// An AMQP publish target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RabbitmqTarget {
    /// Topic exchange (durable).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Durable queue declared once and bound to the exchange with the routing key.
    pub queue: String,
}

/// An SQS target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SqsTarget {
    /// Queue name (`.fifo` suffix included for FIFO queues); the URL is resolved through the API.
    pub queue: String,
    /// FIFO queue: `MessageGroupId` = `group_id`, `MessageDeduplicationId` = event id.
    pub fifo: bool,
    /// Message group of a FIFO queue (the instance name; Evolution API's in `evolution-v2`).
    pub group_id: Option<String>,
    /// The `evolution-v2` payload's `server` (`SERVER_NAME`); `None`: `evolution`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

/// A Kafka target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KafkaTarget {
    /// Topic.
    pub topic: String,
    /// Record key (per-key order).
    pub key: String,
}

/// A NATS target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NatsTarget {
    /// Subject.
    pub subject: String,
}

/// A Pusher application's credentials and API location.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PusherApp {
    /// `app_id`.
    pub app_id: String,
    /// Application key (public).
    pub key: String,
    /// Application secret (signs requests).
    pub secret: Sensitive,
    /// Cluster (`us2`, …): API host `api-{cluster}.pusher.com`.
    pub cluster: String,
    /// Use HTTPS.
    pub use_tls: bool,
    /// API host override (a self-hosted Pusher-protocol server).
    #[serde(default)]
    pub host: Option<String>,
    /// API port override.
    #[serde(default)]
    pub port: Option<u16>,
}

/// A Pusher trigger target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PusherTarget {
    /// The application.
    pub app: PusherApp,
    /// Channel name. Stored as `pusher_channel`: `channel` is the tag of [`Destination`].
    #[serde(rename = "pusher_channel")]
    pub channel: String,
    /// Event name.
    pub event: String,
}

/// A destination of a custom channel: an opaque target string the custom sink understands.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CustomTarget {
    /// The target.
    pub target: String,
}

impl Destination {
    /// The built-in channel this destination belongs to (`None` for a custom destination: its
    /// channel is the one of the route that produced it).
    #[must_use]
    pub fn built_in_channel(&self) -> Option<Channel> {
        Some(match self {
            Self::Webhook(_) => Channel::Webhook,
            Self::Websocket(_) => Channel::Websocket,
            Self::Rabbitmq(_) => Channel::Rabbitmq,
            Self::Sqs(_) => Channel::Sqs,
            Self::Kafka(_) => Channel::Kafka,
            Self::Nats(_) => Channel::Nats,
            Self::Pusher(_) => Channel::Pusher,
            Self::Custom(_) => return None,
        })
    }

    /// The webhook URL, if this is a `Webhook` destination.
    #[must_use]
    pub fn webhook(&self) -> Option<&WebhookTarget> {
        match self {
            Self::Webhook(target) => Some(target),
            _ => None,
        }
    }

    /// The Socket.IO target, if this is a `Websocket` destination.
    #[must_use]
    pub fn websocket(&self) -> Option<&WebsocketTarget> {
        match self {
            Self::Websocket(target) => Some(target),
            _ => None,
        }
    }

    /// The RabbitMQ target, if this is a `Rabbitmq` destination.
    #[must_use]
    pub fn rabbitmq(&self) -> Option<&RabbitmqTarget> {
        match self {
            Self::Rabbitmq(target) => Some(target),
            _ => None,
        }
    }

    /// The SQS target, if this is a `Sqs` destination.
    #[must_use]
    pub fn sqs(&self) -> Option<&SqsTarget> {
        match self {
            Self::Sqs(target) => Some(target),
            _ => None,
        }
    }

    /// The Kafka target, if this is a `Kafka` destination.
    #[must_use]
    pub fn kafka(&self) -> Option<&KafkaTarget> {
        match self {
            Self::Kafka(target) => Some(target),
            _ => None,
        }
    }

    /// The NATS target, if this is a `Nats` destination.
    #[must_use]
    pub fn nats(&self) -> Option<&NatsTarget> {
        match self {
            Self::Nats(target) => Some(target),
            _ => None,
        }
    }

    /// The Pusher target, if this is a `Pusher` destination.
    #[must_use]
    pub fn pusher(&self) -> Option<&PusherTarget> {
        match self {
            Self::Pusher(target) => Some(target),
            _ => None,
        }
    }

    /// The custom channel's target, if this is a `Custom` destination.
    #[must_use]
    pub fn custom(&self) -> Option<&CustomTarget> {
        match self {
            Self::Custom(target) => Some(target),
            _ => None,
        }
    }

    /// The error a sink of `sink` reports for an item bound for this destination when it is not
    /// of its channel: `ConfigInvalid` (not retried), naming both channels and the destination.
    #[must_use]
    pub fn mismatch(&self, sink: Channel) -> SinkError {
        let channel = self
            .built_in_channel()
            .map_or_else(|| "custom".to_owned(), |c| c.to_string());
        SinkError::new(
            sink,
            ErrorKind::ConfigInvalid,
            format!(
                "a {channel} destination ({}) cannot be delivered by the {sink} sink",
                self.label()
            ),
        )
    }

    /// A short human-readable label with no secret in it (for logs, the delivery log and ordering
    /// keys): a webhook URL loses its user info and query string, a Pusher app shows only its id.
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            Self::Webhook(t) => match url::Url::parse(&t.url) {
                Ok(u) => format!(
                    "{}://{}{}{}",
                    u.scheme(),
                    u.host_str().unwrap_or_default(),
                    u.port().map(|p| format!(":{p}")).unwrap_or_default(),
                    u.path()
                ),
                Err(_) => "<invalid url>".to_owned(),
            },
            Self::Websocket(t) => match &t.room {
                Some(room) => format!("{} {} (room {room})", t.namespace, t.event),
                None => format!("{} {}", t.namespace, t.event),
            },
            Self::Rabbitmq(t) => format!("{} {}", t.exchange, t.routing_key),
            Self::Sqs(t) => t.queue.clone(),
            Self::Kafka(t) => format!("{} key={}", t.topic, t.key),
            Self::Nats(t) => t.subject.clone(),
            Self::Pusher(t) => format!("app {} {} {}", t.app.app_id, t.channel, t.event),
            Self::Custom(t) => t.target.clone(),
        }
    }

    /// Checks every name in this destination against its channel's rules.
    ///
    /// # Errors
    /// Returns the first [`NameError`], naming the channel, the name and the rule broken.
    pub fn validate(&self) -> Result<(), NameError> {
        match self {
            Self::Webhook(t) => rules::check_webhook_url(&t.url),
            Self::Websocket(t) => rules::check_socketio(&t.namespace, &t.event),
            Self::Rabbitmq(t) => {
                rules::check_rabbitmq("exchange", &t.exchange)?;
                rules::check_rabbitmq("routing key", &t.routing_key)?;
                rules::check_rabbitmq("queue", &t.queue)
            }
            Self::Sqs(t) => rules::check_sqs_queue(&t.queue, t.fifo),
            Self::Kafka(t) => rules::check_kafka_topic(&t.topic),
            Self::Nats(t) => rules::check_nats_subject(&t.subject),
            Self::Pusher(t) => rules::check_pusher(&t.channel, &t.event),
            Self::Custom(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every destination survives the JSON the outbox stores it as (a field named like the
    /// `channel` tag would make it unreadable).
    #[test]
    fn every_destination_round_trips_through_json() {
        let app = PusherApp {
            app_id: "1".into(),
            key: "k".into(),
            secret: Sensitive::new("s"),
            cluster: "us2".into(),
            use_tls: true,
            host: Some("127.0.0.1".into()),
            port: Some(6001),
        };
        let all = [
            Destination::Webhook(WebhookTarget {
                url: "https://a.example/x".into(),
                headers: vec![("h".into(), Sensitive::new("v"))],
                signing_secrets: Vec::new(),
                payload_destination: Some("https://a.example".into()),
                base64: false,
            }),
            Destination::Websocket(WebsocketTarget {
                namespace: "/".into(),
                event: "acme".into(),
                room: Some("acme".into()),
            }),
            Destination::Rabbitmq(RabbitmqTarget {
                exchange: "e".into(),
                routing_key: "r".into(),
                queue: "q".into(),
            }),
            Destination::Sqs(SqsTarget {
                queue: "q".into(),
                fifo: false,
                group_id: None,
                server: Some("Evolution API".into()),
            }),
            Destination::Kafka(KafkaTarget {
                topic: "t".into(),
                key: "k".into(),
            }),
            Destination::Nats(NatsTarget { subject: "s".into() }),
            Destination::Pusher(PusherTarget {
                app,
                channel: "evolution.acme".into(),
                event: "MESSAGES_UPSERT".into(),
            }),
            Destination::Custom(CustomTarget { target: "x".into() }),
        ];
        for destination in all {
            let json = serde_json::to_string(&destination).unwrap();
            let back: Destination = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(back, destination, "{json}");
        }
    }

    #[test]
    fn accessors_and_the_mismatch_error() {
        let kafka = Destination::Kafka(KafkaTarget {
            topic: "t".into(),
            key: "k".into(),
        });
        assert_eq!(kafka.kafka().map(|t| t.topic.as_str()), Some("t"));
        assert!(kafka.nats().is_none() && kafka.webhook().is_none() && kafka.custom().is_none());
        let e = kafka.mismatch(Channel::Nats);
        assert_eq!(
            (e.sink(), e.kind(), e.is_retryable()),
            (Channel::Nats, ErrorKind::ConfigInvalid, false)
        );
        assert_eq!(
            e.message(),
            "a kafka destination (t key=k) cannot be delivered by the nats sink"
        );
        let custom = Destination::Custom(CustomTarget { target: "x".into() });
        assert_eq!(custom.custom().map(|t| t.target.as_str()), Some("x"));
        assert!(
            custom
                .mismatch(Channel::Sqs)
                .message()
                .starts_with("a custom destination (x)")
        );
    }
}
