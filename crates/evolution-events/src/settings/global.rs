//! Global settings: what the environment configures about routing.

use std::collections::BTreeSet;

use crate::channel::Channel;
use crate::config::Vars;
use crate::destination::PusherApp;
use crate::kind::EventKind;
use crate::naming::NamingProfile;
use crate::secret::Sensitive;

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
    /// `WEBSOCKET_EVENTS_<KEY>=true`: the events of the global stream; `None` (no toggle given):
    /// every event.
    pub events: Option<BTreeSet<EventKind>>,
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

impl GlobalBroker {
    /// Reads a broker channel's global settings: its switch ([`Channel::switch_var`]),
    /// `<CH>_GLOBAL_ENABLED`, the per-event toggles `<toggles><KEY>` and the name prefix
    /// `prefix_var`. Problems are recorded in `vars`.
    pub fn from_vars(vars: &mut Vars, channel: Channel, toggles: &str, prefix_var: &str) -> Self {
        let global_enabled = channel
            .env_prefix()
            .is_some_and(|prefix| vars.bool(&format!("{prefix}_GLOBAL_ENABLED")));
        Self {
            enabled: vars.switch(channel),
            global_enabled,
            events: vars.events(toggles),
            prefix: vars.raw(prefix_var).trim().to_owned(),
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
    /// `SERVER_NAME` as given (`evolution`): the `evolution-v2` SQS payload's `server` and part of
    /// its global message groups.
    pub server_name: String,
}

impl GlobalSettings {
    /// Whether `channel` is switched on (`<CHANNEL>_ENABLED`). The webhook channel is always on
    /// (every instance may set a webhook; `webhook.enabled` is the global webhook), and so is a
    /// custom channel (its sink is added by the application).
    #[must_use]
    pub fn enabled(&self, channel: Channel) -> bool {
        match channel {
            Channel::Webhook | Channel::Custom(_) => true,
            Channel::Websocket => self.websocket.enabled,
            Channel::Rabbitmq => self.rabbitmq.enabled,
            Channel::Sqs => self.sqs.broker.enabled,
            Channel::Kafka => self.kafka.enabled,
            Channel::Nats => self.nats.enabled,
            Channel::Pusher => self.pusher.enabled,
        }
    }
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
            server_name: "evolution".to_owned(),
        }
    }
}
