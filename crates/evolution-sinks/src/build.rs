//! From the server's variables to one sink per channel: which channels this build has, how each
//! channel's settings are read, and its dispatch configuration. Channel-specific variables are read
//! here, once; the server only forwards them.

use std::sync::Arc;
#[allow(unused_imports, reason = "used by the webhook channel")]
use std::time::Duration;

#[allow(
    unused_imports,
    reason = "which ones are used depends on the channel features"
)]
use evolution_events::{Channel, EventSink, GlobalSettings, NamingProfile, RetryPolicy, SinkError};

use crate::dispatcher::ChannelConfig;
use crate::env::Vars;

/// The channels compiled into this build.
pub const AVAILABLE: &[Channel] = &[
    #[cfg(feature = "webhook")]
    Channel::Webhook,
    #[cfg(feature = "rabbitmq")]
    Channel::Rabbitmq,
    #[cfg(feature = "nats")]
    Channel::Nats,
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
    /// Never built: keeps the enum inhabited-in-type when no channel feature is on.
    #[allow(dead_code, reason = "no value of it exists")]
    None(std::convert::Infallible),
    #[cfg(feature = "webhook")]
    Webhook(evolution_sink_webhook::WebhookConfig),
    #[cfg(feature = "rabbitmq")]
    Rabbitmq(evolution_sink_rabbitmq::RabbitmqConfig),
    #[cfg(feature = "nats")]
    Nats(evolution_sink_nats::NatsConfig),
}

impl ChannelPlan {
    /// The channel.
    #[must_use]
    pub fn channel(&self) -> Channel {
        match &self.kind {
            PlanKind::None(never) => match *never {},
            #[cfg(feature = "webhook")]
            PlanKind::Webhook(_) => Channel::Webhook,
            #[cfg(feature = "rabbitmq")]
            PlanKind::Rabbitmq(_) => Channel::Rabbitmq,
            #[cfg(feature = "nats")]
            PlanKind::Nats(_) => Channel::Nats,
        }
    }

    /// Builds the sink (no connection is made here: sinks connect on first use and reconnect by
    /// themselves, so a backend that is down at startup only delays its deliveries).
    ///
    /// # Errors
    /// The sink's configuration error.
    pub fn build(self) -> Result<(Arc<dyn EventSink>, ChannelConfig), SinkError> {
        match (self.kind, self.dispatch) {
            (PlanKind::None(never), _) => match never {},
            #[cfg(feature = "webhook")]
            (PlanKind::Webhook(config), dispatch) => {
                let sink: Arc<dyn EventSink> = Arc::new(evolution_sink_webhook::WebhookSink::new(config)?);
                Ok((sink, dispatch))
            }
            #[cfg(feature = "rabbitmq")]
            (PlanKind::Rabbitmq(config), dispatch) => {
                let sink: Arc<dyn EventSink> = Arc::new(evolution_sink_rabbitmq::RabbitmqSink::new(config)?);
                Ok((sink, dispatch))
            }
            #[cfg(feature = "nats")]
            (PlanKind::Nats(config), dispatch) => {
                let sink: Arc<dyn EventSink> = Arc::new(evolution_sink_nats::NatsSink::new(config)?);
                Ok((sink, dispatch))
            }
        }
    }
}

/// Reads every channel's variables. The webhook channel is always planned (instances may set
/// webhooks); the other channels only when switched on (`<CHANNEL>_ENABLED=true`). Channels switched
/// on that this build does not have are errors naming the variable. Problems are recorded in `vars`.
pub fn plan(vars: &mut Vars, global: &GlobalSettings) -> Vec<ChannelPlan> {
    #[allow(unused_mut, reason = "empty without channel features")]
    let mut plans = Vec::new();
    #[cfg(feature = "webhook")]
    plans.push(webhook(vars, global));
    #[cfg(feature = "rabbitmq")]
    plans.extend(rabbitmq(vars, global));
    #[cfg(feature = "nats")]
    plans.extend(nats(vars, global));
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

/// `RABBITMQ_URI`, `RABBITMQ_FRAME_MAX`, `RABBITMQ_QUEUE_TYPE`; only with `RABBITMQ_ENABLED=true`.
#[cfg(feature = "rabbitmq")]
fn rabbitmq(vars: &mut Vars, global: &GlobalSettings) -> Option<ChannelPlan> {
    use evolution_sink_rabbitmq::{AmqpUri, QueueType, RabbitmqConfig};
    if !global.rabbitmq.enabled {
        return None;
    }
    let uri = match vars.string("RABBITMQ_URI") {
        None => {
            vars.error(
                "RABBITMQ_ENABLED=true needs RABBITMQ_URI (e.g. amqp://user:password@host:5672/%2f); set it, or set \
                 RABBITMQ_ENABLED=false",
            );
            None
        }
        // The value may hold a password: the error never repeats it.
        Some(raw) => AmqpUri::parse(&raw)
            .map_err(|e| vars.error(format!("RABBITMQ_URI: {e}")))
            .ok(),
    };
    let frame_max = match vars.string("RABBITMQ_FRAME_MAX") {
        None => RabbitmqConfig::DEFAULT_FRAME_MAX,
        Some(_) => {
            let frame_max: u32 = vars.number(
                "RABBITMQ_FRAME_MAX",
                "a frame size in bytes (8192 or more; 0 leaves it to the broker)",
            );
            if (1..4096).contains(&frame_max) {
                vars.error(format!(
                    "RABBITMQ_FRAME_MAX={frame_max} is too small: AMQP needs at least 4096 (RabbitMQ 4.1: 8192), or 0 \
                     for the broker's choice"
                ));
            }
            frame_max
        }
    };
    let queue_type = match vars.string("RABBITMQ_QUEUE_TYPE") {
        None => QueueType::default(),
        Some(raw) => raw.parse().unwrap_or_else(|e| {
            vars.error(format!("RABBITMQ_QUEUE_TYPE: {e}"));
            QueueType::default()
        }),
    };
    let uri = uri?;
    Some(ChannelPlan {
        dispatch: ChannelConfig::default_for(Channel::Rabbitmq),
        kind: PlanKind::Rabbitmq(RabbitmqConfig {
            frame_max,
            queue_type,
            ..RabbitmqConfig::new(uri)
        }),
    })
}

/// `NATS_URI`, `NATS_JETSTREAM`, `NATS_JETSTREAM_STREAM`; only with `NATS_ENABLED=true`.
///
/// In JetStream mode the stream captures `{NATS_PREFIX_KEY}.>` from the start whenever the Router
/// can produce subjects under the prefix (every subject of the `seed` profile; global subjects of
/// the `evolution-v2` profile). The sink adds `{first token}.>` for any other subject when it first
/// publishes to it (`{instance}.>` in the `evolution-v2` profile).
#[cfg(feature = "nats")]
fn nats(vars: &mut Vars, global: &GlobalSettings) -> Option<ChannelPlan> {
    use evolution_sink_nats::{JetStreamConfig, NatsConfig, NatsMode, NatsUrl, check_stream_name};
    if !global.nats.enabled {
        return None;
    }
    let url = match vars.string("NATS_URI") {
        None => {
            vars.error(
                "NATS_ENABLED=true needs NATS_URI (e.g. nats://host:4222); set it, or set NATS_ENABLED=false",
            );
            None
        }
        // The value may hold credentials: the error never repeats it.
        Some(raw) => NatsUrl::parse(&raw)
            .map_err(|e| vars.error(format!("NATS_URI: {e}")))
            .ok(),
    };
    let jetstream = vars.bool("NATS_JETSTREAM");
    let stream = vars
        .string("NATS_JETSTREAM_STREAM")
        .unwrap_or_else(|| JetStreamConfig::DEFAULT_STREAM.to_owned());
    if let Err(e) = check_stream_name(&stream) {
        vars.error(format!("NATS_JETSTREAM_STREAM: {e}"));
    }
    let prefix = global.nats.prefix.as_str();
    let prefixed = match global.naming {
        NamingProfile::Seed => true,
        NamingProfile::EvolutionV2 => global.nats.global_enabled,
    };
    let subjects = if prefixed && !prefix.is_empty() {
        vec![format!("{prefix}.>")]
    } else {
        Vec::new()
    };
    let url = url?;
    let mode = if jetstream {
        NatsMode::JetStream(JetStreamConfig::new(stream, subjects))
    } else {
        NatsMode::Core
    };
    Some(ChannelPlan {
        dispatch: ChannelConfig::default_for(Channel::Nats),
        kind: PlanKind::Nats(NatsConfig {
            mode,
            ..NatsConfig::new(url)
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        Vars::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    /// The problems about the broker channels (the webhook's variables are not set here).
    fn broker_errors(v: &Vars) -> Vec<String> {
        v.errors()
            .iter()
            .filter(|e| e.contains("RABBITMQ") || e.contains("NATS"))
            .cloned()
            .collect()
    }

    fn global(rabbitmq: bool, nats: bool) -> GlobalSettings {
        let mut g = GlobalSettings::default();
        g.rabbitmq.enabled = rabbitmq;
        g.nats.enabled = nats;
        g
    }

    #[cfg(all(feature = "rabbitmq", feature = "nats"))]
    #[test]
    fn broker_channels_are_planned_only_when_enabled() {
        let mut v = vars(&[]);
        let plans = plan(&mut v, &global(false, false));
        assert!(
            plans
                .iter()
                .all(|p| !matches!(p.channel(), Channel::Rabbitmq | Channel::Nats))
        );
        assert!(broker_errors(&v).is_empty(), "{:?}", v.errors());

        let mut v = vars(&[
            ("RABBITMQ_URI", "amqp://u:hunter2@127.0.0.1:5672/%2f"),
            ("RABBITMQ_QUEUE_TYPE", "classic"),
            ("NATS_URI", "nats://u:hunter2@127.0.0.1:4222"),
            ("NATS_JETSTREAM", "true"),
        ]);
        let plans = plan(&mut v, &global(true, true));
        assert!(broker_errors(&v).is_empty(), "{:?}", v.errors());
        let channels: Vec<Channel> = plans.iter().map(ChannelPlan::channel).collect();
        assert!(channels.contains(&Channel::Rabbitmq) && channels.contains(&Channel::Nats));
        for p in &plans {
            assert!(!format!("{p:?}").contains("hunter2"), "{p:?}");
            if matches!(p.channel(), Channel::Rabbitmq | Channel::Nats) {
                assert_eq!(p.dispatch.retry, RetryPolicy::forever());
            }
        }
        let Some(PlanKind::Nats(nats)) = plans
            .iter()
            .map(|p| &p.kind)
            .find(|k| matches!(k, PlanKind::Nats(_)))
        else {
            panic!("no nats plan")
        };
        let evolution_sink_nats::NatsMode::JetStream(js) = &nats.mode else {
            panic!("not jetstream")
        };
        assert_eq!(
            (js.stream.as_str(), js.subjects.as_slice()),
            ("EVOLUTION", &["evolution.>".to_owned()][..])
        );
        for plan in plans {
            if matches!(plan.channel(), Channel::Rabbitmq | Channel::Nats) {
                assert!(plan.build().is_ok());
            }
        }
    }

    #[cfg(all(feature = "rabbitmq", feature = "nats"))]
    #[test]
    fn broker_variables_are_checked_by_name_without_showing_secrets() {
        let mut v = vars(&[]);
        let _ = plan(&mut v, &global(true, true));
        let text = broker_errors(&v).join("\n");
        assert!(
            text.contains("RABBITMQ_ENABLED=true needs RABBITMQ_URI"),
            "{text}"
        );
        assert!(text.contains("NATS_ENABLED=true needs NATS_URI"), "{text}");

        let mut v = vars(&[
            ("RABBITMQ_URI", "http://u:hunter2@h/"),
            ("RABBITMQ_FRAME_MAX", "1024"),
            ("RABBITMQ_QUEUE_TYPE", "stream"),
            ("NATS_URI", "nats://u:hunter2@h:notaport"),
            ("NATS_JETSTREAM", "maybe"),
            ("NATS_JETSTREAM_STREAM", "a.b"),
        ]);
        let plans = plan(&mut v, &global(true, true));
        assert!(
            plans
                .iter()
                .all(|p| !matches!(p.channel(), Channel::Rabbitmq | Channel::Nats))
        );
        let text = v.errors().join("\n");
        for needle in [
            "RABBITMQ_URI: not a valid AMQP URI",
            "RABBITMQ_FRAME_MAX=1024",
            "RABBITMQ_QUEUE_TYPE: unknown queue type `stream`",
            "NATS_URI: not a valid NATS URL",
            "NATS_JETSTREAM=`maybe`",
            "NATS_JETSTREAM_STREAM",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[cfg(feature = "nats")]
    #[test]
    fn jetstream_subjects_follow_the_profile() {
        let mut g = global(false, true);
        g.naming = NamingProfile::EvolutionV2;
        let mut v = vars(&[("NATS_URI", "nats://127.0.0.1:4222"), ("NATS_JETSTREAM", "1")]);
        let plans = plan(&mut v, &g);
        let subjects = plans.iter().find_map(|p| match &p.kind {
            PlanKind::Nats(n) => match &n.mode {
                evolution_sink_nats::NatsMode::JetStream(js) => Some(js.subjects.clone()),
                evolution_sink_nats::NatsMode::Core => None,
            },
            #[allow(unreachable_patterns, reason = "other channel features")]
            _ => None,
        });
        assert_eq!(
            subjects,
            Some(Vec::new()),
            "instance subjects are added when first seen"
        );
        g.nats.global_enabled = true;
        let plans = plan(&mut v, &g);
        assert!(plans.iter().any(|p| format!("{p:?}").contains("evolution.>")));
    }
}
