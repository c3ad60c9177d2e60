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
pub use crate::rules::{
    AMQP_MAX_NAME, KAFKA_MAX_TOPIC, NameError, PUSHER_MAX_CHANNEL, PUSHER_MAX_EVENT, SOCKETIO_RESERVED,
    SQS_MAX_QUEUE_NAME, check_kafka_topic, check_nats_subject, check_pusher, check_rabbitmq, check_socketio,
    check_sqs_queue, check_webhook_url,
};

/// The longest SQS `MessageGroupId`.
const SQS_MAX_GROUP_ID: usize = 128;

/// Socket.IO room (on namespace `/`) of the sockets allowed to see every instance.
pub const GLOBAL_ROOM: &str = "*";
/// Socket.IO event name of the global stream in the `seed` profile (`socket.on('*', …)`).
pub const GLOBAL_EVENT: &str = "*";

/// Evolution API 2.3.6's subscription list, in its order: what its settings answers list for
/// `events: []` ("every event"). [`EventKind::Errors`] is not an Evolution API event.
pub const EVOLUTION_SUBSCRIPTIONS: [EventKind; 31] = [
    EventKind::ApplicationStartup,
    EventKind::QrcodeUpdated,
    EventKind::MessagesSet,
    EventKind::MessagesUpsert,
    EventKind::MessagesEdited,
    EventKind::MessagesUpdate,
    EventKind::MessagesDelete,
    EventKind::SendMessage,
    EventKind::SendMessageUpdate,
    EventKind::ContactsSet,
    EventKind::ContactsUpsert,
    EventKind::ContactsUpdate,
    EventKind::PresenceUpdate,
    EventKind::ChatsSet,
    EventKind::ChatsUpsert,
    EventKind::ChatsUpdate,
    EventKind::ChatsDelete,
    EventKind::GroupsUpsert,
    EventKind::GroupsUpdate,
    EventKind::GroupParticipantsUpdate,
    EventKind::ConnectionUpdate,
    EventKind::LabelsEdit,
    EventKind::LabelsAssociation,
    EventKind::Call,
    EventKind::TypebotStart,
    EventKind::TypebotChangeStatus,
    EventKind::RemoveInstance,
    EventKind::LogoutInstance,
    EventKind::InstanceCreate,
    EventKind::InstanceDelete,
    EventKind::StatusInstance,
];

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
    /// `SERVER_NAME`: the `evolution-v2` payload's `server`, and (made a valid name) the first
    /// part of its global message groups.
    pub server: &'a str,
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

    /// The CloudEvents `type` of `kind` in CloudEvents mode ([`crate::format`]), the same in
    /// both profiles: `evolution.` and the wire name (`evolution.messages.upsert`,
    /// `evolution.group-participants.update`).
    #[must_use]
    pub fn cloudevents_type(kind: EventKind) -> String {
        format!("evolution.{}", kind.wire())
    }

    /// An event as a settings answer lists it (`/{channel}/set`, `/{channel}/find`): the filter key,
    /// but `GROUP_UPDATE` for [`EventKind::GroupsUpdate`] in `evolution-v2` (the name Evolution
    /// API's subscription lists use).
    #[must_use]
    pub fn settings_event(self, kind: EventKind) -> &'static str {
        match (self, kind) {
            (Self::EvolutionV2, EventKind::GroupsUpdate) => "GROUP_UPDATE",
            _ => kind.key(),
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
        let group_id = match (self, scope) {
            (Self::Seed, _) => fifo.then(|| instance.as_str().to_owned()),
            // Evolution API's: one constant group per instance queue, and
            // `<SERVER_NAME>-<event>-<instance>` on global queues.
            (Self::EvolutionV2, Scope::Instance) => Some("evolution".to_owned()),
            (Self::EvolutionV2, Scope::Global) => {
                let server = InstanceName::from_label(opts.server)
                    .map_or_else(|_| "evolution".to_owned(), |n| n.as_str().to_owned());
                let event = if opts.single_queue {
                    "singlequeue".to_owned()
                } else {
                    kind.snake()
                };
                let mut group = format!("{server}-{event}-{instance}");
                group.truncate(SQS_MAX_GROUP_ID);
                Some(group)
            }
        };
        SqsTarget {
            queue: if fifo { format!("{queue}.fifo") } else { queue },
            fifo,
            group_id,
            server: (self == Self::EvolutionV2).then(|| opts.server.to_owned()),
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
            server: "evolution",
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
            server: "evolution",
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
            server: "evolution",
        };
        let t = NamingProfile::Seed.sqs(Scope::Instance, &long, EventKind::GroupParticipantsUpdate, opts);
        let err = check_sqs_queue(&t.queue, t.fifo).unwrap_err();
        assert!(err.rule.contains("at most 80"), "{err}");
    }
}
