//! [`KafkaSink`]: the [`EventSink`] of the Kafka channel.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use evolution_events::{
    Capabilities, Channel, Delivery, DeliveryReport, Destination, ErrorKind, EventSink, HoldBack,
    KafkaTarget, NamingProfile, Retry, SinkError, async_trait,
};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::time::Instant;

use crate::classify::{Op, classify, classify_error, code_of, error};
use crate::config::{FRAMING_BYTES, KafkaConfig, Pem};

/// The channel name of this sink (`kafka`).
pub const NAME: &str = "kafka";

/// The largest batch `send` takes.
const MAX_BATCH: usize = 1024;
/// Batches of one key the dispatcher may have in flight with the idempotent producer: librdkafka
/// keeps a partition's order with up to 5 requests in flight (`max.in.flight.requests.per.connection`).
const MAX_IN_FLIGHT_IDEMPOTENT: usize = 5;

/// The longest a metadata lookup (health check, topic check) may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait before trying again to enqueue a record when librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

type Admin = AdminClient<DefaultClientContext>;

/// Produces events as Kafka records (see the [crate documentation](crate) for the wire format,
/// topic creation and the classification of errors).
///
/// One idempotent librdkafka producer per sink (`acks=all`), shared by every topic; a topic that
/// fails fails only its own records. After a fatal producer error the producer is replaced.
pub struct KafkaSink {
    config: KafkaConfig,
    client: ClientConfig,
    /// `None` once shut down.
    state: Mutex<Option<State>>,
    /// Topics known to exist (checked, or created, once).
    known: Mutex<HashSet<String>>,
    /// Topics found missing with `auto_create_topics` off, and not created by the broker either:
    /// their deliveries went dead, and the health check names them until they exist.
    refused: Mutex<HashSet<String>>,
    /// Taken by each `send` before anything else and held while it queues its records — and
    /// provisions unknown topics — but never while awaiting acknowledgements: tokio's mutex is
    /// fair, so overlapping sends queue their records in the order they were started, the promise
    /// behind `max_in_flight_per_key` above 1 (idempotent producer only).
    queueing: tokio::sync::Mutex<()>,
}

/// The live clients.
struct State {
    producer: FutureProducer,
    /// Created on first use (topic creation).
    admin: Option<Arc<Admin>>,
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `KafkaConfig`'s `Debug` redacts the SASL password and inline keys.
        f.debug_struct("KafkaSink")
            .field("config", &self.config)
            .field("closed", &self.lock().is_none())
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// A sink with these settings. The producer starts here but connects in the background: a
    /// cluster that is down only delays deliveries.
    ///
    /// # Errors
    /// `ConfigInvalid` when there is no broker, a timeout is zero, the partition or replication
    /// count is invalid, a PEM file is missing, or librdkafka refuses a setting.
    pub fn new(config: KafkaConfig) -> Result<Self, SinkError> {
        let client = client_config(&config)?;
        let producer = create_producer(&client)?;
        Ok(Self {
            config,
            client,
            state: Mutex::new(Some(State {
                producer,
                admin: None,
            })),
            known: Mutex::new(HashSet::new()),
            refused: Mutex::new(HashSet::new()),
            queueing: tokio::sync::Mutex::new(()),
        })
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Option<State>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn known(&self) -> MutexGuard<'_, HashSet<String>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refused(&self) -> MutexGuard<'_, HashSet<String>> {
        self.refused.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed() -> SinkError {
        error(ErrorKind::Closed, "the Kafka sink is shut down")
    }

    /// The producer (a cheap handle), or `Closed`.
    fn producer(&self) -> Result<FutureProducer, SinkError> {
        self.lock()
            .as_ref()
            .map(|s| s.producer.clone())
            .ok_or_else(Self::closed)
    }

    /// The admin client, created on first use, or `Closed`.
    fn admin(&self) -> Result<Arc<Admin>, SinkError> {
        let mut state = self.lock();
        let state = state.as_mut().ok_or_else(Self::closed)?;
        if let Some(admin) = &state.admin {
            return Ok(Arc::clone(admin));
        }
        let admin: Arc<Admin> = Arc::new(
            self.client
                .create()
                .map_err(|e| classify_error(Op::Metadata, &e))?,
        );
        state.admin = Some(Arc::clone(&admin));
        Ok(admin)
    }

    /// Replaces the producer after a fatal error, or after the broker refused its idempotence
    /// state (`state_error`: fenced, unknown producer id, sequence out of order — a broker that
    /// restarted without it): its records cannot be sent any more, and a new producer gets a new
    /// producer id. The failed records were reported retryable and go again through the new one.
    fn recover_producer(&self, broken: &FutureProducer, state_error: Option<RDKafkaErrorCode>) {
        let (code, reason) = match (broken.client().fatal_error(), state_error) {
            (Some((code, reason)), _) => (code, reason),
            (None, Some(code)) => (
                code,
                "the broker refused the producer's idempotence state".to_owned(),
            ),
            (None, None) => return,
        };
        let mut state = self.lock();
        let Some(state) = state.as_mut() else { return };
        // Another send may have replaced it already.
        if !std::ptr::eq(state.producer.client().native_ptr(), broken.client().native_ptr()) {
            return;
        }
        match create_producer(&self.client) {
            Ok(producer) => {
                tracing::warn!(
                    sink = NAME, error = %code, %reason,
                    "the Kafka producer cannot go on; replaced it (the failed records are retried)"
                );
                state.producer = producer;
            }
            Err(e) => tracing::error!(sink = NAME, error = %e, "cannot replace the failed Kafka producer"),
        }
    }

    /// Makes sure each topic exists (looked up once per topic; created when
    /// `auto_create_topics`). Returns the topics that cannot be used, with the reason.
    async fn ensure_topics(&self, topics: &[&str]) -> Result<HashMap<String, SinkError>, SinkError> {
        let unknown: Vec<String> = {
            let known = self.known();
            topics
                .iter()
                .filter(|t| !known.contains(**t))
                .map(|t| (*t).to_owned())
                .collect()
        };
        let mut failed = HashMap::new();
        if unknown.is_empty() {
            return Ok(failed);
        }
        let producer = self.producer()?;
        let timeout = self.config.request_timeout.min(METADATA_TIMEOUT);
        let mut missing = Vec::new();
        for topic in unknown {
            match lookup(&producer, &topic, timeout).await {
                Ok(true) => {
                    self.refused().remove(&topic);
                    self.known().insert(topic);
                }
                Ok(false) => missing.push(topic),
                Err(e) => {
                    failed.insert(topic, e);
                }
            }
        }
        if missing.is_empty() {
            return Ok(failed);
        }
        if !self.config.auto_create_topics {
            // The lookup let the broker create it (its `auto.create.topics.enable`, as Evolution
            // API relies on; unless `broker_auto_create` is off); it did not. Waiting would be an endless silent retry: its deliveries
            // go dead (visible in the delivery log, the metrics and an ERRORS event) and the health
            // check names the topic until it exists.
            for topic in missing {
                failed.insert(topic.clone(), missing_topic(&topic));
                self.refused().insert(topic);
            }
            return Ok(failed);
        }
        let created = self.create_topics(&missing, timeout).await?;
        for (topic, outcome) in missing.into_iter().zip(created) {
            match outcome {
                Ok(()) => {
                    // The producer found the topic missing a moment ago: without a second look its
                    // first records would wait for librdkafka's next metadata refresh (up to
                    // ~70 ms measured against tansu) before it knows the partitions' leaders.
                    if let Err(e) = lookup(&producer, &topic, timeout).await {
                        tracing::debug!(sink = NAME, topic = %topic, error = %e, "cannot read a new topic's metadata yet");
                    }
                    self.known().insert(topic);
                }
                Err(e) => {
                    failed.insert(topic, e);
                }
            }
        }
        Ok(failed)
    }

    /// Creates `topics` with the configured partitions and replication; a topic that already
    /// exists counts as created. One outcome per topic, in order.
    async fn create_topics(
        &self,
        topics: &[String],
        timeout: Duration,
    ) -> Result<Vec<Result<(), SinkError>>, SinkError> {
        let admin = self.admin()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.config.num_partitions,
                    TopicReplication::Fixed(self.config.replication_factor),
                )
            })
            .collect();
        let options = AdminOptions::new()
            .request_timeout(Some(timeout))
            .operation_timeout(Some(timeout));
        let results = match admin.create_topics(&new, &options).await {
            Ok(results) => results,
            Err(e) => {
                let first = topics.first().map_or("", String::as_str);
                return Ok(topics
                    .iter()
                    .map(|_| Err(classify_error(Op::Create(first), &e)))
                    .collect());
            }
        };
        let mut by_name: HashMap<String, Result<(), RDKafkaErrorCode>> = results
            .into_iter()
            .map(|r| match r {
                Ok(name) => (name, Ok(())),
                Err((name, code)) => (name, Err(code)),
            })
            .collect();
        Ok(topics
            .iter()
            .map(|t| match by_name.remove(t) {
                Some(Ok(())) | Some(Err(RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::info!(sink = NAME, topic = %t, "topic ready");
                    Ok(())
                }
                Some(Err(code)) => Err(classify(Op::Create(t), code)),
                None => Err(error(
                    ErrorKind::Unexpected,
                    format!("creating topic {t:?}: the broker did not answer for it"),
                )
                .with_retry(Retry::Backoff)),
            })
            .collect())
    }
}

/// The error of a record for `topic`, which does not exist while `KAFKA_AUTO_CREATE_TOPICS=false`
/// and which the broker did not create: not retried.
fn missing_topic(topic: &str) -> SinkError {
    error(
        ErrorKind::ConfigInvalid,
        format!(
            "topic {topic:?} does not exist, KAFKA_AUTO_CREATE_TOPICS=false and the broker did not create it \
             (its auto.create.topics.enable is off): create the topic, or set KAFKA_AUTO_CREATE_TOPICS=true, \
             then redrive the dead deliveries"
        ),
    )
    .with_retry(Retry::Never)
}

/// Whether `topic` exists (`Ok(false)`: the cluster says it is unknown).
async fn lookup(producer: &FutureProducer, topic: &str, timeout: Duration) -> Result<bool, SinkError> {
    let producer = producer.clone();
    let name = topic.to_owned();
    let fetched = tokio::task::spawn_blocking(move || {
        let metadata = producer.client().fetch_metadata(Some(&name), timeout)?;
        Ok::<_, KafkaError>(
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .map(|t| (t.error().map(RDKafkaErrorCode::from), t.partitions().len())),
        )
    })
    .await
    .map_err(|e| {
        error(ErrorKind::Unexpected, format!("looking up topic {topic:?}: {e}")).with_retry(Retry::Backoff)
    })?
    .map_err(|e| classify_error(Op::Lookup(topic), &e))?;
    match fetched {
        Some((None, partitions)) if partitions > 0 => Ok(true),
        // Known but without partitions yet: being created.
        Some((None, _)) | None => Ok(false),
        Some((Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic), _)) => {
            Ok(false)
        }
        Some((Some(code), _)) => Err(classify(Op::Lookup(topic), code)),
    }
}

/// Builds librdkafka's configuration (nothing is connected yet).
fn client_config(config: &KafkaConfig) -> Result<ClientConfig, SinkError> {
    let invalid = |message: String| error(ErrorKind::ConfigInvalid, message);
    let brokers: Vec<&str> = config
        .brokers
        .iter()
        .map(|b| b.trim())
        .filter(|b| !b.is_empty())
        .collect();
    if brokers.is_empty() {
        return Err(invalid(
            "no Kafka broker is configured: set KAFKA_BROKERS (host:port, comma-separated)".to_owned(),
        ));
    }
    if let Some(bad) = brokers.iter().find(|b| b.contains(char::is_whitespace)) {
        return Err(invalid(format!(
            "the broker address {bad:?} contains whitespace: KAFKA_BROKERS is a comma-separated list of host:port"
        )));
    }
    if config.request_timeout.is_zero() || config.connection_timeout.is_zero() {
        return Err(invalid(
            "KAFKA_REQUEST_TIMEOUT and KAFKA_CONNECTION_TIMEOUT must be longer than zero".to_owned(),
        ));
    }
    if config.num_partitions < 1 {
        return Err(invalid(format!(
            "KAFKA_NUM_PARTITIONS={} must be at least 1",
            config.num_partitions
        )));
    }
    if config.replication_factor < 1 && config.replication_factor != -1 {
        return Err(invalid(format!(
            "KAFKA_REPLICATION_FACTOR={} must be at least 1 (or -1 for the broker's default)",
            config.replication_factor
        )));
    }
    if config.max_payload_bytes == 0 {
        return Err(invalid("the Kafka payload limit must be above zero".to_owned()));
    }
    let millis = |d: Duration| d.as_millis().clamp(1, i32::MAX as u128).to_string();
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", brokers.join(","))
        .set("client.id", &config.client_id)
        .set(
            "socket.connection.setup.timeout.ms",
            millis(config.connection_timeout.max(Duration::from_secs(1))),
        )
        .set("request.timeout.ms", millis(config.request_timeout))
        .set("message.timeout.ms", millis(config.request_timeout))
        // Idempotent producer: no duplicates from librdkafka's own retries, order kept per
        // partition with up to 5 requests in flight. Without it, one request in flight keeps the
        // order (retries may then duplicate). acks=all either way.
        .set(
            "enable.idempotence",
            if config.idempotence { "true" } else { "false" },
        )
        .set(
            "max.in.flight.requests.per.connection",
            if config.idempotence { "5" } else { "1" },
        )
        .set("acks", "all")
        .set("linger.ms", config.linger.as_millis().min(900_000).to_string())
        .set("compression.type", config.compression.as_str())
        .set(
            "message.max.bytes",
            (config.max_payload_bytes + FRAMING_BYTES).to_string(),
        )
        // KAFKA_AUTO_CREATE_TOPICS=true: the sink creates topics (with the configured partitions and
        // replication), never a metadata request as a side effect. false: topic creation is left
        // to the broker (its `auto.create.topics.enable`), as Evolution API does.
        .set(
            "allow.auto.create.topics",
            if !config.auto_create_topics && config.broker_auto_create {
                "true"
            } else {
                "false"
            },
        );
    let protocol = match (&config.sasl, &config.ssl) {
        (None, None) => "plaintext",
        (None, Some(_)) => "ssl",
        (Some(_), None) => "sasl_plaintext",
        (Some(_), Some(_)) => "sasl_ssl",
    };
    client.set("security.protocol", protocol);
    if let Some(sasl) = &config.sasl {
        client
            .set("sasl.mechanism", sasl.mechanism.as_str())
            .set("sasl.username", &sasl.username)
            .set("sasl.password", sasl.password.expose());
    }
    if let Some(ssl) = &config.ssl {
        client.set(
            "enable.ssl.certificate.verification",
            if ssl.verify { "true" } else { "false" },
        );
        for (pem, inline, file, variable) in [
            (&ssl.ca, "ssl.ca.pem", "ssl.ca.location", "KAFKA_SSL_CA"),
            (
                &ssl.cert,
                "ssl.certificate.pem",
                "ssl.certificate.location",
                "KAFKA_SSL_CERT",
            ),
            (&ssl.key, "ssl.key.pem", "ssl.key.location", "KAFKA_SSL_KEY"),
        ] {
            match pem {
                None => {}
                Some(Pem::Inline(text)) => {
                    client.set(inline, text.expose());
                }
                Some(Pem::File(path)) => {
                    if !path.is_file() {
                        return Err(invalid(format!(
                            "{variable}: {} is not a readable file; give a PEM file path or the PEM text itself",
                            path.display()
                        )));
                    }
                    client.set(file, path.display().to_string());
                }
            }
        }
    }
    Ok(client)
}

fn create_producer(client: &ClientConfig) -> Result<FutureProducer, SinkError> {
    client.create().map_err(|e| {
        let mut e = classify_error(Op::Metadata, &e);
        if e.kind() != ErrorKind::ConfigInvalid {
            e = error(
                ErrorKind::ConfigInvalid,
                format!("cannot create the Kafka producer: {}", e.message()),
            );
        }
        e
    })
}

/// The `origin` header of `evolution-v2` records: the producer Evolution API names (its
/// `ChannelStartupService`).
const EVOLUTION_ORIGIN: &str = "ChannelStartupService";

/// The record of one delivery (borrowing its topic, key and payload).
fn record<'a>(
    target: &'a KafkaTarget,
    payload: &'a [u8],
    headers: &[(&str, &str)],
) -> FutureRecord<'a, str, [u8]> {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (key, value) in headers {
        owned = owned.insert(Header {
            key,
            value: Some(*value),
        });
    }
    FutureRecord::to(&target.topic)
        .key(target.key.as_str())
        .payload(payload)
        .headers(owned)
}

#[async_trait]
impl EventSink for KafkaSink {
    fn channel(&self) -> Channel {
        Channel::Kafka
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(MAX_BATCH)
            .ordered()
            .with_max_in_flight_per_key(if self.config.idempotence {
                MAX_IN_FLIGHT_IDEMPOTENT
            } else {
                1
            })
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(self.config.max_payload_bytes)
    }

    /// Produces every item and waits for the brokers' acknowledgements (`acks=all`). Items of a
    /// topic that cannot be used fail alone; after an item fails retryably to be queued, the later
    /// items of its topic and key are not sent (reported "not sent", retryable), so nothing
    /// overtakes it.
    /// Overlapping sends queue their records in the order they were started.
    async fn send(&self, batch: &[Delivery]) -> Result<DeliveryReport, SinkError> {
        let producer = self.producer()?;
        let mut report = DeliveryReport::success();
        if batch.is_empty() {
            return Ok(report);
        }
        // The first await of a send: its place in the queue is taken when it is first polled.
        // Only needed when overlapping sends of a key are allowed (the idempotent producer).
        let queueing = if self.config.idempotence {
            Some(self.queueing.lock().await)
        } else {
            None
        };
        let mut targets: Vec<Option<&KafkaTarget>> = Vec::with_capacity(batch.len());
        for (index, delivery) in batch.iter().enumerate() {
            let Some(target) = delivery.destination.kafka() else {
                report.fail(index, delivery.destination.mismatch(Channel::Kafka));
                targets.push(None);
                continue;
            };
            let size = delivery.payload().len();
            if size > self.config.max_payload_bytes {
                report.fail(
                    index,
                    error(
                        ErrorKind::Rejected,
                        format!(
                            "the event is {size} bytes and the Kafka limit is {} bytes (librdkafka \
                             message.max.bytes less the key and headers); it cannot be sent to topic {:?}",
                            self.config.max_payload_bytes, target.topic
                        ),
                    ),
                );
                targets.push(None);
            } else {
                targets.push(Some(target));
            }
        }

        let topics: Vec<&str> = {
            let mut seen = HashSet::new();
            targets
                .iter()
                .flatten()
                .map(|t| t.topic.as_str())
                .filter(|t| seen.insert(*t))
                .collect()
        };
        let unusable = self.ensure_topics(&topics).await?;

        let deadline = Instant::now() + self.config.request_timeout;
        let mut hold = HoldBack::new(Channel::Kafka, "topic and key");
        let mut pending: Vec<(usize, &KafkaTarget, DeliveryFuture)> = Vec::with_capacity(batch.len());
        for (index, (delivery, target)) in batch.iter().zip(&targets).enumerate() {
            let Some(target) = target else { continue };
            if let Some(e) = unusable.get(&target.topic) {
                report.fail(index, e.duplicate());
                continue;
            }
            let key = (target.topic.as_str(), target.key.as_str());
            if let Err(not_sent) = hold.check(&key) {
                report.fail(index, not_sent);
                continue;
            }
            // CloudEvents' binary mode: the event's data as the value, the attributes as headers.
            let binary = delivery.binary_attributes();
            let payload = match binary {
                Some(_) => delivery.envelope.data().get().as_bytes().to_vec().into(),
                None => delivery.payload(),
            };
            let id = delivery.envelope.id().to_string();
            let trace: Vec<(&str, String)> = delivery.envelope.trace_headers().collect();
            let timestamp =
                (delivery.profile == NamingProfile::EvolutionV2).then(|| delivery.envelope.date_time_text());
            let mut headers = vec![
                ("event", delivery.profile.payload_event(delivery.envelope.kind())),
                ("instance", delivery.envelope.instance().as_str()),
                ("id", id.as_str()),
            ];
            headers.extend(trace.iter().map(|(name, value)| (*name, value.as_str())));
            // CloudEvents' Kafka binding: `content-type`, and in binary mode each attribute as a
            // `ce_` header.
            let cloudevent: Vec<(String, String)> = binary
                .unwrap_or_default()
                .into_iter()
                .map(|(name, value)| (format!("ce_{name}"), value))
                .collect();
            if delivery.envelope.format().is_cloudevents() {
                headers.push(("content-type", delivery.binding_content_type()));
                headers.extend(
                    cloudevent
                        .iter()
                        .map(|(name, value)| (name.as_str(), value.as_str())),
                );
            }
            if let Some(timestamp) = &timestamp {
                // Evolution API's other two headers: the producer's name and the `date_time`.
                headers.extend([("origin", EVOLUTION_ORIGIN), ("timestamp", timestamp.as_str())]);
            }
            let queued = loop {
                match producer.send_result(record(target, &payload, &headers)) {
                    Ok(future) => break Ok(future),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                        if Instant::now() < deadline =>
                    {
                        tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                    }
                    Err((e, _)) => break Err(e),
                }
            };
            match queued {
                Ok(future) => pending.push((index, target, future)),
                Err(e) => {
                    let e = classify_error(Op::Produce(&target.topic), &e);
                    hold.failed(key, &e);
                    report.fail(index, e);
                }
            }
        }

        drop(queueing);

        let mut any_failed = false;
        let mut state_error = None;
        for (index, target, future) in pending {
            let failure = match future.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => e,
                Err(_canceled) => KafkaError::Canceled,
            };
            any_failed = true;
            if let Some(
                code @ (RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::InvalidProducerIdMapping
                | RDKafkaErrorCode::OutOfOrderSequenceNumber),
            ) = code_of(&failure)
            {
                state_error = Some(code);
            }
            if matches!(
                code_of(&failure),
                Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
            ) {
                // Deleted since it was checked: check (and create) it again next time.
                self.known().remove(&target.topic);
            }
            report.fail(index, classify_error(Op::Produce(&target.topic), &failure));
        }
        if any_failed {
            self.recover_producer(&producer, state_error);
        }
        Ok(report)
    }

    /// Reads the cluster metadata (every broker, no topic), at most 10 s.
    async fn health_check(&self) -> Result<(), SinkError> {
        let producer = self.producer()?;
        let timeout = self.config.request_timeout.min(METADATA_TIMEOUT);
        let brokers = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| error(ErrorKind::Unexpected, format!("health check: {e}")))?
        .map_err(|e| classify_error(Op::Metadata, &e))?;
        if brokers == 0 {
            return Err(error(
                ErrorKind::Unavailable,
                "the cluster metadata lists no broker",
            ));
        }
        // Topics whose deliveries went dead because they do not exist: still missing?
        let refused: Vec<String> = self.refused().iter().cloned().collect();
        if refused.is_empty() {
            return Ok(());
        }
        let producer = self.producer()?;
        let mut missing = Vec::new();
        for topic in refused {
            if lookup(&producer, &topic, timeout).await? {
                self.refused().remove(&topic);
            } else {
                missing.push(topic);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        Err(error(
            ErrorKind::ConfigInvalid,
            format!(
                "topics {missing:?} do not exist, so their deliveries are dead: KAFKA_AUTO_CREATE_TOPICS=false \
                 and the broker does not create topics; create them, or set KAFKA_AUTO_CREATE_TOPICS=true, then \
                 redrive the dead deliveries"
            ),
        ))
    }

    /// Waits until every queued record is acknowledged (at most the request timeout).
    async fn flush(&self) -> Result<(), SinkError> {
        let producer = self.producer()?;
        flush(producer, self.config.request_timeout).await
    }

    /// Flushes, then drops the producer and the admin client. Idempotent.
    async fn shutdown(&self) -> Result<(), SinkError> {
        let Some(state) = self.lock().take() else {
            return Ok(());
        };
        drop(state.admin);
        self.known().clear();
        flush(state.producer, self.config.request_timeout).await
    }

    /// Creates the topics of `destinations` that do not exist yet, when `auto_create_topics` is
    /// on (nothing otherwise).
    async fn prepare(&self, destinations: &[Destination]) -> Result<(), SinkError> {
        if !self.config.auto_create_topics {
            return Ok(());
        }
        let topics: Vec<&str> = destinations
            .iter()
            .filter_map(Destination::kafka)
            .map(|t| t.topic.as_str())
            .collect();
        match self.ensure_topics(&topics).await?.into_values().next() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

async fn flush(producer: FutureProducer, timeout: Duration) -> Result<(), SinkError> {
    tokio::task::spawn_blocking(move || producer.flush(timeout))
        .await
        .map_err(|e| error(ErrorKind::Unexpected, format!("flush: {e}")))?
        .map_err(|e| classify_error(Op::Flush, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_checked_before_connecting() {
        let e = KafkaSink::new(KafkaConfig::new(Vec::<String>::new())).unwrap_err();
        assert!(e.message().contains("KAFKA_BROKERS"), "{e}");
        let e = KafkaSink::new(KafkaConfig {
            num_partitions: 0,
            ..KafkaConfig::new(["127.0.0.1:9092"])
        })
        .unwrap_err();
        assert!(e.message().contains("KAFKA_NUM_PARTITIONS=0"), "{e}");
        let e = KafkaSink::new(KafkaConfig {
            ssl: Some(crate::KafkaSsl {
                verify: true,
                ca: Some(Pem::parse("/nonexistent/ca.pem")),
                ..crate::KafkaSsl::default()
            }),
            ..KafkaConfig::new(["127.0.0.1:9092"])
        })
        .unwrap_err();
        assert!(e.message().contains("KAFKA_SSL_CA"), "{e}");
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        let sink = KafkaSink::new(KafkaConfig::new(["127.0.0.1:9092"])).unwrap();
        assert_eq!(sink.capabilities().max_batch_size, MAX_BATCH);
        assert!(sink.capabilities().ordered);
        assert_eq!(
            sink.capabilities().max_in_flight_per_key,
            5,
            "the idempotent producer keeps order with 5 requests in flight"
        );
        let sink = KafkaSink::new(KafkaConfig {
            idempotence: false,
            ..KafkaConfig::new(["127.0.0.1:9092"])
        })
        .unwrap();
        assert_eq!(sink.capabilities().max_in_flight_per_key, 1);
    }
}
