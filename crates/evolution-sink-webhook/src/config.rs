//! [`WebhookConfig`]: the settings of one [`WebhookSink`](crate::WebhookSink), and the webhook
//! channel's variables ([`SinkConfig`]).

use std::sync::Arc;
use std::time::Duration;

use evolution_events::{
    Channel, DispatchHints, EventKind, EventSink, GlobalSettings, RetryPolicy, Sensitive, SinkConfig,
    SinkError, Var, Vars,
};

use crate::WebhookSink;
use crate::network::{Guard, Network, check_url_blocking, parse_networks};

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

/// Webhook deliveries handed to the sink at once (the sink sends one destination's deliveries one
/// after another; different destinations concurrently).
pub const WEBHOOK_BATCH: usize = 16;

impl SinkConfig for WebhookConfig {
    const CHANNEL: Channel = Channel::Webhook;

    const VARS: &'static [Var] = &[
        Var::new("WEBHOOK_GLOBAL_ENABLED", "false"),
        Var::new("WEBHOOK_GLOBAL_URL", ""),
        Var::new("WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS", "false"),
        Var::new("WEBHOOK_EVENTS_ERRORS_WEBHOOK", ""),
        Var::new("WEBHOOK_REQUEST_TIMEOUT_MS", "60000"),
        Var::new("WEBHOOK_RETRY_MAX_ATTEMPTS", "10"),
        Var::new("WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", "5"),
        Var::new("WEBHOOK_RETRY_USE_EXPONENTIAL_BACKOFF", "true"),
        Var::new("WEBHOOK_RETRY_MAX_DELAY_SECONDS", "300"),
        Var::new("WEBHOOK_RETRY_JITTER_FACTOR", "0.2"),
        Var::new("WEBHOOK_RETRY_NON_RETRYABLE_STATUS_CODES", "400,401,403,404,422"),
        Var::new("WEBHOOK_WORKERS", "16"),
        Var::new("WEBHOOK_ORDERED", "true"),
        Var::new("WEBHOOK_ALLOWED_NETWORKS", ""),
        Var::new("WEBHOOK_MAX_CONCURRENCY_PER_HOST", "32"),
        Var::new("WEBHOOK_SIGNING_SECRET", ""),
    ];

    const EVENT_TOGGLES: &'static [&'static str] = &["WEBHOOK_EVENTS_"];

    /// The global webhook: `WEBHOOK_GLOBAL_ENABLED`, `WEBHOOK_GLOBAL_URL`,
    /// `WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS`, `WEBHOOK_EVENTS_<KEY>`, `WEBHOOK_EVENTS_ERRORS_WEBHOOK` and
    /// `WEBHOOK_SIGNING_SECRET` (comma-separated during a rotation).
    fn read_global(vars: &mut Vars, global: &mut GlobalSettings) {
        let webhook = &mut global.webhook;
        webhook.enabled = vars.bool("WEBHOOK_GLOBAL_ENABLED");
        webhook.url = vars.raw("WEBHOOK_GLOBAL_URL").trim().to_owned();
        webhook.by_events = vars.bool("WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS");
        webhook.events = vars.events("WEBHOOK_EVENTS_");
        if vars.values().contains_key("WEBHOOK_EVENTS_ERRORS") && webhook.events.contains(&EventKind::Errors)
        {
            webhook.errors_url = vars.string("WEBHOOK_EVENTS_ERRORS_WEBHOOK");
        }
        let secrets: Vec<String> = vars
            .raw("WEBHOOK_SIGNING_SECRET")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        for secret in secrets {
            match evolution_events::check_signing_secret(&secret) {
                Ok(()) => webhook.signing_secrets.push(Sensitive::new(secret)),
                Err(why) => vars.error(format!(
                    "WEBHOOK_SIGNING_SECRET: {why} (comma-separate several during a rotation)"
                )),
            }
        }
    }

    /// `WEBHOOK_REQUEST_TIMEOUT_MS`, `WEBHOOK_RETRY_*`, `WEBHOOK_WORKERS`, `WEBHOOK_ORDERED`,
    /// `WEBHOOK_ALLOWED_NETWORKS` (parsed here, once), `WEBHOOK_MAX_CONCURRENCY_PER_HOST`; the
    /// global webhook's URL is the health check's probe. Always planned: instances may set
    /// webhooks.
    fn from_vars(vars: &mut Vars, global: &GlobalSettings) -> Option<(Self, DispatchHints)> {
        let name = "WEBHOOK_RETRY_NON_RETRYABLE_STATUS_CODES";
        let listed: Vec<&str> = vars
            .raw(name)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let codes: Vec<u16> = listed
            .iter()
            .filter_map(|s| s.parse::<u16>().ok().filter(|c| (100..=599).contains(c)))
            .collect();
        if codes.len() != listed.len() {
            let raw = vars.raw(name).to_owned();
            vars.error(format!(
                "{name}=`{raw}` must be a comma-separated list of HTTP statuses (100-599)"
            ));
        }
        let jitter: f64 = vars.number("WEBHOOK_RETRY_JITTER_FACTOR", "a number from 0 to 1");
        if !(0.0..=1.0).contains(&jitter) {
            vars.error(format!(
                "WEBHOOK_RETRY_JITTER_FACTOR={jitter} must be between 0 and 1"
            ));
        }
        let retry = RetryPolicy {
            max_attempts: Some(
                u32::try_from(vars.positive("WEBHOOK_RETRY_MAX_ATTEMPTS")).unwrap_or(u32::MAX),
            ),
            initial_delay: Duration::from_secs(
                vars.number("WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", "a whole number of seconds"),
            ),
            exponential: vars.bool("WEBHOOK_RETRY_USE_EXPONENTIAL_BACKOFF"),
            max_delay: Duration::from_secs(
                vars.number("WEBHOOK_RETRY_MAX_DELAY_SECONDS", "a whole number of seconds"),
            ),
            jitter_factor: jitter,
            non_retryable_status_codes: codes,
        };
        let request_timeout = Duration::from_millis(vars.positive("WEBHOOK_REQUEST_TIMEOUT_MS"));
        let batch = u32::try_from(WEBHOOK_BATCH).unwrap_or(u32::MAX);
        let dispatch = DispatchHints {
            retry: Some(retry),
            workers: Some(usize::try_from(vars.positive("WEBHOOK_WORKERS")).unwrap_or(usize::MAX)),
            batch_size: Some(WEBHOOK_BATCH),
            // Each request is bounded by the request timeout; this deadline is a safety net above it.
            send_timeout: Some(request_timeout.saturating_mul(batch) + Duration::from_secs(5)),
            ordered: Some(vars.bool("WEBHOOK_ORDERED")),
        };
        let max_per_host = vars.positive("WEBHOOK_MAX_CONCURRENCY_PER_HOST");
        let allowed_networks = parse_networks(vars.raw("WEBHOOK_ALLOWED_NETWORKS")).unwrap_or_else(|e| {
            vars.error(format!("WEBHOOK_ALLOWED_NETWORKS: {e}"));
            Vec::new()
        });
        // The configured URLs pass the rule every instance's URL passes, at start: a refused one
        // would send every delivery to it to the dead letters.
        let guard = Guard::new(allowed_networks.clone());
        let configured = [
            (
                "WEBHOOK_GLOBAL_URL",
                global.webhook.enabled.then_some(&global.webhook.url),
            ),
            (
                "WEBHOOK_EVENTS_ERRORS_WEBHOOK",
                global.webhook.errors_url.as_ref(),
            ),
        ];
        for (name, url) in configured {
            if let Some(url) = url.filter(|u| !u.is_empty())
                && let Err(refused) = check_url_blocking(&guard, url)
            {
                vars.error(format!("{name}: {refused}"));
            }
        }
        let config = Self {
            request_timeout,
            probe_url: global.webhook.enabled.then(|| global.webhook.url.clone()),
            allowed_networks,
            max_concurrency_per_host: usize::try_from(max_per_host).unwrap_or(usize::MAX),
            ..Self::default()
        };
        Some((config, dispatch))
    }

    fn into_sink(self) -> Result<Arc<dyn EventSink>, SinkError> {
        Ok(Arc::new(WebhookSink::new(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_read_with_their_defaults() {
        let mut vars =
            Vars::with_defaults(WebhookConfig::VARS, [("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8")]);
        let mut global = GlobalSettings::default();
        WebhookConfig::read_global(&mut vars, &mut global);
        let (config, dispatch) = WebhookConfig::from_vars(&mut vars, &global).unwrap();
        assert!(vars.errors().is_empty(), "{:?}", vars.errors());
        assert_eq!(
            dispatch.retry,
            Some(RetryPolicy::default()),
            "the specification's policy"
        );
        assert_eq!(dispatch.workers, Some(16));
        assert_eq!(dispatch.batch_size, Some(WEBHOOK_BATCH));
        assert_eq!(dispatch.ordered, Some(true));
        assert_eq!(config.request_timeout, WebhookConfig::DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(config.allowed_networks, parse_networks("127.0.0.0/8").unwrap());
        assert_eq!(config.probe_url, None, "no global webhook");
        assert!(config.into_sink().is_ok());

        let mut vars = Vars::with_defaults(
            WebhookConfig::VARS,
            [
                ("WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/33"),
                ("WEBHOOK_SIGNING_SECRET", "whsec_short"),
                ("WEBHOOK_WORKERS", "0"),
            ],
        );
        WebhookConfig::read_global(&mut vars, &mut global);
        let _ = WebhookConfig::from_vars(&mut vars, &global);
        let text = vars.errors().join("\n");
        for needle in [
            "WEBHOOK_ALLOWED_NETWORKS: `10.0.0.0/33` is not a network",
            "WEBHOOK_SIGNING_SECRET: ",
            "WEBHOOK_WORKERS must be greater than 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
    }

    /// `WEBHOOK_GLOBAL_URL` and `WEBHOOK_EVENTS_ERRORS_WEBHOOK` pass the SSRF rule at start: a
    /// private address is an error naming the variable and how to allow it.
    #[test]
    fn configured_urls_pass_the_ssrf_rule() {
        let read = |pairs: &[(&str, &str)]| {
            let mut vars = Vars::with_defaults(WebhookConfig::VARS, pairs.iter().copied());
            let mut global = GlobalSettings::default();
            WebhookConfig::read_global(&mut vars, &mut global);
            let _ = WebhookConfig::from_vars(&mut vars, &global);
            vars.errors().join("\n")
        };
        let text = read(&[
            ("WEBHOOK_GLOBAL_ENABLED", "true"),
            ("WEBHOOK_GLOBAL_URL", "http://10.1.2.3:9000/hook"),
            ("WEBHOOK_EVENTS_ERRORS", "true"),
            ("WEBHOOK_EVENTS_ERRORS_WEBHOOK", "http://localhost:9/errors"),
        ]);
        for needle in [
            "WEBHOOK_GLOBAL_URL: 10.1.2.3 is a private (10.0.0.0/8) address",
            "WEBHOOK_ALLOWED_NETWORKS=10.1.2.3/32",
            "WEBHOOK_EVENTS_ERRORS_WEBHOOK: ",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
        assert_eq!(
            read(&[
                ("WEBHOOK_GLOBAL_ENABLED", "true"),
                ("WEBHOOK_GLOBAL_URL", "http://10.1.2.3:9000/hook"),
                ("WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/8"),
            ]),
            ""
        );
        assert_eq!(
            read(&[("WEBHOOK_GLOBAL_URL", "http://10.1.2.3:9000/hook")]),
            "",
            "a global webhook that is off is not checked"
        );
    }
}
