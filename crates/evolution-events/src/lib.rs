//! Core types of **evolution events**: the event registry and its naming profiles, the event
//! envelope, per-instance and global settings, the [`EventSink`] trait every channel implements,
//! [`SinkError`] and the [`RetryPolicy`], and the strict reading of configuration variables
//! ([`Vars`], [`SinkConfig`]) through which each channel crate reads its own.
//!
//! Types and traits only: no I/O, no environment (variables arrive as a map), no tasks. Sink crates depend on this crate and
//! their client library, nothing else.

pub mod channel;
pub mod config;
pub mod destination;
pub mod envelope;
pub mod error;
pub mod format;
pub mod in_order;
pub mod instance;
pub mod kind;
pub mod naming;
pub mod reconnect;
pub mod retry;
pub mod rules;
pub mod secret;
pub mod settings;
pub mod sink;
pub mod trace;

pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use channel::{Channel, UnknownChannel};
pub use config::{DispatchHints, SinkConfig, Var, Vars};
pub use destination::{
    CustomTarget, Destination, KafkaTarget, NatsTarget, PusherApp, PusherTarget, RabbitmqTarget, SqsTarget,
    WebhookTarget, WebsocketTarget,
};
pub use envelope::{EventEnvelope, EvolutionWire};
pub use error::{ErrorKind, Result, Retry, SinkError, error_chain};
pub use format::{CLOUDEVENTS_JSON, EventFormat, UnknownFormat};
pub use in_order::{HoldBack, group_by_key, send_in_order};
pub use instance::{InstanceName, InvalidInstanceName};
pub use kind::{EventInfo, EventKind, REGISTRY, UnknownEvent};
pub use naming::{NamingProfile, Scope};
pub use retry::{DeadReason, Decision, RetryPolicy};
pub use rules::NameError;
pub use secret::{REDACTED, Sensitive, scrub};
pub use serde_json::value::RawValue;
pub use settings::{
    ChannelSettings, EVENT_FORMAT_FIELD, EventSelection, FieldError, Filter, GlobalBroker, GlobalPusher,
    GlobalSettings, GlobalSqs, GlobalWebhook, GlobalWebsocket, InstanceSettings, PusherSettings,
    ValidationErrors, WebhookSettings, check_signing_secret, parse_event_format, redact_url,
};
pub use sink::{Capabilities, Delivery, DeliveryId, DeliveryReport, EventSink};
pub use trace::{TraceContext, TraceContextError};
pub use uuid::Uuid;
