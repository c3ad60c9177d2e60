//! [`KafkaConfig`]: the settings of one [`KafkaSink`](crate::KafkaSink).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use evolution_events::Sensitive;

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
    /// it, a record for a missing topic fails (retryably: it goes once the topic exists), and the
    /// sink never asks the broker to create topics for it.
    pub auto_create_topics: bool,
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
}
