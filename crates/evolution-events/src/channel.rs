//! The delivery channels.

use std::fmt;

/// A delivery channel: one of the seven built-in ones, or a channel a library user added.
///
/// The built-in names (`webhook`, `websocket`, `rabbitmq`, `sqs`, `kafka`, `nats`, `pusher`) are the
/// keys used in the REST API, in configuration, in metrics and in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// HTTP POST to a URL.
    Webhook,
    /// Socket.IO, served by the server itself.
    Websocket,
    /// AMQP 0-9-1 (RabbitMQ).
    Rabbitmq,
    /// Amazon SQS.
    Sqs,
    /// Apache Kafka.
    Kafka,
    /// NATS (core or JetStream).
    Nats,
    /// Pusher Channels HTTP API.
    Pusher,
    /// A channel added by a library user (see `examples/custom_sink.rs`). The name must not be one
    /// of the built-in names.
    Custom(&'static str),
}

impl Channel {
    /// The seven built-in channels, in the order the REST API and the docs list them.
    pub const BUILT_IN: [Self; 7] = [
        Self::Webhook,
        Self::Websocket,
        Self::Rabbitmq,
        Self::Sqs,
        Self::Kafka,
        Self::Nats,
        Self::Pusher,
    ];

    /// The channel's key (`"webhook"`, `"rabbitmq"`, …, or the custom name).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Websocket => "websocket",
            Self::Rabbitmq => "rabbitmq",
            Self::Sqs => "sqs",
            Self::Kafka => "kafka",
            Self::Nats => "nats",
            Self::Pusher => "pusher",
            Self::Custom(name) => name,
        }
    }

    /// The prefix of this channel's environment variables (`WEBHOOK`, `RABBITMQ`, …); `None` for a
    /// custom channel.
    #[must_use]
    pub const fn env_prefix(self) -> Option<&'static str> {
        match self {
            Self::Webhook => Some("WEBHOOK"),
            Self::Websocket => Some("WEBSOCKET"),
            Self::Rabbitmq => Some("RABBITMQ"),
            Self::Sqs => Some("SQS"),
            Self::Kafka => Some("KAFKA"),
            Self::Nats => Some("NATS"),
            Self::Pusher => Some("PUSHER"),
            Self::Custom(_) => None,
        }
    }

    /// The variable that switches this channel on (`WEBSOCKET_ENABLED`, `RABBITMQ_ENABLED`, …);
    /// `None` for the webhook channel (always on: every instance may set a webhook) and for a
    /// custom channel.
    #[must_use]
    pub const fn switch_var(self) -> Option<&'static str> {
        match self {
            Self::Websocket => Some("WEBSOCKET_ENABLED"),
            Self::Rabbitmq => Some("RABBITMQ_ENABLED"),
            Self::Sqs => Some("SQS_ENABLED"),
            Self::Kafka => Some("KAFKA_ENABLED"),
            Self::Nats => Some("NATS_ENABLED"),
            Self::Pusher => Some("PUSHER_ENABLED"),
            Self::Webhook | Self::Custom(_) => None,
        }
    }

    /// The variable holding the payload filter of this channel's global deliveries
    /// (`WEBHOOK_GLOBAL_FILTER`, …; JSON, see [`Filter`](crate::Filter)); `None` for a custom channel.
    #[must_use]
    pub const fn global_filter_var(self) -> Option<&'static str> {
        match self {
            Self::Webhook => Some("WEBHOOK_GLOBAL_FILTER"),
            Self::Websocket => Some("WEBSOCKET_GLOBAL_FILTER"),
            Self::Rabbitmq => Some("RABBITMQ_GLOBAL_FILTER"),
            Self::Sqs => Some("SQS_GLOBAL_FILTER"),
            Self::Kafka => Some("KAFKA_GLOBAL_FILTER"),
            Self::Nats => Some("NATS_GLOBAL_FILTER"),
            Self::Pusher => Some("PUSHER_GLOBAL_FILTER"),
            Self::Custom(_) => None,
        }
    }

    /// The variable choosing what happens to an event larger than this channel's limit
    /// (`SQS_OVERSIZE`, …: `reject` or `reference`); `None` for a channel without a limit
    /// (webhook, websocket) and a custom channel.
    #[must_use]
    pub const fn oversize_var(self) -> Option<&'static str> {
        match self {
            Self::Rabbitmq => Some("RABBITMQ_OVERSIZE"),
            Self::Sqs => Some("SQS_OVERSIZE"),
            Self::Kafka => Some("KAFKA_OVERSIZE"),
            Self::Nats => Some("NATS_OVERSIZE"),
            Self::Pusher => Some("PUSHER_OVERSIZE"),
            Self::Webhook | Self::Websocket | Self::Custom(_) => None,
        }
    }

    /// Parses a built-in channel key, case-insensitively.
    ///
    /// # Errors
    /// Returns [`UnknownChannel`] naming the valid keys.
    pub fn parse_built_in(input: &str) -> Result<Self, UnknownChannel> {
        Self::BUILT_IN
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(input))
            .ok_or_else(|| UnknownChannel(input.to_owned()))
    }
}

impl serde::Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A channel key that is not one of the built-in channels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown channel `{0}`: use one of webhook, websocket, rabbitmq, sqs, kafka, nats, pusher")]
pub struct UnknownChannel(pub String);
