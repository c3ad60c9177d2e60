//! [`PusherConfig`]: what is common to every Pusher app the sink triggers on.

use std::time::Duration;

use evolution_events::PusherApp;

/// Pusher's limit on an event's `data` (10 KB), which Evolution API also enforces.
pub const PUSHER_MAX_PAYLOAD_BYTES: usize = 10_240;

/// Pusher's limit on the events of one `batch_events` request.
pub const PUSHER_MAX_BATCH: usize = 10;

/// What happens to an event whose payload is over [`PusherConfig::max_payload_bytes`]
/// (`PUSHER_OVERSIZE`). Never dropped silently either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Oversize {
    /// `reject` (default): not sent; the delivery goes dead with the reason (size and limit), and
    /// can be redriven once the limit is raised.
    #[default]
    Reject,
    /// `reference`: sends `{"id", "event", "instance", "truncated": true}` instead, which a client
    /// resolves with `GET /events/{instance}/{id}` while the outbox keeps the event.
    Reference,
}

impl Oversize {
    /// Parses `reject` or `reference` (any case).
    ///
    /// # Errors
    /// The message says which values are allowed.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "reject" => Ok(Self::Reject),
            "reference" => Ok(Self::Reference),
            _ => Err(format!("`{value}` is not a policy: use `reject` or `reference`")),
        }
    }
}

/// The sink's settings. Apps (credentials, cluster, host) come with each delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PusherConfig {
    /// The longest one API request may take (connect, send, read the answer). Default 10 s.
    pub request_timeout: Duration,
    /// The longest connecting may take. Default 5 s.
    pub connect_timeout: Duration,
    /// `PUSHER_MAX_PAYLOAD_BYTES`: larger payloads follow [`PusherConfig::oversize`], never
    /// dropped silently. Default Pusher's 10 240 bytes; a self-hosted server may allow more.
    pub max_payload_bytes: usize,
    /// `PUSHER_OVERSIZE`: what to do with a larger payload. Default [`Oversize::Reject`].
    pub oversize: Oversize,
    /// `PUSHER_BATCH_EVENTS`: send up to 10 events per request (`batch_events`), else one request
    /// per event (`events`). Default `true`.
    pub batch_events: bool,
    /// The app `health_check` queries (`GET /apps/{id}/channels`): the global app. Without one,
    /// the health check has nothing to ask and succeeds.
    pub probe: Option<PusherApp>,
    /// `User-Agent` of every request.
    pub user_agent: String,
}

impl Default for PusherConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_payload_bytes: PUSHER_MAX_PAYLOAD_BYTES,
            oversize: Oversize::Reject,
            batch_events: true,
            probe: None,
            user_agent: concat!("evolution-events/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}
