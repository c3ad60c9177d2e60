//! [`KafkaConfig`]: the settings of one [`KafkaSink`](crate::KafkaSink), and the Kafka channel's
//! variables ([`SinkConfig`]).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use evolution_events::{
    Channel, DispatchHints, EventSink, GlobalBroker, GlobalSettings, Sensitive, SinkConfig, SinkError, Var,
    Vars,
};

/// Settings of a [`KafkaSink`](crate::KafkaSink): where the cluster is, how to authenticate, and how
/// topics are created. Topics and keys come with each delivery.
///
/// ```
/// use evolution_sink_kafka::KafkaConfig;
///
/// let config = KafkaConfig {
///     auto_create_topics: true,
///     num_partitions: 3,
///     ..KafkaConfig::new(["127.0.0.1:9092"])
/// };
/// assert_eq!(config.client_id, "evolution-api");
/// ```
///
/// `Debug` never shows the SASL password or a private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` each (`KAFKA_BROKERS`, comma-separated). At least one.
    pub brokers: Vec<String>,
    /// `client.id` (`KAFKA_CLIENT_ID`, default `evolution-api`).
    pub client_id: String,
    /// How long establishing a broker connection may take (`KAFKA_CONNECTION_TIMEOUT`, default
    /// 3 000 ms; librdkafka's minimum is 1 s).
    pub connection_timeout: Duration,
    /// How long one produce request, one metadata lookup, and the delivery of one record may take
    /// (`KAFKA_REQUEST_TIMEOUT`, default 30 000 ms): librdkafka's `request.timeout.ms` and
    /// `message.timeout.ms`. A record not acknowledged by then fails with a retryable `Timeout`.
    pub request_timeout: Duration,
    /// Create a missing topic before producing to it, with [`num_partitions`](Self::num_partitions)
    /// and [`replication_factor`](Self::replication_factor) (`KAFKA_AUTO_CREATE_TOPICS`). Without
    /// it, creation is left to the broker (`allow.auto.create.topics`, its
    /// `auto.create.topics.enable`), and a record for a topic the broker does not create fails
    /// without retry (a dead letter, to redrive once the topic exists).
    pub auto_create_topics: bool,
    /// Without [`auto_create_topics`](Self::auto_create_topics), let the lookup of a missing topic
    /// ask the broker to create it (librdkafka's `allow.auto.create.topics`; the broker decides,
    /// with its `auto.create.topics.enable`), as Evolution API relies on. Default true; false: no
    /// topic is ever created behind the operator's back (a record for a missing topic fails, not
    /// retried).
    pub broker_auto_create: bool,
    /// Partitions of a topic the sink creates (`KAFKA_NUM_PARTITIONS`, default 1).
    pub num_partitions: i32,
    /// Replication factor of a topic the sink creates (`KAFKA_REPLICATION_FACTOR`, default 1; `-1`
    /// leaves it to the broker's default).
    pub replication_factor: i32,
    /// How long the producer waits to fill a batch (`KAFKA_LINGER_MS`, default 1 ms: the sink
    /// queues a whole batch at once, so a longer wait only adds latency to each batch of an
    /// ordered instance).
    pub linger: Duration,
    /// Compression of record batches (`KAFKA_COMPRESSION`, default none).
    pub compression: Compression,
    /// Idempotent producer (`KAFKA_IDEMPOTENCE`, default true, as Evolution API): the broker
    /// drops librdkafka's own retry duplicates, and order holds with 5 requests in flight. Switch
    /// it off for brokers without (reliable) idempotence support: then one request is in flight
    /// per connection (order kept) and a retry may duplicate a record (consumers deduplicate by the
    /// `id` header).
    pub idempotence: bool,
    /// The largest payload sent, in bytes (default [`KafkaConfig::DEFAULT_MAX_PAYLOAD_BYTES`]);
    /// larger events are rejected per item. librdkafka's `message.max.bytes` is set 4 KiB above it
    /// (room for the key, the headers and the record framing); keep it below the broker's
    /// `message.max.bytes` (1 048 588 by default).
    pub max_payload_bytes: usize,
    /// SASL authentication (`KAFKA_SASL_*`).
    pub sasl: Option<KafkaSasl>,
    /// TLS (`KAFKA_SSL_*`).
    pub ssl: Option<KafkaSsl>,
}

impl KafkaConfig {
    /// The default payload limit: 995 904 bytes (librdkafka's default `message.max.bytes`,
    /// 1 000 000, less 4 KiB for the key, the headers and the record framing).
    pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1_000_000 - FRAMING_BYTES;
    /// The default connection timeout (`KAFKA_CONNECTION_TIMEOUT`): 3 s.
    pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3);
    /// The default request timeout (`KAFKA_REQUEST_TIMEOUT`): 30 s.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default linger (`KAFKA_LINGER_MS`): 1 ms.
    pub const DEFAULT_LINGER: Duration = Duration::from_millis(1);
    /// The default `client.id`: `evolution-api` (as Evolution API).
    pub const DEFAULT_CLIENT_ID: &'static str = "evolution-api";

    /// The defaults (the seed's) for these bootstrap brokers: client id `evolution-api`, 3 s to
    /// connect, 30 s per request, no topic creation (1 partition, replication 1 when it is
    /// switched on), 1 ms linger, no compression, idempotent, no SASL, no TLS.
    #[must_use]
    pub fn new<S: Into<String>>(brokers: impl IntoIterator<Item = S>) -> Self {
        Self {
            brokers: brokers.into_iter().map(Into::into).collect(),
            client_id: Self::DEFAULT_CLIENT_ID.to_owned(),
            connection_timeout: Self::DEFAULT_CONNECTION_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            auto_create_topics: false,
            broker_auto_create: true,
            num_partitions: 1,
            replication_factor: 1,
            linger: Self::DEFAULT_LINGER,
            compression: Compression::None,
            idempotence: true,
            max_payload_bytes: Self::DEFAULT_MAX_PAYLOAD_BYTES,
            sasl: None,
            ssl: None,
        }
    }
}

/// Bytes of librdkafka's `message.max.bytes` kept for the key, the headers and the framing.
pub(crate) const FRAMING_BYTES: usize = 4096;

/// Record batch compression (`KAFKA_COMPRESSION`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// No compression (the default, as Evolution API).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
}

impl Compression {
    /// librdkafka's name: `none`, `gzip`, `snappy`, `lz4`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value that names no compression this build has.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression `{0}`: use none, gzip, snappy or lz4 (zstd is not compiled in)")]
pub struct UnknownCompression(pub String);

impl FromStr for Compression {
    type Err = UnknownCompression;

    /// `none` (or blank), `gzip`, `snappy`, `lz4`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            "snappy" => Ok(Self::Snappy),
            "lz4" => Ok(Self::Lz4),
            _ => Err(UnknownCompression(s.to_owned())),
        }
    }
}

/// SASL authentication (`KAFKA_SASL_ENABLED=true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSasl {
    /// `KAFKA_SASL_MECHANISM`.
    pub mechanism: SaslMechanism,
    /// `KAFKA_SASL_USERNAME`.
    pub username: String,
    /// `KAFKA_SASL_PASSWORD` (never shown).
    pub password: Sensitive,
}

/// A SASL mechanism librdkafka implements without extra system libraries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SaslMechanism {
    /// `PLAIN` (the seed's default).
    #[default]
    Plain,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's `sasl.mechanism` value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A value that names no SASL mechanism this build has.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown SASL mechanism `{0}`: use plain, scram-sha-256 or scram-sha-512")]
pub struct UnknownMechanism(pub String);

impl FromStr for SaslMechanism {
    type Err = UnknownMechanism;

    /// `plain`, `scram-sha-256`, `scram-sha-512` (any case; `_` for `-` too).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "" | "plain" => Ok(Self::Plain),
            "scram-sha-256" => Ok(Self::ScramSha256),
            "scram-sha-512" => Ok(Self::ScramSha512),
            _ => Err(UnknownMechanism(s.to_owned())),
        }
    }
}

/// TLS to the brokers (`KAFKA_SSL_ENABLED=true`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaSsl {
    /// Verify the brokers' certificates (`KAFKA_SSL_REJECT_UNAUTHORIZED`, default true).
    pub verify: bool,
    /// CA certificates (`KAFKA_SSL_CA`); none: the system's.
    pub ca: Option<Pem>,
    /// Client private key (`KAFKA_SSL_KEY`, for mutual TLS; never shown).
    pub key: Option<Pem>,
    /// Client certificate (`KAFKA_SSL_CERT`, for mutual TLS).
    pub cert: Option<Pem>,
}

/// PEM given inline (Evolution API's way) or as a file path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pem {
    /// The PEM text itself (`-----BEGIN …`); kept [`Sensitive`] (it may be a private key).
    Inline(Sensitive),
    /// A file holding it.
    File(PathBuf),
}

impl Pem {
    /// Inline PEM when `value` starts with `-----BEGIN` (after whitespace), a file path otherwise.
    #[must_use]
    pub fn parse(value: &str) -> Self {
        let trimmed = value.trim();
        if trimmed.starts_with("-----BEGIN") {
            Self::Inline(Sensitive::new(trimmed.replace("\\n", "\n")))
        } else {
            Self::File(PathBuf::from(trimmed))
        }
    }
}

impl SinkConfig for KafkaConfig {
    const CHANNEL: Channel = Channel::Kafka;

    const VARS: &'static [Var] = &[
        Var::new("KAFKA_CLIENT_ID", "evolution-api"),
        Var::new("KAFKA_BROKERS", "localhost:9092"),
        Var::new("KAFKA_CONNECTION_TIMEOUT", "3000"),
        Var::new("KAFKA_REQUEST_TIMEOUT", "30000"),
        Var::new("KAFKA_GLOBAL_ENABLED", "false"),
        // Accepted and unused: the sink only produces.
        Var::new("KAFKA_CONSUMER_GROUP_ID", "evolution-api-consumers"),
        Var::new("KAFKA_TOPIC_PREFIX", "evolution"),
        Var::new("KAFKA_NUM_PARTITIONS", "1"),
        Var::new("KAFKA_REPLICATION_FACTOR", "1"),
        Var::new("KAFKA_AUTO_CREATE_TOPICS", "false"),
        Var::new("KAFKA_SASL_ENABLED", "false"),
        Var::new("KAFKA_SASL_MECHANISM", "plain"),
        Var::new("KAFKA_SASL_USERNAME", ""),
        Var::new("KAFKA_SASL_PASSWORD", ""),
        Var::new("KAFKA_SSL_ENABLED", "false"),
        Var::new("KAFKA_SSL_REJECT_UNAUTHORIZED", "true"),
        Var::new("KAFKA_SSL_CA", ""),
        Var::new("KAFKA_SSL_KEY", ""),
        Var::new("KAFKA_SSL_CERT", ""),
        Var::new("KAFKA_LINGER_MS", "1"),
        Var::new("KAFKA_COMPRESSION", "none"),
        Var::new("KAFKA_IDEMPOTENCE", "true"),
    ];

    const EVENT_TOGGLES: &'static [&'static str] = &["KAFKA_EVENTS_"];

    /// `KAFKA_ENABLED`, `KAFKA_GLOBAL_ENABLED`, `KAFKA_EVENTS_<KEY>`, `KAFKA_TOPIC_PREFIX`.
    fn read_global(vars: &mut Vars, global: &mut GlobalSettings) {
        global.kafka = GlobalBroker::from_vars(vars, Self::CHANNEL, "KAFKA_EVENTS_", "KAFKA_TOPIC_PREFIX");
    }

    /// `KAFKA_BROKERS`, `KAFKA_CLIENT_ID`, `KAFKA_CONNECTION_TIMEOUT`, `KAFKA_REQUEST_TIMEOUT`,
    /// `KAFKA_AUTO_CREATE_TOPICS`, `KAFKA_NUM_PARTITIONS`, `KAFKA_REPLICATION_FACTOR`,
    /// `KAFKA_LINGER_MS`, `KAFKA_COMPRESSION`, `KAFKA_IDEMPOTENCE`, `KAFKA_SASL_*`, `KAFKA_SSL_*`;
    /// only with `KAFKA_ENABLED=true`. (`KAFKA_CONSUMER_GROUP_ID` is accepted and unused: the sink
    /// only produces.)
    fn from_vars(vars: &mut Vars, global: &GlobalSettings) -> Option<(Self, DispatchHints)> {
        if !global.enabled(Self::CHANNEL) {
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
            vars.error(
                "KAFKA_ENABLED=true needs KAFKA_BROKERS (host:port, comma-separated); set it, or set \
                 KAFKA_ENABLED=false",
            );
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
            Compression::None
        });
        let auto_create_topics = vars.bool("KAFKA_AUTO_CREATE_TOPICS");
        let idempotence = vars.bool("KAFKA_IDEMPOTENCE");
        let sasl = vars.bool("KAFKA_SASL_ENABLED").then(|| sasl(vars));
        let ssl = vars.bool("KAFKA_SSL_ENABLED").then(|| ssl(vars));
        let config = Self {
            client_id: vars
                .string("KAFKA_CLIENT_ID")
                .unwrap_or_else(|| Self::DEFAULT_CLIENT_ID.to_owned()),
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
            ..Self::new(brokers)
        };
        let dispatch = DispatchHints {
            // A send looks topics up (at most 10 s) and waits for the acknowledgements (at most the
            // request timeout); this deadline is a safety net above both.
            send_timeout: Some(request_timeout.saturating_mul(2) + Duration::from_secs(10)),
            ..DispatchHints::default()
        };
        Some((config, dispatch))
    }

    fn into_sink(self) -> Result<Arc<dyn EventSink>, SinkError> {
        Ok(Arc::new(crate::KafkaSink::new(self)?))
    }
}

/// `KAFKA_SASL_MECHANISM`, `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD` (with `KAFKA_SASL_ENABLED=true`).
fn sasl(vars: &mut Vars) -> KafkaSasl {
    let mechanism = vars.raw("KAFKA_SASL_MECHANISM").parse().unwrap_or_else(|e| {
        vars.error(format!("KAFKA_SASL_MECHANISM: {e}"));
        SaslMechanism::Plain
    });
    let (username, password) = (
        vars.string("KAFKA_SASL_USERNAME"),
        vars.string("KAFKA_SASL_PASSWORD"),
    );
    if username.is_none() || password.is_none() {
        // The password is never repeated.
        vars.error("KAFKA_SASL_ENABLED=true needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD");
    }
    KafkaSasl {
        mechanism,
        username: username.unwrap_or_default(),
        password: Sensitive::new(password.unwrap_or_default()),
    }
}

/// `KAFKA_SSL_CA`, `KAFKA_SSL_CERT`, `KAFKA_SSL_KEY`, `KAFKA_SSL_REJECT_UNAUTHORIZED` (with
/// `KAFKA_SSL_ENABLED=true`).
fn ssl(vars: &mut Vars) -> KafkaSsl {
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
    KafkaSsl {
        verify,
        ca,
        key,
        cert,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_keeps_secrets_out_of_debug() {
        assert_eq!("GZIP".parse::<Compression>(), Ok(Compression::Gzip));
        assert_eq!("".parse::<Compression>(), Ok(Compression::None));
        assert!("zstd".parse::<Compression>().is_err());
        assert_eq!(
            "scram_sha_512".parse::<SaslMechanism>(),
            Ok(SaslMechanism::ScramSha512)
        );
        assert!("gssapi".parse::<SaslMechanism>().is_err());
        assert_eq!(
            Pem::parse("/etc/kafka/ca.pem"),
            Pem::File(PathBuf::from("/etc/kafka/ca.pem"))
        );
        let key = Pem::parse("-----BEGIN PRIVATE KEY-----\\nhunter2\\n-----END PRIVATE KEY-----");
        let Pem::Inline(text) = &key else {
            panic!("not inline")
        };
        assert!(text.expose().contains("\nhunter2\n"));
        let config = KafkaConfig {
            sasl: Some(KafkaSasl {
                mechanism: SaslMechanism::Plain,
                username: "user".into(),
                password: Sensitive::new("hunter2"),
            }),
            ssl: Some(KafkaSsl {
                verify: true,
                key: Some(key),
                ..KafkaSsl::default()
            }),
            ..KafkaConfig::new(["b:9092"])
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    fn enabled() -> GlobalSettings {
        let mut global = GlobalSettings::default();
        global.kafka.enabled = true;
        global
    }

    #[test]
    fn read_only_when_enabled_and_built_without_connecting() {
        let mut v = Vars::with_defaults(KafkaConfig::VARS, [("KAFKA_BROKERS", " ")]);
        assert!(KafkaConfig::from_vars(&mut v, &GlobalSettings::default()).is_none());
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        let mut v = Vars::with_defaults(
            KafkaConfig::VARS,
            [
                ("KAFKA_SASL_ENABLED", "true"),
                ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
                ("KAFKA_SASL_USERNAME", "evolution"),
                ("KAFKA_SASL_PASSWORD", "hunter2"),
                ("KAFKA_AUTO_CREATE_TOPICS", "yes"),
                ("KAFKA_NUM_PARTITIONS", "6"),
                ("KAFKA_COMPRESSION", "lz4"),
            ],
        );
        let (kafka, dispatch) = KafkaConfig::from_vars(&mut v, &enabled()).unwrap();
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        assert!(!format!("{kafka:?}").contains("hunter2"), "{kafka:?}");
        assert!(kafka.auto_create_topics);
        assert_eq!(kafka.num_partitions, 6);
        assert_eq!(kafka.compression, Compression::Lz4);
        assert_eq!(
            kafka.sasl.as_ref().map(|s| s.mechanism),
            Some(SaslMechanism::ScramSha512)
        );
        assert_eq!(dispatch.send_timeout, Some(Duration::from_secs(70)));
        assert!(kafka.into_sink().is_ok());
    }

    #[test]
    fn bad_values_are_reported_by_variable_without_secrets() {
        let mut v = Vars::with_defaults(
            KafkaConfig::VARS,
            [
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
            ],
        );
        let _ = KafkaConfig::from_vars(&mut v, &enabled());
        let text = v.errors().join("\n");
        for needle in [
            "KAFKA_ENABLED=true needs KAFKA_BROKERS",
            "KAFKA_NUM_PARTITIONS=0",
            "KAFKA_REPLICATION_FACTOR=-3",
            "KAFKA_COMPRESSION: unknown compression `zstd`",
            "KAFKA_LINGER_MS=`soon`",
            "KAFKA_SASL_ENABLED=true needs KAFKA_SASL_USERNAME",
            "KAFKA_SSL_CA: /nonexistent/ca.pem",
            "KAFKA_SSL_CERT and KAFKA_SSL_KEY go together",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
        assert!(!text.contains("hunter"), "{text}");
    }
}
