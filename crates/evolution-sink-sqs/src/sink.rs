//! [`SqsSink`]: the [`EventSink`] of the SQS channel.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use evolution_events::{
    Capabilities, Channel, Delivery, DeliveryReport, Destination, ErrorKind, EventSink, Retry, SinkError,
    SqsTarget, async_trait, group_by_key, send_in_order,
};
use futures_util::future::join_all;

use crate::classify::{Failure, Op, classify, classify_code, error};
use crate::config::SqsConfig;

/// The channel name of this sink (`sqs`).
pub const NAME: &str = "sqs";

/// The largest batch `send` takes (the items of one queue go in `SendMessageBatch` calls of at
/// most [`ENTRIES_PER_CALL`]).
const MAX_BATCH: usize = 100;

/// SQS's limit of entries in one `SendMessageBatch`.
pub(crate) const ENTRIES_PER_CALL: usize = 10;

/// Bytes of the message size limit kept for the three message attributes (names, types and
/// values: at most ~170 bytes with a 64-character instance name).
pub(crate) const ATTRIBUTE_RESERVE: usize = 256;

/// The smallest payload limit accepted.
const MIN_PAYLOAD_BYTES: usize = 2048;

/// Sends events as SQS messages (see the [crate documentation](crate) for the wire format, queue
/// provisioning and the classification of errors).
///
/// The AWS client is built on first use (loading credentials may need the network); its own
/// retries are off (the dispatcher retries). Queue URLs are resolved through the API once per
/// queue and cached.
pub struct SqsSink {
    config: SqsConfig,
    state: Mutex<State>,
    /// Serializes building the client.
    init: tokio::sync::Mutex<()>,
    /// Queue name → URL, as `GetQueueUrl` / `CreateQueue` answered.
    urls: Mutex<HashMap<String, String>>,
}

#[derive(Debug)]
enum State {
    Unbuilt,
    Ready(Client),
    Closed,
}

impl fmt::Debug for SqsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `SqsConfig`'s `Debug` redacts the secret access key.
        f.debug_struct("SqsSink")
            .field("config", &self.config)
            .field("closed", &matches!(*self.lock(), State::Closed))
            .finish_non_exhaustive()
    }
}

/// One item ready to go: its index in the batch and its entry (without the batch id).
struct Item {
    index: usize,
    entry: SendMessageBatchRequestEntry,
    size: usize,
}

impl SqsSink {
    /// A sink with these settings (nothing is connected here).
    ///
    /// # Errors
    /// `ConfigInvalid` when the region is empty, the endpoint is not an http(s) URL, the payload
    /// limit is too small or above SQS's 1 MiB, a timeout is zero, or the key id is given without
    /// its secret.
    pub fn new(config: SqsConfig) -> Result<Self, SinkError> {
        let invalid = |message: String| error(ErrorKind::ConfigInvalid, message);
        if config.region.trim().is_empty() {
            return Err(invalid(
                "no AWS region: set SQS_REGION (e.g. us-east-1)".to_owned(),
            ));
        }
        if let Some(endpoint) = &config.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(invalid(format!(
                "SQS_ENDPOINT={endpoint:?} must be an http:// or https:// URL"
            )));
        }
        if !(MIN_PAYLOAD_BYTES..=SqsConfig::SQS_LIMIT_BYTES).contains(&config.max_payload_bytes) {
            return Err(invalid(format!(
                "SQS_MAX_PAYLOAD_SIZE={} must be between {MIN_PAYLOAD_BYTES} and {} bytes (SQS's limit)",
                config.max_payload_bytes,
                SqsConfig::SQS_LIMIT_BYTES
            )));
        }
        if config.connect_timeout.is_zero() || config.operation_timeout.is_zero() {
            return Err(invalid(
                "the SQS connect and operation timeouts must be longer than zero".to_owned(),
            ));
        }
        if let Some(credentials) = &config.credentials
            && (credentials.access_key_id.trim().is_empty() || credentials.secret_access_key.is_empty())
        {
            return Err(invalid(
                "SQS_ACCESS_KEY_ID and SQS_SECRET_ACCESS_KEY go together: set both, or neither (the AWS \
                 default credential chain)"
                    .to_owned(),
            ));
        }
        Ok(Self {
            config,
            state: Mutex::new(State::Unbuilt),
            init: tokio::sync::Mutex::new(()),
            urls: Mutex::new(HashMap::new()),
        })
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &SqsConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn urls(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.urls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed() -> SinkError {
        error(ErrorKind::Closed, "the SQS sink is shut down")
    }

    /// The largest event payload this sink sends: `max_payload_bytes` less 256 bytes kept for the
    /// message attributes. A larger one fails alone as `Rejected`.
    #[must_use]
    pub fn body_limit(&self) -> usize {
        self.config.max_payload_bytes - ATTRIBUTE_RESERVE
    }

    /// The client, built on first use, or `Closed`.
    async fn client(&self) -> Result<Client, SinkError> {
        match &*self.lock() {
            State::Ready(client) => return Ok(client.clone()),
            State::Closed => return Err(Self::closed()),
            State::Unbuilt => {}
        }
        let _building = self.init.lock().await;
        if let State::Ready(client) = &*self.lock() {
            return Ok(client.clone());
        }
        let client = build_client(&self.config).await;
        let mut state = self.lock();
        match &*state {
            State::Closed => Err(Self::closed()),
            _ => {
                *state = State::Ready(client.clone());
                Ok(client)
            }
        }
    }

    /// The URL of `queue`: cached, else `GetQueueUrl`, else (the queue does not exist) `CreateQueue`.
    async fn resolve(&self, client: &Client, queue: &str, fifo: bool) -> Result<String, SinkError> {
        if let Some(url) = self.urls().get(queue) {
            return Ok(url.clone());
        }
        let url = match self.get_url(client, queue).await {
            Ok(url) => url,
            Err(failure) if failure.is_missing_queue() => self.create(client, queue, fifo).await?,
            Err(failure) => return Err(classify(Op::Resolve(queue), &failure)),
        };
        self.urls().insert(queue.to_owned(), url.clone());
        Ok(url)
    }

    async fn get_url(&self, client: &Client, queue: &str) -> Result<String, Failure> {
        let mut request = client.get_queue_url().queue_name(queue);
        if let Some(account) = &self.config.account_id {
            request = request.queue_owner_aws_account_id(account);
        }
        let output = request.send().await.map_err(|e| Failure::of(&e))?;
        output
            .queue_url
            .ok_or_else(|| Failure::Response("GetQueueUrl answered without a URL".to_owned()))
    }

    /// Creates `queue` (FIFO when `fifo`; messages up to the payload limit). A queue that exists
    /// with other attributes is used as it is.
    async fn create(&self, client: &Client, queue: &str, fifo: bool) -> Result<String, SinkError> {
        let mut request = client.create_queue().queue_name(queue).attributes(
            QueueAttributeName::MaximumMessageSize,
            self.config.max_payload_bytes.to_string(),
        );
        if fifo {
            request = request.attributes(QueueAttributeName::FifoQueue, "true");
        }
        match request.send().await {
            Ok(output) => {
                tracing::info!(sink = NAME, %queue, fifo, "queue created");
                output.queue_url.ok_or_else(|| {
                    error(
                        ErrorKind::Unavailable,
                        format!("creating queue {queue:?}: no URL in the answer"),
                    )
                })
            }
            Err(e) => {
                let failure = Failure::of(&e);
                match failure.code() {
                    // Created meanwhile with other attributes, or by someone else: use it.
                    Some(
                        "QueueAlreadyExists" | "QueueNameExists" | "AWS.SimpleQueueService.QueueNameExists",
                    ) => self
                        .get_url(client, queue)
                        .await
                        .map_err(|f| classify(Op::Resolve(queue), &f)),
                    _ => Err(classify(Op::Create(queue), &failure)),
                }
            }
        }
    }

    /// Forgets a queue's URL (it no longer exists).
    fn forget(&self, queue: &str) {
        self.urls().remove(queue);
    }

    /// The entry of one delivery, or why it cannot be sent.
    fn entry(
        &self,
        delivery: &Delivery,
        target: &SqsTarget,
    ) -> Result<(SendMessageBatchRequestEntry, usize), SinkError> {
        let payload = delivery.payload();
        if payload.len() > self.body_limit() {
            return Err(error(
                ErrorKind::Rejected,
                format!(
                    "the event is {} bytes and SQS_MAX_PAYLOAD_SIZE allows {} (less {ATTRIBUTE_RESERVE} for the \
                     message attributes): SQS would refuse it, so it is not sent to queue {:?}",
                    payload.len(),
                    self.config.max_payload_bytes,
                    target.queue
                ),
            ));
        }
        let body = std::str::from_utf8(&payload)
            .map_err(|_| error(ErrorKind::Rejected, "the payload is not UTF-8 text"))?
            .to_owned();
        let id = delivery.envelope.id().to_string();
        let trace: Vec<(&str, String)> = delivery.envelope.trace_headers().collect();
        let mut attributes = vec![
            ("event", delivery.profile.payload_event(delivery.envelope.kind())),
            ("instance", delivery.envelope.instance().as_str()),
            ("id", id.as_str()),
        ];
        attributes.extend(trace.iter().map(|(name, value)| (*name, value.as_str())));
        let mut size = body.len();
        let mut entry = SendMessageBatchRequestEntry::builder().message_body(body);
        for (name, value) in attributes {
            size += name.len() + "String".len() + value.len();
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| error(ErrorKind::Unexpected, format!("message attribute {name}: {e}")))?;
            entry = entry.message_attributes(name, value);
        }
        if target.fifo {
            let group = target
                .group_id
                .clone()
                .unwrap_or_else(|| delivery.envelope.instance().as_str().to_owned());
            entry = entry.message_group_id(group).message_deduplication_id(id);
        }
        // The batch id is set per call.
        Ok((
            entry
                .id("0")
                .build()
                .map_err(|e| error(ErrorKind::Unexpected, format!("message entry: {e}")))?,
            size,
        ))
    }

    /// Sends the items of one queue in calls of at most 10 entries and the payload limit,
    /// in order, stopping after the first retryable failure. Returns the failed items.
    async fn send_queue(
        &self,
        client: &Client,
        queue: &str,
        fifo: bool,
        items: Vec<Item>,
    ) -> Vec<(usize, SinkError)> {
        // Resolved (and cached) before the first call: a queue that cannot be used fails every
        // item at once.
        if let Err(e) = self.resolve(client, queue, fifo).await {
            return items
                .into_iter()
                .map(|item| (item.index, e.duplicate()))
                .collect();
        }
        let chunks = chunks(items, self.config.max_payload_bytes);
        let units = chunks.iter().map(Vec::as_slice);
        send_in_order(
            Channel::Sqs,
            "queue",
            units,
            |item| item.index,
            |chunk| self.send_call(client, queue, fifo, chunk),
        )
        .await
    }

    /// One `SendMessageBatch` call of `chunk` to `queue`; the failed items. A queue that no
    /// longer exists is created again, once, and the call repeated.
    async fn send_call(
        &self,
        client: &Client,
        queue: &str,
        fifo: bool,
        chunk: &[Item],
    ) -> Vec<(usize, SinkError)> {
        let failed_all = |e: &SinkError| chunk.iter().map(|item| (item.index, e.duplicate())).collect();
        let mut url = match self.resolve(client, queue, fifo).await {
            Ok(url) => url,
            Err(e) => return failed_all(&e),
        };
        let mut outcome = send_chunk(client, &url, chunk).await;
        if let Err(failure) = &outcome
            && failure.is_missing_queue()
        {
            // Deleted, or a server that lost its queues on restart: create it again, once.
            self.forget(queue);
            tracing::warn!(sink = NAME, %queue, "the queue does not exist any more; creating it again");
            url = match self.resolve(client, queue, fifo).await {
                Ok(url) => url,
                Err(e) => return failed_all(&e),
            };
            outcome = send_chunk(client, &url, chunk).await;
        }
        match outcome {
            Err(failure) => {
                if failure.is_missing_queue() {
                    self.forget(queue);
                }
                let e = classify(Op::Send(queue), &failure);
                if e.kind() == ErrorKind::Rejected && chunk.len() > 1 {
                    // SQS refused the whole call for one entry (a message over the queue's own
                    // size limit, say): send them one by one so only that one fails.
                    self.send_one_by_one(client, queue, &url, chunk).await
                } else {
                    failed_all(&e)
                }
            }
            // A refused entry is final (dead); after a retryable one the rest is held back.
            Ok(output) => entry_failures(queue, chunk, &output),
        }
    }

    /// Sends each item of `chunk` in a call of its own, in order, until one fails retryably (the
    /// rest are then "not sent").
    async fn send_one_by_one(
        &self,
        client: &Client,
        queue: &str,
        url: &str,
        chunk: &[Item],
    ) -> Vec<(usize, SinkError)> {
        send_in_order(
            Channel::Sqs,
            "queue",
            chunk.chunks(1),
            |item| item.index,
            |single| async move {
                match send_chunk(client, url, single).await {
                    Ok(output) => entry_failures(queue, single, &output),
                    Err(failure) => {
                        let e = classify(Op::Send(queue), &failure);
                        single.iter().map(|item| (item.index, e.duplicate())).collect()
                    }
                }
            },
        )
        .await
    }
}

/// Splits `items` into calls of at most [`ENTRIES_PER_CALL`] entries whose sizes add up to at
/// most `max_bytes` (SQS's limit of a whole batch), keeping their order.
fn chunks(items: Vec<Item>, max_bytes: usize) -> Vec<Vec<Item>> {
    let mut out: Vec<Vec<Item>> = Vec::new();
    let mut bytes = 0;
    for item in items {
        match out.last_mut() {
            Some(last) if last.len() < ENTRIES_PER_CALL && bytes + item.size <= max_bytes => {
                bytes += item.size;
                last.push(item);
            }
            _ => {
                bytes = item.size;
                out.push(vec![item]);
            }
        }
    }
    out
}

/// One `SendMessageBatch` call; entry ids are the positions in `chunk`.
async fn send_chunk(client: &Client, url: &str, chunk: &[Item]) -> Result<SendMessageBatchOutput, Failure> {
    let entries: Vec<SendMessageBatchRequestEntry> = chunk
        .iter()
        .enumerate()
        .map(|(position, item)| {
            let mut entry = item.entry.clone();
            entry.id = position.to_string();
            entry
        })
        .collect();
    client
        .send_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| Failure::of(&e))
}

/// The items of `chunk` that the answer reports failed (or does not mention).
fn entry_failures(queue: &str, chunk: &[Item], output: &SendMessageBatchOutput) -> Vec<(usize, SinkError)> {
    let mut failures = Vec::new();
    let mut settled = vec![false; chunk.len()];
    for ok in output.successful() {
        if let Some(slot) = ok.id().parse::<usize>().ok().and_then(|p| settled.get_mut(p)) {
            *slot = true;
        }
    }
    for failed in output.failed() {
        let Some(position) = failed.id().parse::<usize>().ok().filter(|p| *p < chunk.len()) else {
            continue;
        };
        settled[position] = true;
        let e = classify_code(
            Op::Send(queue),
            Some(failed.code()),
            failed.message(),
            Some(failed.sender_fault()),
        );
        failures.push((chunk[position].index, e));
    }
    for (position, done) in settled.iter().enumerate() {
        if !done {
            failures.push((
                chunk[position].index,
                error(
                    ErrorKind::Unexpected,
                    format!("sending to queue {queue:?}: the answer does not mention this message"),
                )
                .with_retry(Retry::Backoff),
            ));
        }
    }
    failures
}

/// The AWS client: the region, the static credentials or the default chain, the endpoint
/// override; no SDK retries (the dispatcher retries), the configured timeouts.
async fn build_client(config: &SqsConfig) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(config.region.trim().to_owned()))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(config.connect_timeout)
                .operation_timeout(config.operation_timeout)
                .build(),
        );
    if let Some(credentials) = &config.credentials {
        loader = loader.credentials_provider(Credentials::new(
            credentials.access_key_id.trim(),
            credentials.secret_access_key.expose(),
            None,
            None,
            "evolution-events",
        ));
    }
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint.trim());
    }
    Client::new(&loader.load().await)
}

#[async_trait]
impl EventSink for SqsSink {
    fn channel(&self) -> Channel {
        Channel::Sqs
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(MAX_BATCH).ordered()
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(self.body_limit())
    }

    /// Sends every item with `SendMessageBatch`: the items of one queue in order (calls of at
    /// most 10 entries, stopping after a retryable failure), different queues concurrently.
    async fn send(&self, batch: &[Delivery]) -> Result<DeliveryReport, SinkError> {
        let client = self.client().await?;
        let mut report = DeliveryReport::success();
        let mut items = Vec::with_capacity(batch.len());
        for (index, delivery) in batch.iter().enumerate() {
            let Some(target) = delivery.destination.sqs() else {
                report.fail(index, delivery.destination.mismatch(Channel::Sqs));
                continue;
            };
            match self.entry(delivery, target) {
                Ok((entry, size)) => {
                    items.push(((target.queue.as_str(), target.fifo), Item { index, entry, size }))
                }
                Err(e) => report.fail(index, e),
            }
        }
        // Queues in first-seen order, each with its items in batch order, concurrently.
        let sends = group_by_key(items)
            .into_iter()
            .map(|((queue, fifo), items)| self.send_queue(&client, queue, fifo, items));
        for queue_failures in join_all(sends).await {
            report.extend(queue_failures);
        }
        Ok(report)
    }

    /// `ListQueues` (one result): the endpoint answers and accepts the credentials.
    async fn health_check(&self) -> Result<(), SinkError> {
        let client = self.client().await?;
        client
            .list_queues()
            .max_results(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(Op::Health, &Failure::of(&e)))
    }

    /// Nothing is buffered: every `send` waited for SQS's answer.
    async fn flush(&self) -> Result<(), SinkError> {
        match &*self.lock() {
            State::Closed => Err(Self::closed()),
            _ => Ok(()),
        }
    }

    /// Drops the client. Idempotent.
    async fn shutdown(&self) -> Result<(), SinkError> {
        *self.lock() = State::Closed;
        self.urls().clear();
        Ok(())
    }

    /// Resolves (creating when missing) the queues of `destinations`.
    async fn prepare(&self, destinations: &[Destination]) -> Result<(), SinkError> {
        let client = self.client().await?;
        for target in destinations.iter().filter_map(Destination::sqs) {
            self.resolve(&client, &target.queue, target.fifo).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(index: usize, size: usize) -> Item {
        Item {
            index,
            entry: SendMessageBatchRequestEntry::builder()
                .id("0")
                .message_body("x")
                .build()
                .unwrap(),
            size,
        }
    }

    #[test]
    fn chunks_keep_order_and_both_limits() {
        let items: Vec<Item> = (0..23).map(|i| item(i, 10)).collect();
        let sizes: Vec<usize> = chunks(items, 1_000).iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 3]);
        let items = vec![item(0, 600), item(1, 600), item(2, 300), item(3, 100)];
        let chunked = chunks(items, 1_000);
        let indices: Vec<Vec<usize>> = chunked
            .iter()
            .map(|c| c.iter().map(|i| i.index).collect())
            .collect();
        assert_eq!(indices, [vec![0], vec![1, 2, 3]]);
    }

    #[test]
    fn entry_failures_map_to_their_items() {
        use aws_sdk_sqs::types::{BatchResultErrorEntry, SendMessageBatchResultEntry};
        let chunk = vec![item(7, 1), item(8, 1), item(9, 1)];
        let output = SendMessageBatchOutput::builder()
            .successful(
                SendMessageBatchResultEntry::builder()
                    .id("0")
                    .message_id("m0")
                    .md5_of_message_body("x")
                    .build()
                    .unwrap(),
            )
            .failed(
                BatchResultErrorEntry::builder()
                    .id("1")
                    .sender_fault(true)
                    .code("InvalidMessageContents")
                    .message("Invalid characters")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let failures = entry_failures("q", &chunk, &output);
        let described: Vec<(usize, ErrorKind, bool)> = failures
            .iter()
            .map(|(i, e)| (*i, e.kind(), e.is_retryable()))
            .collect();
        // Entry 1 refused by SQS; entry 2 not mentioned at all.
        assert_eq!(
            described,
            [(8, ErrorKind::Rejected, false), (9, ErrorKind::Unexpected, true)]
        );
        assert!(failures[0].1.message().contains("InvalidMessageContents"));
    }

    #[test]
    fn settings_are_checked_by_name() {
        let e = SqsSink::new(SqsConfig::new(" ")).unwrap_err();
        assert!(e.message().contains("SQS_REGION"), "{e}");
        let e = SqsSink::new(SqsConfig {
            endpoint: Some("localhost:5000".into()),
            ..SqsConfig::new("us-east-1")
        })
        .unwrap_err();
        assert!(e.message().contains("SQS_ENDPOINT"), "{e}");
        let e = SqsSink::new(SqsConfig {
            max_payload_bytes: 2 * 1024 * 1024,
            ..SqsConfig::new("us-east-1")
        })
        .unwrap_err();
        assert!(e.message().contains("SQS_MAX_PAYLOAD_SIZE"), "{e}");
        let e = SqsSink::new(SqsConfig {
            credentials: Some(crate::SqsCredentials::new("AKID", "")),
            ..SqsConfig::new("us-east-1")
        })
        .unwrap_err();
        assert!(e.message().contains("SQS_SECRET_ACCESS_KEY"), "{e}");
        let sink = SqsSink::new(SqsConfig::new("us-east-1")).unwrap();
        assert_eq!(sink.body_limit(), SqsConfig::SQS_LIMIT_BYTES - ATTRIBUTE_RESERVE);
    }
}
