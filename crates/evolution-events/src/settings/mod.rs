//! Settings: per instance (the specification's JSON bodies) and global (environment).
//!
//! Per-instance settings are parsed with [`WebhookSettings::from_json`] and friends, which report
//! every problem found (not only the first), each naming its field, so a REST API can answer one
//! 400 listing them all and store nothing.
//!
//! By subject: [`EventSelection`] (which events a channel delivers), the per-instance settings
//! (`instance`), the JSON validation reader that parses them (`reader`) and the global settings
//! (`global`).

mod filter;
mod global;
mod instance;
mod reader;
mod selection;

pub use filter::Filter;
pub use global::{GlobalBroker, GlobalPusher, GlobalSettings, GlobalSqs, GlobalWebhook, GlobalWebsocket};
pub use instance::{
    ChannelSettings, EVENT_FORMAT_FIELD, InstanceSettings, PusherSettings, WebhookSettings,
    parse_event_format, redact_url,
};
pub use reader::{FieldError, ValidationErrors, check_signing_secret};
pub use selection::EventSelection;
