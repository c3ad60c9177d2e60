//! [`PusherConfig`]: what is common to every Pusher app the sink triggers on.

use std::time::Duration;

use evolution_events::PusherApp;

/// Pusher's limit on an event's `data` (10 KB), which Evolution API also enforces.
pub const PUSHER_MAX_PAYLOAD_BYTES: usize = 10_240;

/// Pusher's limit on the events of one `batch_events` request.
pub const PUSHER_MAX_BATCH: usize = 10;

/// The sink's settings. Apps (credentials, cluster, host) come with each delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PusherConfig {
    /// The longest one API request may take (connect, send, read the answer). Default 10 s.
    pub request_timeout: Duration,
    /// The longest connecting may take. Default 5 s.
    pub connect_timeout: Duration,
    /// `PUSHER_MAX_PAYLOAD_BYTES`: larger payloads are refused (dead, with the reason), never
    /// truncated nor dropped. Default Pusher's 10 240 bytes; a self-hosted server may allow more.
    pub max_payload_bytes: usize,
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
            batch_events: true,
            probe: None,
            user_agent: concat!("evolution-events/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}
