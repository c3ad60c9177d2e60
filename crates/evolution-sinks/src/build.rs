//! From the server's variables to one sink per channel: which channels this build has, how each
//! channel's settings are read, and its dispatch configuration. Channel-specific variables are read
//! here, once; the server only forwards them.

use std::sync::Arc;
use std::time::Duration;

use evolution_events::{Channel, EventSink, GlobalSettings, RetryPolicy, SinkError};

use crate::dispatcher::ChannelConfig;
use crate::env::Vars;

/// The channels compiled into this build.
pub const AVAILABLE: &[Channel] = &[
    #[cfg(feature = "webhook")]
    Channel::Webhook,
];

/// Webhook deliveries handed to the sink at once (the sink sends one destination's deliveries one
/// after another; different destinations concurrently).
pub const WEBHOOK_BATCH: usize = 16;

/// How one channel will be built.
#[derive(Clone, Debug)]
pub struct ChannelPlan {
    /// Dispatch configuration.
    pub dispatch: ChannelConfig,
    kind: PlanKind,
}

#[derive(Clone, Debug)]
enum PlanKind {
    #[cfg(feature = "webhook")]
    Webhook(evolution_sink_webhook::WebhookConfig),
}

impl ChannelPlan {
    /// The channel.
    #[must_use]
    pub fn channel(&self) -> Channel {
        match &self.kind {
            #[cfg(feature = "webhook")]
            PlanKind::Webhook(_) => Channel::Webhook,
        }
    }

    /// Builds the sink (no connection is made here: sinks connect on first use and reconnect by
    /// themselves, so a backend that is down at startup only delays its deliveries).
    ///
    /// # Errors
    /// The sink's configuration error.
    pub fn build(self) -> Result<(Arc<dyn EventSink>, ChannelConfig), SinkError> {
        let sink: Arc<dyn EventSink> = match self.kind {
            #[cfg(feature = "webhook")]
            PlanKind::Webhook(config) => Arc::new(evolution_sink_webhook::WebhookSink::new(config)?),
        };
        Ok((sink, self.dispatch))
    }
}

/// Reads every channel's variables. Channels switched on (`<CHANNEL>_ENABLED=true`) that this build
/// does not have are errors naming the variable. Problems are recorded in `vars`.
pub fn plan(vars: &mut Vars, global: &GlobalSettings) -> Vec<ChannelPlan> {
    let plans = vec![
        #[cfg(feature = "webhook")]
        webhook(vars, global),
    ];
    let switches = [
        (Channel::Websocket, global.websocket.enabled),
        (Channel::Rabbitmq, global.rabbitmq.enabled),
        (Channel::Sqs, global.sqs.broker.enabled),
        (Channel::Kafka, global.kafka.enabled),
        (Channel::Nats, global.nats.enabled),
        (Channel::Pusher, global.pusher.enabled),
    ];
    for (channel, enabled) in switches {
        if enabled && !AVAILABLE.contains(&channel) {
            let prefix = channel.env_prefix().unwrap_or_default();
            vars.error(format!(
                "{prefix}_ENABLED=true, but this build has no {channel} channel; set {prefix}_ENABLED=false"
            ));
        }
    }
    plans
}

/// `WEBHOOK_ALLOWED_NETWORKS`: the special-purpose networks webhooks may reach anyway (SSRF
/// protection refuses the rest).
#[cfg(feature = "webhook")]
pub fn allowed_networks(vars: &mut Vars) -> Vec<evolution_sink_webhook::network::Network> {
    match evolution_sink_webhook::network::parse_networks(vars.raw("WEBHOOK_ALLOWED_NETWORKS")) {
        Ok(networks) => networks,
        Err(e) => {
            vars.error(format!("WEBHOOK_ALLOWED_NETWORKS: {e}"));
            Vec::new()
        }
    }
}

/// `WEBHOOK_REQUEST_TIMEOUT_MS`, `WEBHOOK_RETRY_*`, `WEBHOOK_WORKERS`, `WEBHOOK_ORDERED`,
/// `WEBHOOK_ALLOWED_NETWORKS`, `WEBHOOK_MAX_CONCURRENCY_PER_HOST`.
#[cfg(feature = "webhook")]
fn webhook(vars: &mut Vars, global: &GlobalSettings) -> ChannelPlan {
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
        max_attempts: Some(u32::try_from(vars.positive("WEBHOOK_RETRY_MAX_ATTEMPTS")).unwrap_or(u32::MAX)),
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
    let dispatch = ChannelConfig {
        retry,
        workers: usize::try_from(vars.positive("WEBHOOK_WORKERS")).unwrap_or(usize::MAX),
        batch_size: Some(WEBHOOK_BATCH),
        // Each request is bounded by the request timeout; this deadline is a safety net above it.
        send_timeout: request_timeout.saturating_mul(batch) + Duration::from_secs(5),
        ordered: Some(vars.bool("WEBHOOK_ORDERED")),
    };
    let max_per_host = vars.positive("WEBHOOK_MAX_CONCURRENCY_PER_HOST");
    let config = evolution_sink_webhook::WebhookConfig {
        request_timeout,
        probe_url: global.webhook.enabled.then(|| global.webhook.url.clone()),
        allowed_networks: allowed_networks(vars),
        max_concurrency_per_host: usize::try_from(max_per_host).unwrap_or(usize::MAX),
        ..evolution_sink_webhook::WebhookConfig::default()
    };
    ChannelPlan {
        dispatch,
        kind: PlanKind::Webhook(config),
    }
}
