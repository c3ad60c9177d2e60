//! Naming profiles: every name on every channel, derived from the registry.
//!
//! Two profiles exist. [`NamingProfile::Seed`] (the default) produces the names the specification
//! documents; [`NamingProfile::EvolutionV2`] produces the exact names Evolution API 2.3.6 uses, so
//! its existing consumers keep working, minus its bugs (every event is deliverable on every channel,
//! SQS queue names are derived from the filter key for every event).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::destination::{
    KafkaTarget, NatsTarget, PusherApp, PusherTarget, RabbitmqTarget, SqsTarget, WebsocketTarget,
};
use crate::instance::InstanceName;
use crate::kind::EventKind;

/// Socket.IO room (on namespace `/`) of the sockets allowed to see every instance.
pub const GLOBAL_ROOM: &str = "*";
/// Socket.IO event name of the global stream in the `seed` profile (`socket.on('*', …)`).
pub const GLOBAL_EVENT: &str = "*";

/// Which set of names the deliveries use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NamingProfile {
    /// The names of the specification (`seed`): payload `event` = `MESSAGES_UPSERT`, routing key
    /// `evolution.{instance}.messages-upsert`, …
    #[default]
    #[serde(rename = "seed")]
    Seed,
    /// The names of Evolution API 2.3.6 (`evolution-v2`): payload `event` = `messages.upsert`,
    /// one exchange per instance, …
    #[serde(rename = "evolution-v2")]
    EvolutionV2,
}

/// Whether a delivery comes from an instance's own settings or from the global (env) settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Configured per instance (`/{channel}/set/{instance}`).
    Instance,
    /// Configured globally (`<CHANNEL>_GLOBAL_*` env).
    Global,
}

/// Naming options of the RabbitMQ channel.
#[derive(Clone, Copy, Debug)]
pub struct RabbitmqNaming<'a> {
    /// `RABBITMQ_EXCHANGE_NAME`.
    pub exchange: &'a str,
    /// `RABBITMQ_PREFIX_KEY`.
    pub prefix: &'a str,
}

/// Naming options of the SQS channel.
#[derive(Clone, Copy, Debug)]
pub struct SqsNaming<'a> {
    /// Queue name prefix of the `seed` profile (`evolution`).
    pub prefix: &'a str,
    /// `SQS_GLOBAL_PREFIX_NAME`: prefix of global queues in the `evolution-v2` profile (`global`).
    pub global_prefix: &'a str,
    /// `SQS_GLOBAL_FORCE_SINGLE_QUEUE`: global deliveries all go to one queue.
    pub single_queue: bool,
    /// `SQS_FIFO`: FIFO queues (`.fifo`). Always true in the `evolution-v2` profile.
    pub fifo: bool,
}

impl NamingProfile {
    /// Both profiles.
    pub const ALL: [Self; 2] = [Self::Seed, Self::EvolutionV2];

    /// The profile's name: `seed` or `evolution-v2`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::EvolutionV2 => "evolution-v2",
        }
    }

    /// Parses `seed` or `evolution-v2` (any case).
    ///
    /// # Errors
    /// Returns [`UnknownProfile`] naming both valid values.
    pub fn parse(input: &str) -> Result<Self, UnknownProfile> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(input.trim()))
            .ok_or_else(|| UnknownProfile(input.to_owned()))
    }

    /// The payload's `event` field.
    #[must_use]
    pub fn payload_event(self, kind: EventKind) -> &'static str {
        match self {
            Self::Seed => kind.key(),
            Self::EvolutionV2 => kind.wire(),
        }
    }

    /// The path segment webhook `byEvents` appends: `MESSAGES_UPSERT` (seed) or `messages-upsert`.
    #[must_use]
    pub fn webhook_segment(self, kind: EventKind) -> String {
        match self {
            Self::Seed => kind.key().to_owned(),
            Self::EvolutionV2 => kind.kebab(),
        }
    }

    /// The webhook URL for `kind`: `base`, or with `by_events` the event segment joined as a proper
    /// path segment (a trailing slash does not double, the query string is kept).
    ///
    /// # Errors
    /// [`NameError`] when `base` is not an absolute http(s) URL.
    pub fn webhook_url(self, base: &str, kind: EventKind, by_events: bool) -> Result<String, NameError> {
        check_webhook_url(base)?;
        if !by_events {
            return Ok(base.to_owned());
        }
        let mut url =
            url::Url::parse(base).map_err(|e| NameError::new(Channel::Webhook, base, e.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| NameError::new(Channel::Webhook, base, "the URL cannot have a path".to_owned()))?
            .pop_if_empty()
            .push(&self.webhook_segment(kind));
        Ok(url.into())
    }

    /// Socket.IO emissions for one event.
    #[must_use]
    pub fn websocket(self, scope: Scope, instance: &InstanceName, kind: EventKind) -> Vec<WebsocketTarget> {
        let target = |namespace: String, event: String, room: Option<String>| WebsocketTarget {
            namespace,
            event,
            room,
        };
        let inst = instance.as_str();
        match (self, scope) {
            (Self::Seed, Scope::Instance) => vec![
                target("/".into(), inst.into(), Some(inst.into())),
                target(format!("/{inst}"), kind.wire().into(), None),
            ],
            (Self::Seed, Scope::Global) => {
                vec![target("/".into(), GLOBAL_EVENT.into(), Some(GLOBAL_ROOM.into()))]
            }
            (Self::EvolutionV2, Scope::Instance) => {
                vec![target(format!("/{inst}"), kind.wire().into(), None)]
            }
            (Self::EvolutionV2, Scope::Global) => {
                vec![target("/".into(), kind.wire().into(), Some(GLOBAL_ROOM.into()))]
            }
        }
    }

    /// RabbitMQ exchange, routing key and queue.
    #[must_use]
    pub fn rabbitmq(
        self,
        scope: Scope,
        instance: &InstanceName,
        kind: EventKind,
        opts: RabbitmqNaming<'_>,
    ) -> RabbitmqTarget {
        match (self, scope) {
            (Self::Seed, _) => {
                let key = join_dotted(&[opts.prefix, instance.as_str(), &kind.kebab()]);
                RabbitmqTarget {
                    exchange: opts.exchange.to_owned(),
                    queue: key.clone(),
                    routing_key: key,
                }
            }
            (Self::EvolutionV2, Scope::Instance) => RabbitmqTarget {
                exchange: instance.as_str().to_owned(),
                routing_key: kind.wire().to_owned(),
                queue: format!("{instance}.{}", kind.wire()),
            },
            (Self::EvolutionV2, Scope::Global) => RabbitmqTarget {
                exchange: opts.exchange.to_owned(),
                routing_key: kind.wire().to_owned(),
                queue: join_dotted(&[opts.prefix, kind.wire()]),
            },
        }
    }

    /// SQS queue (name only: the URL is resolved through the API).
    #[must_use]
    pub fn sqs(
        self,
        scope: Scope,
        instance: &InstanceName,
        kind: EventKind,
        opts: SqsNaming<'_>,
    ) -> SqsTarget {
        let (queue, fifo) = match (self, scope) {
            (Self::Seed, Scope::Global) if opts.single_queue => {
                (format!("{}-global", opts.prefix), opts.fifo)
            }
            (Self::Seed, _) => (format!("{}-{instance}-{}", opts.prefix, kind.kebab()), opts.fifo),
            (Self::EvolutionV2, Scope::Instance) => (format!("{instance}_{}", kind.snake()), true),
            (Self::EvolutionV2, Scope::Global) if opts.single_queue => {
                (format!("{}_singlequeue", opts.global_prefix), true)
            }
            (Self::EvolutionV2, Scope::Global) => (format!("{}_{}", opts.global_prefix, kind.snake()), true),
        };
        SqsTarget {
            queue: if fifo { format!("{queue}.fifo") } else { queue },
            fifo,
            group_id: fifo.then(|| instance.as_str().to_owned()),
        }
    }

    /// Kafka topic and record key.
    #[must_use]
    pub fn kafka(self, scope: Scope, instance: &InstanceName, kind: EventKind, prefix: &str) -> KafkaTarget {
        match (self, scope) {
            (Self::Seed, _) => KafkaTarget {
                topic: join_dotted(&[prefix, instance.as_str(), &kind.kebab()]),
                key: instance.as_str().to_owned(),
            },
            (Self::EvolutionV2, Scope::Instance) => KafkaTarget {
                topic: join_dotted(&[prefix, instance.as_str(), kind.wire()]),
                key: instance.as_str().to_owned(),
            },
            (Self::EvolutionV2, Scope::Global) => KafkaTarget {
                topic: join_dotted(&[prefix, "global", kind.wire()]),
                key: format!("{instance}-{}", kind.wire()),
            },
        }
    }

    /// NATS subject.
    #[must_use]
    pub fn nats(self, scope: Scope, instance: &InstanceName, kind: EventKind, prefix: &str) -> NatsTarget {
        let subject = match (self, scope) {
            (Self::Seed, _) => join_dotted(&[prefix, instance.as_str(), kind.wire()]),
            (Self::EvolutionV2, Scope::Instance) => join_dotted(&[instance.as_str(), kind.wire()]),
            (Self::EvolutionV2, Scope::Global) => join_dotted(&[prefix, kind.wire()]),
        };
        NatsTarget { subject }
    }

    /// Pusher channel and event.
    #[must_use]
    pub fn pusher(
        self,
        instance: &InstanceName,
        kind: EventKind,
        prefix: &str,
        app: PusherApp,
    ) -> PusherTarget {
        let (channel, event) = match self {
            Self::Seed => (join_dotted(&[prefix, instance.as_str()]), kind.key().to_owned()),
            Self::EvolutionV2 => (instance.as_str().to_owned(), kind.wire().to_owned()),
        };
        PusherTarget { app, channel, event }
    }
}

impl fmt::Display for NamingProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Joins the non-empty parts with dots (an empty prefix adds nothing, never `undefined.`).
fn join_dotted(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(".")
}

/// A profile name that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown naming profile `{0}`: use `seed` (the default) or `evolution-v2`")]
pub struct UnknownProfile(pub String);

/// A name that its channel would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{channel} name `{name}` is invalid: {rule}")]
pub struct NameError {
    /// The channel whose rule is broken.
    pub channel: Channel,
    /// The name.
    pub name: String,
    /// The rule, and what to do about it.
    pub rule: String,
}

impl NameError {
    fn new(channel: Channel, name: &str, rule: impl Into<String>) -> Self {
        Self {
            channel,
            name: name.to_owned(),
            rule: rule.into(),
        }
    }
}

/// The longest SQS queue name, `.fifo` included.
pub const SQS_MAX_QUEUE_NAME: usize = 80;
/// The longest Kafka topic name.
pub const KAFKA_MAX_TOPIC: usize = 249;
/// The longest AMQP short string (exchange, queue, routing key), in bytes.
pub const AMQP_MAX_NAME: usize = 255;
/// The longest Pusher channel name.
pub const PUSHER_MAX_CHANNEL: usize = 164;
/// The longest Pusher event name.
pub const PUSHER_MAX_EVENT: usize = 200;
/// Socket.IO event names a server cannot emit (they are reserved by the protocol).
pub const SOCKETIO_RESERVED: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// An absolute http(s) URL with a host.
///
/// # Errors
/// [`NameError`] saying what is wrong.
pub fn check_webhook_url(url: &str) -> Result<(), NameError> {
    let err = |rule: &str| NameError::new(Channel::Webhook, url, rule);
    let parsed = url::Url::parse(url).map_err(|e| err(&format!("not an absolute URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(err("only http:// and https:// URLs can receive webhooks"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(err("the URL has no host"));
    }
    Ok(())
}

/// A Socket.IO namespace (starts with `/`) and a non-reserved event name.
///
/// # Errors
/// [`NameError`] saying what is wrong.
pub fn check_socketio(namespace: &str, event: &str) -> Result<(), NameError> {
    if !namespace.starts_with('/') {
        return Err(NameError::new(
            Channel::Websocket,
            namespace,
            "a namespace starts with `/`",
        ));
    }
    if event.is_empty() {
        return Err(NameError::new(
            Channel::Websocket,
            event,
            "an event name cannot be empty",
        ));
    }
    if SOCKETIO_RESERVED.contains(&event) {
        return Err(NameError::new(
            Channel::Websocket,
            event,
            "this event name is reserved by Socket.IO; rename the instance",
        ));
    }
    Ok(())
}

/// An AMQP name: 1 to 255 bytes; a queue or exchange may not start with `amq.`.
///
/// # Errors
/// [`NameError`] saying what is wrong.
pub fn check_rabbitmq(what: &str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::new(
            Channel::Rabbitmq,
            name,
            format!("the {what} cannot be empty"),
        ));
    }
    if name.len() > AMQP_MAX_NAME {
        return Err(NameError::new(
            Channel::Rabbitmq,
            name,
            format!(
                "the {what} is {} bytes; AMQP allows at most {AMQP_MAX_NAME}",
                name.len()
            ),
        ));
    }
    if what != "routing key" && name.starts_with("amq.") {
        return Err(NameError::new(
            Channel::Rabbitmq,
            name,
            format!("a {what} cannot start with `amq.` (reserved)"),
        ));
    }
    Ok(())
}

/// An SQS queue name: at most 80 characters `[A-Za-z0-9_-]`, `.fifo` at the end exactly for FIFO
/// queues.
///
/// # Errors
/// [`NameError`] saying what is wrong and what to do.
pub fn check_sqs_queue(name: &str, fifo: bool) -> Result<(), NameError> {
    let base = match (fifo, name.strip_suffix(".fifo")) {
        (true, Some(base)) => base,
        (true, None) => {
            return Err(NameError::new(
                Channel::Sqs,
                name,
                "a FIFO queue name must end in `.fifo`",
            ));
        }
        (false, Some(_)) => {
            return Err(NameError::new(
                Channel::Sqs,
                name,
                "only a FIFO queue name may end in `.fifo`",
            ));
        }
        (false, None) => name,
    };
    if name.len() > SQS_MAX_QUEUE_NAME {
        return Err(NameError::new(
            Channel::Sqs,
            name,
            format!(
                "it is {} characters and SQS allows at most {SQS_MAX_QUEUE_NAME}; use a shorter instance name \
                 (global deliveries can also use SQS_GLOBAL_FORCE_SINGLE_QUEUE)",
                name.len()
            ),
        ));
    }
    if base.is_empty()
        || !base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(NameError::new(
            Channel::Sqs,
            name,
            "SQS queue names contain only ASCII letters, digits, `-` and `_`",
        ));
    }
    Ok(())
}

/// A Kafka topic: 1 to 249 characters `[A-Za-z0-9._-]`, not `.` or `..`.
///
/// # Errors
/// [`NameError`] saying what is wrong.
pub fn check_kafka_topic(topic: &str) -> Result<(), NameError> {
    if topic.is_empty() || topic == "." || topic == ".." {
        return Err(NameError::new(
            Channel::Kafka,
            topic,
            "a topic cannot be empty, `.` or `..`",
        ));
    }
    if topic.len() > KAFKA_MAX_TOPIC {
        return Err(NameError::new(
            Channel::Kafka,
            topic,
            format!(
                "it is {} characters and Kafka allows at most {KAFKA_MAX_TOPIC}",
                topic.len()
            ),
        ));
    }
    if !topic
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(NameError::new(
            Channel::Kafka,
            topic,
            "Kafka topics contain only ASCII letters, digits, `.`, `_` and `-`",
        ));
    }
    Ok(())
}

/// A NATS publish subject: dot-separated non-empty tokens, no whitespace, no wildcards.
///
/// # Errors
/// [`NameError`] saying what is wrong.
pub fn check_nats_subject(subject: &str) -> Result<(), NameError> {
    if subject.split('.').any(str::is_empty) {
        return Err(NameError::new(
            Channel::Nats,
            subject,
            "a subject has no empty tokens (no leading, trailing or double dots)",
        ));
    }
    if subject
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
    {
        return Err(NameError::new(
            Channel::Nats,
            subject,
            "a publish subject has no whitespace and no wildcards (`*`, `>`)",
        ));
    }
    Ok(())
}

/// A Pusher channel (1 to 164 characters `[A-Za-z0-9_\-=@,.;]`) and event (1 to 200 bytes).
///
/// # Errors
/// [`NameError`] saying what is wrong.
pub fn check_pusher(channel: &str, event: &str) -> Result<(), NameError> {
    if channel.is_empty()
        || channel.len() > PUSHER_MAX_CHANNEL
        || !channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';'))
    {
        return Err(NameError::new(
            Channel::Pusher,
            channel,
            format!("a channel is 1 to {PUSHER_MAX_CHANNEL} characters of A-Z a-z 0-9 _ - = @ , . ;"),
        ));
    }
    if event.is_empty() || event.len() > PUSHER_MAX_EVENT {
        return Err(NameError::new(
            Channel::Pusher,
            event,
            format!("an event name is 1 to {PUSHER_MAX_EVENT} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(name: &str) -> InstanceName {
        InstanceName::new(name).unwrap()
    }

    #[test]
    fn webhook_by_events_joins_a_path_segment() {
        let p = NamingProfile::Seed;
        let k = EventKind::MessagesUpsert;
        for (base, want) in [
            (
                "https://meusite.com/webhook",
                "https://meusite.com/webhook/MESSAGES_UPSERT",
            ),
            (
                "https://meusite.com/webhook/",
                "https://meusite.com/webhook/MESSAGES_UPSERT",
            ),
            ("https://meusite.com", "https://meusite.com/MESSAGES_UPSERT"),
            (
                "https://h/webhook-test/abc?x=1&y=2",
                "https://h/webhook-test/abc/MESSAGES_UPSERT?x=1&y=2",
            ),
        ] {
            assert_eq!(p.webhook_url(base, k, true).unwrap(), want);
        }
        assert_eq!(
            NamingProfile::EvolutionV2
                .webhook_url("http://h/w", EventKind::GroupParticipantsUpdate, true)
                .unwrap(),
            "http://h/w/group-participants-update"
        );
        assert_eq!(p.webhook_url("https://h/w?q", k, false).unwrap(), "https://h/w?q");
        assert!(p.webhook_url("ftp://h/w", k, true).is_err());
        assert!(p.webhook_url("not a url", k, false).is_err());
    }

    #[test]
    fn seed_names_match_the_design_table() {
        let p = NamingProfile::Seed;
        let i = inst("minha-instancia");
        let k = EventKind::MessagesUpsert;
        let rmq = p.rabbitmq(
            Scope::Instance,
            &i,
            k,
            RabbitmqNaming {
                exchange: "evolution",
                prefix: "evolution",
            },
        );
        assert_eq!(rmq.routing_key, "evolution.minha-instancia.messages-upsert");
        assert_eq!(rmq.queue, rmq.routing_key);
        assert_eq!(rmq.exchange, "evolution");
        let opts = SqsNaming {
            prefix: "evolution",
            global_prefix: "global",
            single_queue: false,
            fifo: false,
        };
        assert_eq!(
            p.sqs(Scope::Instance, &i, k, opts).queue,
            "evolution-minha-instancia-messages-upsert"
        );
        let fifo = p.sqs(Scope::Instance, &i, k, SqsNaming { fifo: true, ..opts });
        assert_eq!(fifo.queue, "evolution-minha-instancia-messages-upsert.fifo");
        assert_eq!(fifo.group_id.as_deref(), Some("minha-instancia"));
        assert_eq!(
            p.sqs(
                Scope::Global,
                &i,
                k,
                SqsNaming {
                    single_queue: true,
                    ..opts
                }
            )
            .queue,
            "evolution-global"
        );
        let kafka = p.kafka(Scope::Instance, &i, k, "evolution");
        assert_eq!(
            (kafka.topic.as_str(), kafka.key.as_str()),
            ("evolution.minha-instancia.messages-upsert", "minha-instancia")
        );
        assert_eq!(
            p.nats(Scope::Instance, &i, k, "evolution").subject,
            "evolution.minha-instancia.messages.upsert"
        );
        assert_eq!(
            p.nats(Scope::Instance, &i, EventKind::ConnectionUpdate, "evolution")
                .subject,
            "evolution.minha-instancia.connection.update"
        );
        assert_eq!(p.payload_event(k), "MESSAGES_UPSERT");
    }

    #[test]
    fn evolution_v2_names_match_evolution_api() {
        let p = NamingProfile::EvolutionV2;
        let i = inst("acme");
        let k = EventKind::GroupParticipantsUpdate;
        let rmq = p.rabbitmq(
            Scope::Instance,
            &i,
            k,
            RabbitmqNaming {
                exchange: "evolution_exchange",
                prefix: "",
            },
        );
        assert_eq!(
            (
                rmq.exchange.as_str(),
                rmq.routing_key.as_str(),
                rmq.queue.as_str()
            ),
            (
                "acme",
                "group-participants.update",
                "acme.group-participants.update"
            )
        );
        let g = p.rabbitmq(
            Scope::Global,
            &i,
            k,
            RabbitmqNaming {
                exchange: "evolution_exchange",
                prefix: "",
            },
        );
        assert_eq!(g.queue, "group-participants.update", "no `undefined.` prefix");
        let opts = SqsNaming {
            prefix: "evolution",
            global_prefix: "global",
            single_queue: false,
            fifo: false,
        };
        assert_eq!(
            p.sqs(Scope::Instance, &i, k, opts).queue,
            "acme_group_participants_update.fifo"
        );
        assert_eq!(
            p.sqs(Scope::Instance, &i, EventKind::SendMessageUpdate, opts)
                .queue,
            "acme_send_message_update.fifo"
        );
        assert_eq!(
            p.kafka(Scope::Instance, &i, EventKind::MessagesUpsert, "evolution")
                .topic,
            "evolution.acme.messages.upsert"
        );
        let gk = p.kafka(Scope::Global, &i, EventKind::MessagesUpsert, "evolution");
        assert_eq!(
            (gk.topic.as_str(), gk.key.as_str()),
            ("evolution.global.messages.upsert", "acme-messages.upsert")
        );
        assert_eq!(
            p.nats(Scope::Instance, &i, k, "evolution").subject,
            "acme.group-participants.update"
        );
        assert_eq!(
            p.nats(Scope::Global, &i, k, "").subject,
            "group-participants.update"
        );
        assert_eq!(
            p.payload_event(EventKind::TypebotChangeStatus),
            "typebot.change-status"
        );
    }

    #[test]
    fn sqs_refuses_names_over_80() {
        let long = inst(&"x".repeat(64));
        let opts = SqsNaming {
            prefix: "evolution",
            global_prefix: "global",
            single_queue: false,
            fifo: false,
        };
        let t = NamingProfile::Seed.sqs(Scope::Instance, &long, EventKind::GroupParticipantsUpdate, opts);
        let err = check_sqs_queue(&t.queue, t.fifo).unwrap_err();
        assert!(err.rule.contains("at most 80"), "{err}");
    }

    #[test]
    fn checks_refuse_bad_names() {
        assert!(check_nats_subject("a..b").is_err());
        assert!(check_nats_subject("a.*").is_err());
        assert!(check_nats_subject("a b").is_err());
        assert!(check_kafka_topic("a/b").is_err());
        assert!(check_rabbitmq("queue", "amq.x").is_err());
        assert!(check_rabbitmq("queue", &"q".repeat(256)).is_err());
        assert!(check_pusher("a b", "e").is_err());
        assert!(check_socketio("/", "connect").is_err());
        assert!(check_sqs_queue("a.b", false).is_err());
        assert!(check_sqs_queue("ab", true).is_err());
        assert!(check_webhook_url("http://").is_err());
    }
}
