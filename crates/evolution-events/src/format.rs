//! The event format on the wire: the Evolution envelope (the default) or CloudEvents 1.0.
//!
//! In CloudEvents mode every channel carries a CloudEvent: `id` (the event id), `source`
//! (`SERVER_URL`, else `/evolution-events`), `type` (`evolution.<event wire name>`), `time`,
//! `subject` (the instance), `datacontenttype` (`application/json`), `data` (the event's data), and
//! the extensions `sequence` (the per-instance sequence, zero-padded to 20 digits so that it orders
//! as text, as CloudEvents' sequence extension asks), `sender` and `apikey` when the envelope has
//! them, and `traceparent` / `tracestate` (CloudEvents' distributed-tracing extension). A channel
//! with a binary content mode in its protocol binding (HTTP, Kafka, AMQP, NATS) puts the
//! attributes in its headers and the data in the body ([`EventFormat::CloudEvents`]) unless the
//! structured mode is asked for ([`EventFormat::CloudEventsStructured`]); the others (SQS,
//! Socket.IO, Pusher) always carry the structured JSON event.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How events are written on the wire (`EVENT_FORMAT`, or an instance's `eventFormat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventFormat {
    /// The Evolution envelope `{"id","event","instance","data",…}` (DESIGN §4).
    #[default]
    #[serde(rename = "evolution")]
    Evolution,
    /// CloudEvents 1.0, binary content mode where the channel's binding has one.
    #[serde(rename = "cloudevents")]
    CloudEvents,
    /// CloudEvents 1.0, structured content mode (`application/cloudevents+json`) on every channel.
    #[serde(rename = "cloudevents-structured")]
    CloudEventsStructured,
}

/// An unknown format name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown event format `{0}`: use evolution, cloudevents or cloudevents-structured")]
pub struct UnknownFormat(pub String);

/// The media type of a structured CloudEvent in JSON.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// The `source` of CloudEvents when `SERVER_URL` is not set.
pub const DEFAULT_SOURCE: &str = "/evolution-events";

impl EventFormat {
    /// Every format.
    pub const ALL: [Self; 3] = [Self::Evolution, Self::CloudEvents, Self::CloudEventsStructured];

    /// Its name: `evolution`, `cloudevents` or `cloudevents-structured`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Evolution => "evolution",
            Self::CloudEvents => "cloudevents",
            Self::CloudEventsStructured => "cloudevents-structured",
        }
    }

    /// Parses a name (any case).
    ///
    /// # Errors
    /// [`UnknownFormat`] naming the valid values.
    pub fn parse(input: &str) -> Result<Self, UnknownFormat> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(input.trim()))
            .ok_or_else(|| UnknownFormat(input.to_owned()))
    }

    /// Whether events are CloudEvents (either mode).
    #[must_use]
    pub const fn is_cloudevents(self) -> bool {
        !matches!(self, Self::Evolution)
    }
}

impl fmt::Display for EventFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
