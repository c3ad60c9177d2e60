//! [`WebhookConfig`]: the settings of one [`WebhookSink`](crate::WebhookSink).

use std::time::Duration;

use crate::network::Network;

/// The `User-Agent` sent by default: `evolution-events/<crate version>`.
pub const DEFAULT_USER_AGENT: &str = concat!("evolution-events/", env!("CARGO_PKG_VERSION"));

/// Settings of a [`WebhookSink`](crate::WebhookSink), shared by every destination it delivers to
/// (the URLs and headers come with each delivery).
///
/// Build it from [`WebhookConfig::default`] and override what differs:
///
/// ```
/// use std::time::Duration;
/// use evolution_sink_webhook::WebhookConfig;
///
/// let config = WebhookConfig {
///     request_timeout: Duration::from_secs(10),
///     ..WebhookConfig::default()
/// };
/// assert_eq!(config.connect_timeout, Duration::from_secs(10));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Deadline of one request, from connecting until the answer's body is read
    /// (`WEBHOOK_REQUEST_TIMEOUT_MS`, default 60 000 ms). Must not be zero.
    pub request_timeout: Duration,
    /// Deadline of establishing a connection (TCP and TLS), default 10 s. Must not be zero.
    pub connect_timeout: Duration,
    /// `User-Agent` header of every request (default [`DEFAULT_USER_AGENT`]); a destination's
    /// own `User-Agent` header replaces it.
    pub user_agent: String,
    /// An http(s) URL that `health_check` GETs (any answer below 500 means up). Without it the
    /// health check succeeds: a webhook sink has no single backend.
    pub probe_url: Option<String>,
    /// Networks that may be reached although they are private, loopback, link-local or otherwise
    /// special (`WEBHOOK_ALLOWED_NETWORKS`); everything else special is refused (SSRF protection).
    pub allowed_networks: Vec<Network>,
    /// Requests in flight to one host at most (`WEBHOOK_MAX_CONCURRENCY_PER_HOST`, default 32); must
    /// not be zero.
    pub max_concurrency_per_host: usize,
}

impl WebhookConfig {
    /// The default request timeout (`WEBHOOK_REQUEST_TIMEOUT_MS` unset): 60 s.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    /// The default connect timeout: 10 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default cap of requests in flight per host: 32.
    pub const DEFAULT_MAX_CONCURRENCY_PER_HOST: usize = 32;
}

impl Default for WebhookConfig {
    /// 60 s per request, 10 s to connect, `evolution-events/<version>`, no probe, no special network
    /// allowed, 32 requests per host.
    fn default() -> Self {
        Self {
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            probe_url: None,
            allowed_networks: Vec::new(),
            max_concurrency_per_host: Self::DEFAULT_MAX_CONCURRENCY_PER_HOST,
        }
    }
}
