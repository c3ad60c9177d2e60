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
    #[cfg(feature = "websocket")]
    Channel::Websocket,
    #[cfg(feature = "pusher")]
    Channel::Pusher,
    #[cfg(feature = "kafka")]
    Channel::Kafka,
    #[cfg(feature = "sqs")]
    Channel::Sqs,
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
#[allow(
    clippy::large_enum_variant,
    reason = "one plan per channel, made once at startup; a one-channel build has one large variant"
)]
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
    #[cfg(feature = "websocket")]
    Websocket(evolution_sink_websocket::WebsocketConfig),
    #[cfg(feature = "pusher")]
    Pusher(evolution_sink_pusher::PusherConfig),
    #[cfg(feature = "kafka")]
    Kafka(evolution_sink_kafka::KafkaConfig),
    #[cfg(feature = "sqs")]
    Sqs(evolution_sink_sqs::SqsConfig),
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
            #[cfg(feature = "websocket")]
            PlanKind::Websocket(_) => Channel::Websocket,
            #[cfg(feature = "pusher")]
            PlanKind::Pusher(_) => Channel::Pusher,
            #[cfg(feature = "kafka")]
            PlanKind::Kafka(_) => Channel::Kafka,
            #[cfg(feature = "sqs")]
            PlanKind::Sqs(_) => Channel::Sqs,
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
            #[cfg(feature = "websocket")]
            (PlanKind::Websocket(_), _) => Err(SinkError::new(
                Channel::Websocket,
                evolution_events::ErrorKind::ConfigInvalid,
                "the websocket channel needs to know who may see what: build it with \
                 ChannelPlan::build_websocket and an authorizer",
            )),
            #[cfg(feature = "pusher")]
            (PlanKind::Pusher(config), dispatch) => {
                let sink: Arc<dyn EventSink> = Arc::new(evolution_sink_pusher::PusherSink::new(config)?);
                Ok((sink, dispatch))
            }
            #[cfg(feature = "kafka")]
            (PlanKind::Kafka(config), dispatch) => {
                let sink: Arc<dyn EventSink> = Arc::new(evolution_sink_kafka::KafkaSink::new(config)?);
                Ok((sink, dispatch))
            }
            #[cfg(feature = "sqs")]
            (PlanKind::Sqs(config), dispatch) => {
                let sink: Arc<dyn EventSink> = Arc::new(evolution_sink_sqs::SqsSink::new(config)?);
                Ok((sink, dispatch))
            }
        }
    }

    /// Builds the websocket channel's sink and the Socket.IO endpoint to mount on the HTTP
    /// listener. Unlike the other channels it needs `authorizer` (what an API key may see), which
    /// only the server knows; [`ChannelPlan::build`] refuses a websocket plan. With
    /// `CACHE_REDIS_ENABLED=true` it connects to Redis first (Socket.IO across replicas).
    ///
    /// # Errors
    /// `ConfigInvalid` when this is not the websocket plan, or the sink's configuration error;
    /// `Unavailable` when Redis cannot be reached.
    #[cfg(feature = "websocket")]
    pub async fn build_websocket(
        self,
        authorizer: impl evolution_sink_websocket::Authorizer,
    ) -> Result<
        (
            Arc<evolution_sink_websocket::WebsocketSink>,
            evolution_sink_websocket::WebsocketLayer,
            ChannelConfig,
        ),
        SinkError,
    > {
        let channel = self.channel();
        #[allow(irrefutable_let_patterns, reason = "the only plan of a websocket-only build")]
        let PlanKind::Websocket(config) = self.kind else {
            return Err(SinkError::new(
                channel,
                evolution_events::ErrorKind::ConfigInvalid,
                format!("build_websocket was given the {channel} plan; use ChannelPlan::build"),
            ));
        };
        let (sink, layer) = evolution_sink_websocket::WebsocketSink::connect(config, authorizer).await?;
        Ok((Arc::new(sink), layer, self.dispatch))
    }
}

/// Reads every channel's variables. The webhook channel is always planned (instances may set
/// webhooks); the other channels only when switched on (`<CHANNEL>_ENABLED=true`). Channels switched
/// on that this build does not have are errors naming the variable. Problems are recorded in `vars`.
pub fn plan(vars: &mut Vars, global: &GlobalSettings) -> Vec<ChannelPlan> {
    #[allow(unused_mut, reason = "empty without channel features")]
    let mut plans = Vec::with_capacity(AVAILABLE.len());
    #[cfg(feature = "webhook")]
    plans.push(webhook(vars, global));
    #[cfg(feature = "rabbitmq")]
    plans.extend(rabbitmq(vars, global));
    #[cfg(feature = "nats")]
    plans.extend(nats(vars, global));
    #[cfg(feature = "websocket")]
    {
        let redis = cache_redis(vars, global);
        plans.extend(websocket(vars, global, redis));
    }
    #[cfg(feature = "pusher")]
    plans.extend(pusher(vars, global));
    #[cfg(feature = "kafka")]
    plans.extend(kafka(vars, global));
    #[cfg(feature = "sqs")]
    plans.extend(sqs(vars, global));
    let switches = [
        (Channel::Webhook, "WEBHOOK_GLOBAL_ENABLED", global.webhook.enabled),
        (Channel::Websocket, "WEBSOCKET_ENABLED", global.websocket.enabled),
        (Channel::Rabbitmq, "RABBITMQ_ENABLED", global.rabbitmq.enabled),
        (Channel::Sqs, "SQS_ENABLED", global.sqs.broker.enabled),
        (Channel::Kafka, "KAFKA_ENABLED", global.kafka.enabled),
        (Channel::Nats, "NATS_ENABLED", global.nats.enabled),
        (Channel::Pusher, "PUSHER_ENABLED", global.pusher.enabled),
    ];
    for (channel, variable, enabled) in switches {
        if enabled && !AVAILABLE.contains(&channel) {
            // Each channel's cargo feature is named after it, here and in evolution-server.
            vars.error(format!(
                "{variable}=true, but this build has no {channel} channel (cargo feature `{channel}`); \
                 set {variable}=false or build with the feature"
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
        max_in_flight_per_key: None,
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

/// `CACHE_REDIS_ENABLED`, `CACHE_REDIS_URI`, `CACHE_REDIS_PREFIX_KEY` (Evolution API's names): the
/// Redis server through which the websocket channel reaches the clients of every replica (ADR
/// 0015). Read whenever `CACHE_REDIS_ENABLED=true`, so a malformed value is an error even while
/// the websocket channel is off; used only by it.
#[cfg(feature = "websocket")]
fn cache_redis(vars: &mut Vars, global: &GlobalSettings) -> Option<evolution_sink_websocket::RedisConfig> {
    use evolution_sink_websocket::{DEFAULT_REDIS_PREFIX, RedisConfig, RedisUrl, check_redis_prefix};
    if !vars.bool("CACHE_REDIS_ENABLED") {
        return None;
    }
    if global.websocket.enabled && !cfg!(feature = "websocket-redis") {
        vars.error(
            "CACHE_REDIS_ENABLED=true: this build has no Redis support for the websocket channel (feature \
             `websocket-redis` of evolution-sinks); rebuild with it, or set CACHE_REDIS_ENABLED=false",
        );
    }
    let url = match vars.string("CACHE_REDIS_URI") {
        None => {
            vars.error(
                "CACHE_REDIS_ENABLED=true needs CACHE_REDIS_URI (e.g. redis://127.0.0.1:6379/0); set it, or set \
                 CACHE_REDIS_ENABLED=false",
            );
            None
        }
        // The value may hold a password: the error never repeats it.
        Some(raw) => RedisUrl::parse(&raw)
            .map_err(|e| vars.error(format!("CACHE_REDIS_URI: {e}")))
            .ok(),
    };
    let prefix = vars
        .string("CACHE_REDIS_PREFIX_KEY")
        .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned());
    if let Err(e) = check_redis_prefix(&prefix) {
        vars.error(format!("CACHE_REDIS_PREFIX_KEY: {e}"));
    }
    Some(RedisConfig {
        prefix,
        ..RedisConfig::new(url?)
    })
}

/// `WEBSOCKET_ALLOWED_HOSTS`, `WEBSOCKET_REPLAY_MAX` and the Redis of [`cache_redis`]; only with
/// `WEBSOCKET_ENABLED=true`.
#[cfg(feature = "websocket")]
fn websocket(
    vars: &mut Vars,
    global: &GlobalSettings,
    redis: Option<evolution_sink_websocket::RedisConfig>,
) -> Option<ChannelPlan> {
    use evolution_sink_websocket::{WebsocketConfig, parse_allowed_hosts};
    if !global.websocket.enabled {
        return None;
    }
    let allowed_hosts = parse_allowed_hosts(vars.raw("WEBSOCKET_ALLOWED_HOSTS")).unwrap_or_else(|e| {
        vars.error(format!("WEBSOCKET_ALLOWED_HOSTS: {e}"));
        Vec::new()
    });
    let replay_limit: usize = if vars.raw("WEBSOCKET_REPLAY_MAX").trim().is_empty() {
        evolution_sink_websocket::DEFAULT_REPLAY_LIMIT
    } else {
        vars.number("WEBSOCKET_REPLAY_MAX", "a whole number of events")
    };
    let buffer = WebsocketConfig::default().max_buffer_size;
    if replay_limit >= buffer {
        vars.error(format!(
            "WEBSOCKET_REPLAY_MAX must be under {buffer} (the per-socket buffer); 0 turns replay off"
        ));
    }
    Some(ChannelPlan {
        dispatch: ChannelConfig::default_for(Channel::Websocket),
        kind: PlanKind::Websocket(WebsocketConfig {
            allowed_hosts,
            replay_limit: replay_limit.min(buffer - 1),
            redis,
            ..WebsocketConfig::default()
        }),
    })
}

/// Pusher deliveries handed to the sink at once (one app's requests go one after the other).
#[cfg(feature = "pusher")]
pub const PUSHER_BATCH: usize = 20;

/// `PUSHER_MAX_PAYLOAD_BYTES`, `PUSHER_OVERSIZE`, `PUSHER_BATCH_EVENTS`, `PUSHER_REQUEST_TIMEOUT_MS`; the global app
/// (with `PUSHER_HOST`/`PUSHER_PORT`) is the health check's probe. Only with `PUSHER_ENABLED=true`.
#[cfg(feature = "pusher")]
fn pusher(vars: &mut Vars, global: &GlobalSettings) -> Option<ChannelPlan> {
    use evolution_sink_pusher::{Oversize, PusherConfig};
    if !global.pusher.enabled {
        return None;
    }
    let max_payload_bytes = usize::try_from(vars.positive("PUSHER_MAX_PAYLOAD_BYTES")).unwrap_or(usize::MAX);
    let oversize = Oversize::parse(vars.raw("PUSHER_OVERSIZE")).unwrap_or_else(|e| {
        vars.error(format!("PUSHER_OVERSIZE: {e}"));
        Oversize::Reject
    });
    let batch_events = vars.bool("PUSHER_BATCH_EVENTS");
    let request_timeout = Duration::from_millis(vars.positive("PUSHER_REQUEST_TIMEOUT_MS"));
    let probe = global.pusher.app.clone().map(|mut app| {
        if app.host.is_none() {
            app.host.clone_from(&global.pusher.host);
            app.port = app.port.or(global.pusher.port);
        }
        app
    });
    let batch = u32::try_from(PUSHER_BATCH).unwrap_or(u32::MAX);
    let dispatch = ChannelConfig {
        batch_size: Some(PUSHER_BATCH),
        // Each request is bounded by the request timeout; this deadline is a safety net above it.
        send_timeout: request_timeout.saturating_mul(batch) + Duration::from_secs(5),
        ..ChannelConfig::default_for(Channel::Pusher)
    };
    Some(ChannelPlan {
        dispatch,
        kind: PlanKind::Pusher(PusherConfig {
            max_payload_bytes,
            oversize,
            batch_events,
            request_timeout,
            probe,
            ..PusherConfig::default()
        }),
    })
}

/// `KAFKA_BROKERS`, `KAFKA_CLIENT_ID`, `KAFKA_CONNECTION_TIMEOUT`, `KAFKA_REQUEST_TIMEOUT`,
/// `KAFKA_AUTO_CREATE_TOPICS`, `KAFKA_NUM_PARTITIONS`, `KAFKA_REPLICATION_FACTOR`, `KAFKA_LINGER_MS`,
/// `KAFKA_COMPRESSION`, `KAFKA_IDEMPOTENCE`, `KAFKA_SASL_*`, `KAFKA_SSL_*`; only with
/// `KAFKA_ENABLED=true`.
/// (`KAFKA_CONSUMER_GROUP_ID` is accepted and unused: the sink only produces.)
#[cfg(feature = "kafka")]
fn kafka(vars: &mut Vars, global: &GlobalSettings) -> Option<ChannelPlan> {
    use evolution_sink_kafka::{KafkaConfig, KafkaSasl, KafkaSsl, Pem};
    if !global.kafka.enabled {
        return None;
    }
    let brokers: Vec<String> = vars
        .raw("KAFKA_BROKERS")
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(str::to_owned)
        .collect();
    if brokers.is_empty() {
        vars.error("KAFKA_ENABLED=true needs KAFKA_BROKERS (host:port, comma-separated); set it, or set KAFKA_ENABLED=false");
    }
    let connection_timeout = Duration::from_millis(vars.positive("KAFKA_CONNECTION_TIMEOUT"));
    let request_timeout = Duration::from_millis(vars.positive("KAFKA_REQUEST_TIMEOUT"));
    let num_partitions: i32 = vars.number("KAFKA_NUM_PARTITIONS", "a number of partitions (1 or more)");
    if num_partitions < 1 {
        vars.error(format!(
            "KAFKA_NUM_PARTITIONS={num_partitions} must be at least 1"
        ));
    }
    let replication_factor: i32 = vars.number(
        "KAFKA_REPLICATION_FACTOR",
        "a replication factor (1 or more, or -1 for the broker's default)",
    );
    if replication_factor < 1 && replication_factor != -1 {
        vars.error(format!(
            "KAFKA_REPLICATION_FACTOR={replication_factor} must be at least 1 (or -1 for the broker's default)"
        ));
    }
    let linger = Duration::from_millis(vars.number("KAFKA_LINGER_MS", "a whole number of milliseconds"));
    let compression = vars.raw("KAFKA_COMPRESSION").parse().unwrap_or_else(|e| {
        vars.error(format!("KAFKA_COMPRESSION: {e}"));
        evolution_sink_kafka::Compression::None
    });
    let auto_create_topics = vars.bool("KAFKA_AUTO_CREATE_TOPICS");
    let idempotence = vars.bool("KAFKA_IDEMPOTENCE");
    let sasl = if vars.bool("KAFKA_SASL_ENABLED") {
        let mechanism = vars.raw("KAFKA_SASL_MECHANISM").parse().unwrap_or_else(|e| {
            vars.error(format!("KAFKA_SASL_MECHANISM: {e}"));
            evolution_sink_kafka::SaslMechanism::Plain
        });
        let (username, password) = (
            vars.string("KAFKA_SASL_USERNAME"),
            vars.string("KAFKA_SASL_PASSWORD"),
        );
        if username.is_none() || password.is_none() {
            // The password is never repeated.
            vars.error("KAFKA_SASL_ENABLED=true needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD");
        }
        Some(KafkaSasl {
            mechanism,
            username: username.unwrap_or_default(),
            password: evolution_events::Sensitive::new(password.unwrap_or_default()),
        })
    } else {
        None
    };
    let ssl = if vars.bool("KAFKA_SSL_ENABLED") {
        let mut pem = |name: &str| {
            let pem = vars.string(name).map(|v| Pem::parse(&v));
            if let Some(Pem::File(path)) = &pem
                && !path.is_file()
            {
                vars.error(format!(
                    "{name}: {} is not a readable file; give a PEM file path or the PEM text itself",
                    path.display()
                ));
            }
            pem
        };
        let (ca, cert, key) = (pem("KAFKA_SSL_CA"), pem("KAFKA_SSL_CERT"), pem("KAFKA_SSL_KEY"));
        if cert.is_some() != key.is_some() {
            vars.error("KAFKA_SSL_CERT and KAFKA_SSL_KEY go together (mutual TLS): set both, or neither");
        }
        // Evolution API: verification is on unless the value is exactly "false".
        let verify = !vars
            .raw("KAFKA_SSL_REJECT_UNAUTHORIZED")
            .trim()
            .eq_ignore_ascii_case("false");
        Some(KafkaSsl {
            verify,
            ca,
            key,
            cert,
        })
    } else {
        None
    };
    let config = KafkaConfig {
        client_id: vars
            .string("KAFKA_CLIENT_ID")
            .unwrap_or_else(|| KafkaConfig::DEFAULT_CLIENT_ID.to_owned()),
        connection_timeout,
        request_timeout,
        auto_create_topics,
        num_partitions,
        replication_factor,
        linger,
        compression,
        idempotence,
        sasl,
        ssl,
        ..KafkaConfig::new(brokers)
    };
    Some(ChannelPlan {
        dispatch: ChannelConfig {
            // A send looks topics up (at most 10 s) and waits for the acknowledgements (at most the
            // request timeout); this deadline is a safety net above both.
            send_timeout: request_timeout.saturating_mul(2) + Duration::from_secs(10),
            ..ChannelConfig::default_for(Channel::Kafka)
        },
        kind: PlanKind::Kafka(config),
    })
}

/// `SQS_REGION`, `SQS_ACCESS_KEY_ID`, `SQS_SECRET_ACCESS_KEY`, `SQS_ENDPOINT`, `SQS_ACCOUNT_ID`,
/// `SQS_MAX_PAYLOAD_SIZE`; only with `SQS_ENABLED=true`. Without `SQS_REGION`, an `SQS_ENDPOINT`
/// (an SQS-compatible server) implies `us-east-1`.
#[cfg(feature = "sqs")]
fn sqs(vars: &mut Vars, global: &GlobalSettings) -> Option<ChannelPlan> {
    use evolution_sink_sqs::{SqsConfig, SqsCredentials};
    if !global.sqs.broker.enabled {
        return None;
    }
    let endpoint = vars.string("SQS_ENDPOINT");
    if let Some(e) = &endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        vars.error(format!("SQS_ENDPOINT=`{e}` must be an http:// or https:// URL"));
    }
    let region = match (vars.string("SQS_REGION"), &endpoint) {
        (Some(region), _) => region,
        (None, Some(_)) => "us-east-1".to_owned(),
        (None, None) => {
            vars.error(
                "SQS_ENABLED=true needs SQS_REGION (e.g. us-east-1); set it, or set SQS_ENABLED=false",
            );
            String::new()
        }
    };
    let credentials = match (
        vars.string("SQS_ACCESS_KEY_ID"),
        vars.string("SQS_SECRET_ACCESS_KEY"),
    ) {
        (Some(id), Some(secret)) => Some(SqsCredentials::new(id, secret)),
        (None, None) => None,
        // The secret is never repeated.
        _ => {
            vars.error(
                "SQS_ACCESS_KEY_ID and SQS_SECRET_ACCESS_KEY go together: set both, or neither (the AWS default \
                 credential chain)",
            );
            None
        }
    };
    let max_payload_bytes = usize::try_from(vars.positive("SQS_MAX_PAYLOAD_SIZE")).unwrap_or(usize::MAX);
    if !(2048..=SqsConfig::SQS_LIMIT_BYTES).contains(&max_payload_bytes) {
        vars.error(format!(
            "SQS_MAX_PAYLOAD_SIZE={max_payload_bytes} must be between 2048 and {} bytes (SQS's limit); larger \
             events are refused per delivery",
            SqsConfig::SQS_LIMIT_BYTES
        ));
    }
    let config = SqsConfig {
        credentials,
        endpoint,
        account_id: vars.string("SQS_ACCOUNT_ID"),
        max_payload_bytes,
        ..SqsConfig::new(region)
    };
    Some(ChannelPlan {
        dispatch: ChannelConfig {
            // Up to three calls in a row per queue (look up, create, send), each bounded by the
            // operation timeout; this deadline is a safety net above them.
            send_timeout: config.operation_timeout.saturating_mul(3) + Duration::from_secs(5),
            ..ChannelConfig::default_for(Channel::Sqs)
        },
        kind: PlanKind::Sqs(config),
    })
}

#[cfg(all(test, feature = "kafka", feature = "sqs"))]
mod kafka_sqs_tests {
    use std::collections::BTreeMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        // The server's defaults for these channels (crates/evolution-server/src/config.rs KNOWN).
        let mut values: BTreeMap<String, String> = [
            ("KAFKA_BROKERS", "localhost:9092"),
            ("KAFKA_CLIENT_ID", "evolution-api"),
            ("KAFKA_CONNECTION_TIMEOUT", "3000"),
            ("KAFKA_REQUEST_TIMEOUT", "30000"),
            ("KAFKA_NUM_PARTITIONS", "1"),
            ("KAFKA_REPLICATION_FACTOR", "1"),
            ("KAFKA_LINGER_MS", "1"),
            ("KAFKA_COMPRESSION", "none"),
            ("KAFKA_IDEMPOTENCE", "true"),
            ("KAFKA_SSL_REJECT_UNAUTHORIZED", "true"),
            ("SQS_MAX_PAYLOAD_SIZE", "1048576"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        for (k, v) in pairs {
            values.insert((*k).to_owned(), (*v).to_owned());
        }
        Vars::new(values)
    }

    fn global(kafka: bool, sqs: bool) -> GlobalSettings {
        let mut g = GlobalSettings::default();
        g.kafka.enabled = kafka;
        g.sqs.broker.enabled = sqs;
        g
    }

    fn ours(v: &Vars) -> Vec<String> {
        v.errors()
            .iter()
            .filter(|e| e.contains("KAFKA") || e.contains("SQS"))
            .cloned()
            .collect()
    }

    #[test]
    fn planned_only_when_enabled_and_built_without_connecting() {
        let mut v = vars(&[]);
        let plans = plan(&mut v, &global(false, false));
        assert!(
            plans
                .iter()
                .all(|p| !matches!(p.channel(), Channel::Kafka | Channel::Sqs))
        );
        let mut v = vars(&[
            ("KAFKA_SASL_ENABLED", "true"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "evolution"),
            ("KAFKA_SASL_PASSWORD", "hunter2"),
            ("KAFKA_AUTO_CREATE_TOPICS", "yes"),
            ("KAFKA_NUM_PARTITIONS", "6"),
            ("KAFKA_COMPRESSION", "lz4"),
            ("SQS_ENDPOINT", "http://127.0.0.1:5000"),
            ("SQS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("SQS_SECRET_ACCESS_KEY", "hunter3"),
        ]);
        let plans = plan(&mut v, &global(true, true));
        assert!(ours(&v).is_empty(), "{:?}", v.errors());
        for p in &plans {
            let shown = format!("{p:?}");
            assert!(
                !shown.contains("hunter2") && !shown.contains("hunter3"),
                "{shown}"
            );
        }
        let kafka = plans.iter().find_map(|p| match &p.kind {
            PlanKind::Kafka(c) => Some(c.clone()),
            _ => None,
        });
        let kafka = kafka.unwrap_or_else(|| panic!("no kafka plan"));
        assert!(kafka.auto_create_topics);
        assert_eq!(kafka.num_partitions, 6);
        assert_eq!(kafka.compression, evolution_sink_kafka::Compression::Lz4);
        assert_eq!(
            kafka.sasl.as_ref().map(|s| s.mechanism),
            Some(evolution_sink_kafka::SaslMechanism::ScramSha512)
        );
        let sqs = plans.iter().find_map(|p| match &p.kind {
            PlanKind::Sqs(c) => Some(c.clone()),
            _ => None,
        });
        let sqs = sqs.unwrap_or_else(|| panic!("no sqs plan"));
        assert_eq!(
            sqs.region, "us-east-1",
            "an endpoint without a region implies us-east-1"
        );
        for p in plans {
            if matches!(p.channel(), Channel::Kafka | Channel::Sqs) {
                assert_eq!(p.dispatch.retry, RetryPolicy::forever());
                assert!(p.build().is_ok());
            }
        }
    }

    #[test]
    fn bad_values_are_reported_by_variable_without_secrets() {
        let mut v = vars(&[
            ("KAFKA_BROKERS", " "),
            ("KAFKA_NUM_PARTITIONS", "0"),
            ("KAFKA_REPLICATION_FACTOR", "-3"),
            ("KAFKA_COMPRESSION", "zstd"),
            ("KAFKA_LINGER_MS", "soon"),
            ("KAFKA_SASL_ENABLED", "true"),
            ("KAFKA_SASL_PASSWORD", "hunter2"),
            ("KAFKA_SSL_ENABLED", "true"),
            ("KAFKA_SSL_CA", "/nonexistent/ca.pem"),
            (
                "KAFKA_SSL_KEY",
                "-----BEGIN PRIVATE KEY-----hunter4-----END PRIVATE KEY-----",
            ),
            ("SQS_SECRET_ACCESS_KEY", "hunter3"),
            ("SQS_MAX_PAYLOAD_SIZE", "2000000"),
        ]);
        let _ = plan(&mut v, &global(true, true));
        let text = ours(&v).join("\n");
        for needle in [
            "KAFKA_ENABLED=true needs KAFKA_BROKERS",
            "KAFKA_NUM_PARTITIONS=0",
            "KAFKA_REPLICATION_FACTOR=-3",
            "KAFKA_COMPRESSION: unknown compression `zstd`",
            "KAFKA_LINGER_MS=`soon`",
            "KAFKA_SASL_ENABLED=true needs KAFKA_SASL_USERNAME",
            "KAFKA_SSL_CA: /nonexistent/ca.pem",
            "KAFKA_SSL_CERT and KAFKA_SSL_KEY go together",
            "SQS_ENABLED=true needs SQS_REGION",
            "SQS_ACCESS_KEY_ID and SQS_SECRET_ACCESS_KEY go together",
            "SQS_MAX_PAYLOAD_SIZE=2000000",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
        assert!(!text.contains("hunter"), "{text}");
    }
}

/// Run by a build without Kafka: `cargo test -p evolution-sinks --no-default-features --features
/// webhook --lib`.
#[cfg(all(test, not(feature = "kafka")))]
mod left_out_tests {
    use super::*;

    #[test]
    fn switching_on_a_channel_left_out_of_the_build_names_its_feature() {
        let mut global = GlobalSettings::default();
        global.kafka.enabled = true;
        let mut vars = Vars::default();
        let plans = plan(&mut vars, &global);
        assert!(plans.iter().all(|p| p.channel() != Channel::Kafka));
        assert!(
            vars.errors().iter().any(|e| e
                .contains("KAFKA_ENABLED=true, but this build has no kafka channel (cargo feature `kafka`)")),
            "{:?}",
            vars.errors()
        );
    }
}

// Every test here needs the NATS or the websocket channel.
#[cfg(all(test, any(feature = "nats", feature = "websocket")))]
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
    #[cfg(feature = "rabbitmq")]
    fn broker_errors(v: &Vars) -> Vec<String> {
        v.errors()
            .iter()
            .filter(|e| e.contains("RABBITMQ") || e.contains("NATS"))
            .cloned()
            .collect()
    }

    #[cfg(feature = "nats")]
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

    #[cfg(all(feature = "websocket", feature = "pusher"))]
    #[tokio::test]
    async fn websocket_and_pusher_are_planned_when_enabled() {
        let mut g = GlobalSettings::default();
        g.websocket.enabled = true;
        g.pusher.enabled = true;
        let ours = |v: &Vars| -> String {
            v.errors()
                .iter()
                .filter(|e| e.contains("WEBSOCKET") || e.contains("PUSHER"))
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        };
        let mut v = vars(&[
            ("WEBSOCKET_ALLOWED_HOSTS", "127.0.0.1,*"),
            ("WEBSOCKET_REPLAY_MAX", "5000"),
            ("PUSHER_MAX_PAYLOAD_BYTES", "0"),
            ("PUSHER_BATCH_EVENTS", "maybe"),
            ("PUSHER_OVERSIZE", "drop"),
            ("PUSHER_REQUEST_TIMEOUT_MS", "1000"),
        ]);
        let _ = plan(&mut v, &g);
        let text = ours(&v);
        for needle in [
            "WEBSOCKET_ALLOWED_HOSTS: `*` is not an IP address",
            "WEBSOCKET_REPLAY_MAX must be under 1024",
            "PUSHER_MAX_PAYLOAD_BYTES must be greater than 0",
            "PUSHER_BATCH_EVENTS=`maybe`",
            "PUSHER_OVERSIZE: `drop` is not a policy: use `reject` or `reference`",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        let mut v = vars(&[
            ("WEBSOCKET_ALLOWED_HOSTS", "127.0.0.1, ::1"),
            ("WEBSOCKET_REPLAY_MAX", "500"),
            ("PUSHER_MAX_PAYLOAD_BYTES", "10240"),
            ("PUSHER_BATCH_EVENTS", "true"),
            ("PUSHER_OVERSIZE", "Reference"),
            ("PUSHER_REQUEST_TIMEOUT_MS", "1000"),
        ]);
        let plans = plan(&mut v, &g);
        assert!(ours(&v).is_empty(), "{}", ours(&v));
        for plan in plans {
            match plan.channel() {
                Channel::Websocket => {
                    let refused = plan.clone().build().map(|_| ()).unwrap_err();
                    assert!(refused.to_string().contains("build_websocket"), "{refused}");
                    let built = plan
                        .build_websocket(|_: &str| evolution_sink_websocket::Access::Denied)
                        .await;
                    assert!(built.is_ok());
                }
                Channel::Pusher => {
                    assert_eq!(plan.dispatch.batch_size, Some(PUSHER_BATCH));
                    assert!(plan.build().is_ok());
                }
                _ => {}
            }
        }
    }

    #[cfg(feature = "websocket")]
    #[test]
    fn cache_redis_is_read_with_evolution_names() {
        let mut g = GlobalSettings::default();
        g.websocket.enabled = true;
        let redis_errors = |v: &Vars| -> String {
            v.errors()
                .iter()
                .filter(|e| e.contains("CACHE_REDIS"))
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        };
        let websocket_redis = |plans: &[ChannelPlan]| {
            plans.iter().find_map(|p| match &p.kind {
                PlanKind::Websocket(config) => Some(config.redis.clone()),
                #[allow(unreachable_patterns, reason = "other channel features")]
                _ => None,
            })
        };
        // Off (Evolution's default): the local adapter, whatever the other variables say.
        let mut v = vars(&[("CACHE_REDIS_URI", "not a url")]);
        let plans = plan(&mut v, &g);
        assert_eq!(redis_errors(&v), "");
        assert_eq!(websocket_redis(&plans), Some(None));

        let mut v = vars(&[
            ("CACHE_REDIS_ENABLED", "true"),
            ("CACHE_REDIS_URI", "redis://:hunter2@127.0.0.1:6379/6"),
        ]);
        let plans = plan(&mut v, &g);
        assert_eq!(redis_errors(&v), "");
        let redis = websocket_redis(&plans).flatten().unwrap();
        assert_eq!(
            redis.prefix, "evolution",
            "Evolution API's default CACHE_REDIS_PREFIX_KEY"
        );
        assert_eq!(redis.url.redacted(), "redis://***@127.0.0.1:6379/6");
        assert!(!format!("{plans:?}").contains("hunter2"), "{plans:?}");

        let mut v = vars(&[
            ("CACHE_REDIS_ENABLED", "yes"),
            ("CACHE_REDIS_URI", "redis://127.0.0.1:6379/0"),
            ("CACHE_REDIS_PREFIX_KEY", "evolution_v2"),
        ]);
        let plans = plan(&mut v, &g);
        assert_eq!(websocket_redis(&plans).flatten().unwrap().prefix, "evolution_v2");

        let mut v = vars(&[("CACHE_REDIS_ENABLED", "TRUE1")]);
        let _ = plan(&mut v, &g);
        assert!(
            redis_errors(&v).contains("CACHE_REDIS_ENABLED=`TRUE1`"),
            "{}",
            redis_errors(&v)
        );
        let mut v = vars(&[("CACHE_REDIS_ENABLED", "true")]);
        let _ = plan(&mut v, &g);
        assert!(
            redis_errors(&v).contains("CACHE_REDIS_ENABLED=true needs CACHE_REDIS_URI"),
            "{}",
            redis_errors(&v)
        );
        let mut v = vars(&[
            ("CACHE_REDIS_ENABLED", "true"),
            ("CACHE_REDIS_URI", "rediss://user:hunter2@redis.example:6380/0"),
            ("CACHE_REDIS_PREFIX_KEY", "a#b"),
        ]);
        let _ = plan(&mut v, &g);
        let text = redis_errors(&v);
        assert!(
            text.contains("CACHE_REDIS_URI: rediss:// (TLS) is not supported"),
            "{text}"
        );
        assert!(text.contains("CACHE_REDIS_PREFIX_KEY: `a#b`"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        // A malformed URI is refused even while the websocket channel is off.
        g.websocket.enabled = false;
        let mut v = vars(&[
            ("CACHE_REDIS_ENABLED", "true"),
            ("CACHE_REDIS_URI", "http://:hunter2@h:6379/0"),
        ]);
        let _ = plan(&mut v, &g);
        let text = redis_errors(&v);
        assert!(
            text.contains("CACHE_REDIS_URI: the `http` scheme is not Redis"),
            "{text}"
        );
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
