//! The **Kafka** sink of evolution events: produces each event as a Kafka record to the topic its
//! [`Delivery`](evolution_events::Delivery) carries
//! ([`Destination::Kafka`](evolution_events::Destination::Kafka)), with
//! [rdkafka](https://docs.rs/rdkafka) (librdkafka 2.12, built from source).
//!
//! ```no_run
//! use std::sync::Arc;
//! use evolution_events::EventSink;
//! use evolution_sink_kafka::{KafkaConfig, KafkaSink};
//!
//! # fn main() -> Result<(), evolution_events::SinkError> {
//! let sink: Arc<dyn EventSink> = Arc::new(KafkaSink::new(KafkaConfig {
//!     auto_create_topics: true, // KAFKA_AUTO_CREATE_TOPICS
//!     ..KafkaConfig::new(["127.0.0.1:9092"]) // KAFKA_BROKERS
//! })?);
//! # Ok(()) }
//! ```
//!
//! # Configuration
//!
//! | [`KafkaConfig`] field | variable (server) | default | librdkafka |
//! |---|---|---|---|
//! | `brokers` | `KAFKA_BROKERS` (comma-separated `host:port`) | `localhost:9092` | `bootstrap.servers` |
//! | `client_id` | `KAFKA_CLIENT_ID` | `evolution-api` | `client.id` |
//! | `connection_timeout` | `KAFKA_CONNECTION_TIMEOUT` (ms) | 3 000 | `socket.connection.setup.timeout.ms` (≥ 1 s) |
//! | `request_timeout` | `KAFKA_REQUEST_TIMEOUT` (ms) | 30 000 | `request.timeout.ms`, `message.timeout.ms` |
//! | `auto_create_topics` | `KAFKA_AUTO_CREATE_TOPICS` | false | (admin `CreateTopics`) |
//! | `num_partitions` | `KAFKA_NUM_PARTITIONS` | 1 | |
//! | `replication_factor` | `KAFKA_REPLICATION_FACTOR` | 1 | |
//! | `linger` | `KAFKA_LINGER_MS` | 1 | `linger.ms` |
//! | `compression` | `KAFKA_COMPRESSION` (`none`, `gzip`, `snappy`, `lz4`) | none | `compression.type` |
//! | `idempotence` | `KAFKA_IDEMPOTENCE` | true | `enable.idempotence` (off: `max.in.flight.requests.per.connection=1`) |
//! | `max_payload_bytes` | — | 995 904 | `message.max.bytes` = limit + 4 KiB |
//! | `sasl` | `KAFKA_SASL_ENABLED`, `_MECHANISM` (`plain`, `scram-sha-256`, `scram-sha-512`), `_USERNAME`, `_PASSWORD` | off | `security.protocol`, `sasl.*` |
//! | `ssl` | `KAFKA_SSL_ENABLED`, `_REJECT_UNAUTHORIZED`, `_CA`, `_CERT`, `_KEY` (PEM text or a file path) | off | `ssl.*.pem` / `ssl.*.location` |
//!
//! Always: `acks=all` (a record counts once every in-sync replica has it).
//! `allow.auto.create.topics` is the opposite of `auto_create_topics`: the sink creates topics
//! itself, or leaves it to the broker (its `auto.create.topics.enable`, as Evolution API does;
//! `broker_auto_create: false` forbids that too). By default the producer is idempotent (no duplicates from librdkafka's own retries,
//! per-partition order with requests pipelined). `KAFKA_CONSUMER_GROUP_ID` is read by
//! the server and unused: the sink only produces (Evolution API's own consumer only logged).
//! The SASL password and inline private keys are [`Sensitive`](evolution_events::Sensitive):
//! never in `Debug`, logs or errors.
//!
//! # Wire format
//!
//! ```text
//! topic   <Destination::Kafka.topic>   seed: {KAFKA_TOPIC_PREFIX}.{instance}.{event-kebab}
//! key     <Destination::Kafka.key>     the instance: its records share a partition (order)
//! headers event    = the payload's `event` (MESSAGES_UPSERT in the seed profile)
//!         instance = the instance name
//!         id       = the event id (UUIDv7): the idempotency key, the same on every attempt
//!         origin   = ChannelStartupService (evolution-v2 only, as Evolution API)
//!         timestamp= the payload's date_time (evolution-v2 only, as Evolution API)
//! value   <Delivery::payload() bytes: {"id","event","instance","data","date_time",...};
//!          evolution-v2: Evolution API's value, with `timestamp` in epoch milliseconds>
//! ```
//!
//! # Topics
//!
//! The first record for a topic looks it up in the cluster metadata (once per topic, cached). A
//! missing topic is created with `num_partitions` and `replication_factor` when
//! `auto_create_topics` is on (a topic created meanwhile by someone else counts as created), then
//! looked up once more so that the producer knows its partitions' leaders before its first record.
//! Otherwise the lookup lets the broker create it; a topic the broker does not create either fails
//! its records with a `ConfigInvalid` that is not retried (they go dead: the delivery log, the
//! metrics and an `ERRORS` event show it, never an endless silent retry), naming the topic and
//! the variable, and [`health_check`](evolution_events::EventSink::health_check) names it until it
//! exists. A record that fails with "unknown topic" (the topic
//! was deleted) drops the topic from the cache, so the next attempt creates it again.
//! [`prepare`](evolution_events::EventSink::prepare) does the same ahead of time when an instance's
//! settings are saved.
//!
//! # Batches, order, isolation
//!
//! [`Capabilities`](evolution_events::Capabilities): batches of up to 1 024, ordered. Payloads up
//! to `max_payload_bytes` (larger ones fail alone as `Rejected`); an item counts as delivered
//! only once every in-sync replica has it (`acks=all`). `send` queues every record, then
//! waits for each acknowledgement and reports each item's own outcome: a bad or missing topic fails
//! only its own records, never the producer or other instances' topics (Evolution API tears down
//! Kafka delivery for every instance when one topic fails). After an item fails retryably to be
//! queued, the later items of its topic and key are reported "not sent" (retryable) so nothing
//! overtakes it ([`HoldBack`](evolution_events::HoldBack)).
//! A fatal producer error, or a broker that refuses the producer's idempotence state (fenced,
//! unknown producer id, sequence out of order: a broker that restarted without that state),
//! replaces the producer — a new one gets a new producer id; the failed items are retried through it.
//!
//! # Classification
//!
//! | librdkafka error | kind | retry |
//! |---|---|---|
//! | `MSG_SIZE_TOO_LARGE`, `INVALID_TOPIC_EXCEPTION`, `INVALID_RECORD`, `POLICY_VIOLATION`, bad message | `Rejected` | `Never` |
//! | `TOPIC_AUTHORIZATION_FAILED`, `CLUSTER_AUTHORIZATION_FAILED`, SASL failures | `Unauthorized` | `Backoff` |
//! | `UNKNOWN_TOPIC_OR_PART` (topic deleted) | `Unavailable` | `Backoff` |
//! | topic missing and `auto_create_topics` off; `INVALID_REPLICATION_FACTOR`, `INVALID_PARTITIONS`, `INVALID_CONFIG` on creation | `ConfigInvalid` | `Backoff` |
//! | `_MSG_TIMED_OUT`, `REQUEST_TIMED_OUT`, `_TIMED_OUT` | `Timeout` | `Backoff` |
//! | `_QUEUE_FULL`, `THROTTLING_QUOTA_EXCEEDED` | `RateLimited` | `Backoff` |
//! | `_ALL_BROKERS_DOWN`, `_TRANSPORT`, leader/replica unavailable, `_SSL`, `_FATAL`, producer state refused (`PRODUCER_FENCED`, `UNKNOWN_PRODUCER_ID`, `OUT_OF_ORDER_SEQUENCE_NUMBER`, …), producer closed | `Unavailable` | `Backoff` |
//! | anything else | `Unexpected` | `Backoff` |
//! | a destination of another channel, invalid settings | `ConfigInvalid` | `Never` |
//!
//! Messages name the operation and the topic (`producing to topic "evolution.acme.call" failed:
//! …`) and never a configuration value.
//!
//! # Health, flush, shutdown
//!
//! `health_check` reads the cluster metadata (at most 10 s). `flush` waits for every queued record
//! (at most the request timeout). `shutdown` is idempotent: it flushes and drops the producer;
//! afterwards `send`, `flush` and `health_check` fail with `Closed`.

mod classify;
mod config;
mod sink;

pub use config::{
    Compression, KafkaConfig, KafkaSasl, KafkaSsl, Pem, SaslMechanism, UnknownCompression, UnknownMechanism,
};
pub use sink::{KafkaSink, NAME};
