//! The contract cases: every rule a sink must keep, checked against a real server through a
//! [`ContractFixture`]. Each case panics with a message naming the case and the broken rule.
//!
//! Run them all with [`contract_suite!`](crate::contract_suite); call one directly to debug it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use evolution_events::{
    Delivery, DeliveryId, DeliveryReport, Destination, ErrorKind, EventEnvelope, EventKind, EventSink,
    NamingProfile, SinkError, Uuid,
};
use serde_json::{Value, json};

use crate::contract::{ContractFixture, Observed, report_skip};
use crate::fixtures;

/// The longest a single `send`, `flush` or `shutdown` of a reachable sink may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a call to an unreachable server may take before it must fail.
const UNREACHABLE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long sent messages have to show up at the probe (observe_exactly: without a new one).
const ARRIVAL: Duration = Duration::from_secs(10);
/// How long to keep watching for messages that must not arrive.
const SETTLE: Duration = Duration::from_millis(500);
/// The instance of every event the cases send.
const INSTANCE: &str = "contract-instance";

/// Delivery ids, unique across every case of the process.
static NEXT_DELIVERY_ID: AtomicU64 = AtomicU64::new(1);

fn next_delivery_id() -> DeliveryId {
    NEXT_DELIVERY_ID.fetch_add(1, Ordering::Relaxed)
}

/// An event of the contract instance, with this data and sequence.
fn event(data: &Value, sequence: u64) -> Arc<EventEnvelope> {
    Arc::new(fixtures::raw_envelope(EventKind::MessagesUpsert, INSTANCE, data).with_sequence(sequence))
}

/// A first-attempt delivery of `envelope` to `destination` on the sink's channel.
fn to(sink: &dyn EventSink, destination: &Destination, envelope: Arc<EventEnvelope>) -> Delivery {
    fixtures::delivery(next_delivery_id(), sink.channel(), destination.clone(), envelope)
}

/// `n` deliveries of numbered events (sequence 1..=n) to `destination`.
fn numbered(sink: &dyn EventSink, destination: &Destination, n: usize, label: &str) -> Vec<Delivery> {
    (1..=n as u64)
        .map(|i| to(sink, destination, event(&json!({"case": label, "n": i}), i)))
        .collect()
}

/// Awaits `call`, failing the case if it takes longer than `limit`.
async fn within<T>(case: &str, what: &str, limit: Duration, call: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, call).await {
        Ok(value) => value,
        Err(_) => panic!("contract case `{case}`: {what} did not complete within {limit:?}"),
    }
}

fn describe_failures(failures: &[(usize, SinkError)]) -> String {
    let mut out = String::new();
    for (index, error) in failures {
        out.push_str(&format!("\n  item {index}: {error} (kind {})", error.kind()));
    }
    out
}

/// Says that `case` does not apply to this sink, and why (`not ordered`, …).
fn skipped(case: &str, why: &str) {
    report_skip(format_args!("contract case `{case}`: skipped ({why})"));
}

/// Sends one batch, which must succeed for every item.
async fn send_ok(case: &str, sink: &dyn EventSink, batch: &[Delivery]) {
    let report = send_report(case, sink, batch).await;
    assert!(
        report.is_success(),
        "contract case `{case}`: send of {} item(s) reported failed items:{}",
        batch.len(),
        describe_failures(report.failures())
    );
}

/// Sends one batch, which must not fail as a whole, and returns its report.
async fn send_report(case: &str, sink: &dyn EventSink, batch: &[Delivery]) -> DeliveryReport {
    match within(case, "send", CALL_TIMEOUT, sink.send(batch)).await {
        Ok(report) => report,
        Err(e) => panic!(
            "contract case `{case}`: send of {} item(s) failed as a whole: {e} (kind {})",
            batch.len(),
            e.kind()
        ),
    }
}

/// Sends `deliveries` in successive batches of at most `max_batch_size`, in order.
async fn send_in_batches(case: &str, sink: &dyn EventSink, deliveries: &[Delivery]) {
    let size = sink.capabilities().max_batch_size.max(1);
    for batch in deliveries.chunks(size) {
        send_ok(case, sink, batch).await;
    }
}

fn preview(bytes: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
    if bytes.len() > MAX {
        format!("{text}…")
    } else {
        text
    }
}

/// The observed message carries `delivery`'s id and exactly its payload bytes.
fn assert_same_message(case: &str, observed: &Observed, delivery: &Delivery) {
    let id = delivery.envelope.id();
    assert_eq!(
        observed.id, id,
        "contract case `{case}`: the message on the wire carries id {} instead of the event id {id}",
        observed.id
    );
    let expected = delivery.payload();
    assert!(
        observed.payload == expected,
        "contract case `{case}`: the payload of event {id} changed on the wire ({} bytes sent, {} bytes \
         observed)\n  sent:     {}\n  observed: {}",
        expected.len(),
        observed.payload.len(),
        preview(&expected),
        preview(&observed.payload)
    );
}

/// The observed messages are exactly `sent`: each once, nothing missing, nothing else.
fn assert_exactly(case: &str, observed: &[Observed], sent: &[Delivery]) {
    let expected: HashSet<Uuid> = sent.iter().map(|d| d.envelope.id()).collect();
    let mut counts: HashMap<Uuid, usize> = HashMap::new();
    for message in observed {
        *counts.entry(message.id).or_default() += 1;
    }
    let missing = expected.iter().filter(|id| !counts.contains_key(id)).count();
    let unexpected: Vec<&Uuid> = counts.keys().filter(|id| !expected.contains(id)).collect();
    let duplicated: Vec<(&Uuid, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing == 0 && unexpected.is_empty() && duplicated.is_empty(),
        "contract case `{case}`: sent {} events, observed {} messages: {missing} missing, {} unexpected \
         id(s) {unexpected:?}, {} duplicated id(s) {duplicated:?}",
        expected.len(),
        observed.len(),
        unexpected.len(),
        duplicated.len()
    );
}

/// Observes `destination` until `sent.len()` messages arrived — waiting as long as messages keep
/// arriving, and failing once [`ARRIVAL`] passes without a new one (a slow test server is not a
/// lost message) — keeps watching for [`SETTLE`] in case more arrive, and checks the messages are
/// exactly `sent`.
async fn observe_exactly<F: ContractFixture>(
    case: &str,
    fx: &F,
    destination: &Destination,
    sent: &[Delivery],
) -> Vec<Observed> {
    let wait = ARRIVAL.max(Duration::from_millis(20) * sent.len() as u32);
    let mut arrived = fx.observed(destination, sent.len(), wait).await;
    while arrived.len() < sent.len() {
        let more = fx.observed(destination, sent.len(), ARRIVAL).await;
        let progressed = more.len() > arrived.len();
        arrived = more;
        if !progressed {
            break;
        }
    }
    assert_exactly(case, &arrived, sent);
    let settled = fx.observed(destination, sent.len() + 1, SETTLE).await;
    assert_exactly(case, &settled, sent);
    settled
}

/// **A delivery reaches the wire once, byte for byte, keyed by the event id.** One delivery
/// sent: the report is a success, the probe sees exactly one message, its payload bytes are
/// `delivery.payload()` and its idempotency key is the event id.
pub async fn delivers_one<F: ContractFixture>(fx: &F) {
    const CASE: &str = "delivers_one";
    let sink = fx.sink();
    let destination = fx.destination().await;
    let delivery = to(&*sink, &destination, event(&json!({"case": CASE}), 1));
    send_ok(CASE, &*sink, std::slice::from_ref(&delivery)).await;
    let observed = observe_exactly(CASE, fx, &destination, std::slice::from_ref(&delivery)).await;
    assert_same_message(CASE, &observed[0], &delivery);
}

/// **A full batch is delivered entirely.** One batch of `min(max_batch_size, 50)` items: the
/// report is a success and every item arrives exactly once.
pub async fn delivers_batch<F: ContractFixture>(fx: &F) {
    const CASE: &str = "delivers_batch";
    let sink = fx.sink();
    let destination = fx.destination().await;
    let n = sink.capabilities().max_batch_size.clamp(1, 50);
    let batch = numbered(&*sink, &destination, n, CASE);
    send_ok(CASE, &*sink, &batch).await;
    let observed = observe_exactly(CASE, fx, &destination, &batch).await;
    let by_id: HashMap<Uuid, &Delivery> = batch.iter().map(|d| (d.envelope.id(), d)).collect();
    for message in &observed {
        if let Some(delivery) = by_id.get(&message.id) {
            assert_same_message(CASE, message, delivery);
        }
    }
}

/// **An ordered sink keeps send order.** Only for sinks declaring `ordered` (otherwise
/// `skipped (not ordered)`): 20 events of one instance, sent to one destination in successive
/// batches of at most `max_batch_size`, arrive in the order they were sent.
pub async fn keeps_order<F: ContractFixture>(fx: &F) {
    const CASE: &str = "keeps_order";
    let sink = fx.sink();
    if !sink.capabilities().ordered {
        skipped(CASE, "not ordered");
        return;
    }
    let destination = fx.destination().await;
    let sent = numbered(&*sink, &destination, 20, CASE);
    send_in_batches(CASE, &*sink, &sent).await;
    let observed = observe_exactly(CASE, fx, &destination, &sent).await;
    let sequence_of: HashMap<Uuid, u64> = sent
        .iter()
        .map(|d| (d.envelope.id(), d.envelope.sequence()))
        .collect();
    let arrival: Vec<u64> = observed
        .iter()
        .filter_map(|m| sequence_of.get(&m.id).copied())
        .collect();
    let expected: Vec<u64> = (1..=20).collect();
    assert_eq!(
        arrival, expected,
        "contract case `{CASE}`: events sent in order 1..=20 arrived in a different order (by sequence)"
    );
}

/// **An empty batch is a no-op.** `send(&[])` returns a success report and nothing reaches the
/// wire.
pub async fn empty_batch_is_noop<F: ContractFixture>(fx: &F) {
    const CASE: &str = "empty_batch_is_noop";
    let sink = fx.sink();
    let destination = fx.destination().await;
    let report = send_report(CASE, &*sink, &[]).await;
    assert!(
        report.is_success(),
        "contract case `{CASE}`: an empty batch reported failed items:{}",
        describe_failures(report.failures())
    );
    let observed = fx.observed(&destination, 1, Duration::from_millis(300)).await;
    assert!(
        observed.is_empty(),
        "contract case `{CASE}`: an empty batch put {} message(s) on the wire",
        observed.len()
    );
}

/// **An item over the payload limit is rejected alone.** Only for sinks with a payload limit
/// ([`ContractFixture::max_payload_bytes`]; otherwise `skipped (no payload limit)`): of
/// `[small, too big (limit + 1 KiB), small]` (one batch, or three sends if batches are smaller
/// than 3), the big item is reported failed with `Rejected` in the report — not as an error of
/// the whole send — and the two small ones arrive.
pub async fn oversize_item_rejected_per_item<F: ContractFixture>(fx: &F) {
    const CASE: &str = "oversize_item_rejected_per_item";
    let Some(limit) = fx.max_payload_bytes() else {
        skipped(CASE, "no payload limit");
        return;
    };
    let sink = fx.sink();
    let caps = sink.capabilities();
    let destination = fx.destination().await;
    let small = |n: u64| to(&*sink, &destination, event(&json!({"case": CASE, "n": n}), n));
    let big = to(
        &*sink,
        &destination,
        event(&json!({"case": CASE, "pad": "x".repeat(limit + 1024)}), 2),
    );
    let batch = [small(1), big, small(3)];

    let mut failures: Vec<(usize, SinkError)> = Vec::new();
    if caps.max_batch_size >= 3 {
        failures = send_report(CASE, &*sink, &batch).await.into_failures();
    } else {
        for (index, delivery) in batch.iter().enumerate() {
            let report = send_report(CASE, &*sink, std::slice::from_ref(delivery)).await;
            failures.extend(report.into_failures().into_iter().map(|(_, e)| (index, e)));
        }
    }
    let rejected_alone = matches!(failures.as_slice(), [(1, e)] if e.kind() == ErrorKind::Rejected);
    assert!(
        rejected_alone,
        "contract case `{CASE}`: expected only item 1 ({} bytes, limit {limit}) reported failed with \
         kind rejected; got {} failure(s):{}",
        batch[1].payload().len(),
        failures.len(),
        describe_failures(&failures)
    );
    if let [(_, e)] = failures.as_slice() {
        assert!(
            !e.is_retryable(),
            "contract case `{CASE}`: an oversize item must not be retryable: {e}"
        );
    }
    observe_exactly(CASE, fx, &destination, &[batch[0].clone(), batch[2].clone()]).await;
}

/// **An unreachable server is a retryable failure, reported quickly.** A send through
/// `unreachable_sink()` returns within 15 s an error that is retryable, of kind `Unavailable` or
/// `Timeout` (or a report in which the item failed with a retryable error).
pub async fn unreachable_is_retryable<F: ContractFixture>(fx: &F) {
    const CASE: &str = "unreachable_is_retryable";
    let sink = fx.unreachable_sink().await;
    let destination = fx.unreachable_destination().await;
    let delivery = to(&*sink, &destination, event(&json!({"case": CASE}), 1));
    let outcome = within(
        CASE,
        "send to an unreachable server",
        UNREACHABLE_TIMEOUT,
        sink.send(std::slice::from_ref(&delivery)),
    )
    .await;
    match outcome {
        Err(e) => {
            assert!(
                e.is_retryable() && matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
                "contract case `{CASE}`: an unreachable server must give a retryable unavailable or \
                 timeout error; got {e} (kind {}, retry {:?})",
                e.kind(),
                e.retry()
            );
        }
        Ok(report) => {
            let failures = report.into_failures();
            assert!(
                !failures.is_empty(),
                "contract case `{CASE}`: a send to an unreachable server must fail; it reported success"
            );
            assert!(
                matches!(failures.as_slice(), [(0, e)] if e.is_retryable()),
                "contract case `{CASE}`: a send to an unreachable server must fail (retryably); the \
                 report has {} failure(s):{}",
                failures.len(),
                describe_failures(&failures)
            );
        }
    }
}

/// **Health checks tell up from down.** `sink().health_check()` is `Ok`;
/// `unreachable_sink().health_check()` returns an error within 15 s.
pub async fn health_check_up_and_down<F: ContractFixture>(fx: &F) {
    const CASE: &str = "health_check_up_and_down";
    let sink = fx.sink();
    if let Err(e) = within(CASE, "health_check", CALL_TIMEOUT, sink.health_check()).await {
        panic!("contract case `{CASE}`: health_check of the connected sink failed: {e}");
    }
    let unreachable = fx.unreachable_sink().await;
    let outcome = within(
        CASE,
        "health_check of the unreachable sink",
        UNREACHABLE_TIMEOUT,
        unreachable.health_check(),
    )
    .await;
    assert!(
        outcome.is_err(),
        "contract case `{CASE}`: health_check of a sink pointed where nothing listens returned Ok"
    );
}

/// **After `flush`, everything sent is visible.** 5 deliveries sent, `flush` is `Ok`, then the
/// probe sees all 5.
pub async fn flush_makes_sent_visible<F: ContractFixture>(fx: &F) {
    const CASE: &str = "flush_makes_sent_visible";
    let sink = fx.sink();
    let destination = fx.destination().await;
    let sent = numbered(&*sink, &destination, 5, CASE);
    send_in_batches(CASE, &*sink, &sent).await;
    if let Err(e) = within(CASE, "flush", CALL_TIMEOUT, sink.flush()).await {
        panic!("contract case `{CASE}`: flush failed: {e}");
    }
    observe_exactly(CASE, fx, &destination, &sent).await;
}

/// **`shutdown` is idempotent and closes the sink.** Two `shutdown` calls are both `Ok`; a later
/// `send` fails with kind `Closed`.
pub async fn shutdown_is_idempotent<F: ContractFixture>(fx: &F) {
    const CASE: &str = "shutdown_is_idempotent";
    let sink = fx.sink();
    let destination = fx.destination().await;
    for call in ["first", "second"] {
        if let Err(e) = within(CASE, "shutdown", CALL_TIMEOUT, sink.shutdown()).await {
            panic!("contract case `{CASE}`: the {call} shutdown failed: {e}");
        }
    }
    let delivery = to(&*sink, &destination, event(&json!({"case": CASE}), 1));
    match within(CASE, "send after shutdown", CALL_TIMEOUT, sink.send(&[delivery])).await {
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::Closed,
            "contract case `{CASE}`: a send after shutdown must fail with kind closed; got {e}"
        ),
        Ok(report) => panic!(
            "contract case `{CASE}`: a send after shutdown must fail with kind closed; it returned a \
             report with {} failure(s):{}",
            report.failures().len(),
            describe_failures(report.failures())
        ),
    }
}

/// **Concurrent senders lose and duplicate nothing.** 16 tasks each send 20 deliveries (one per
/// `send`) concurrently through the same `Arc<dyn EventSink>` to one destination: the probe sees
/// exactly the 320 ids sent, each once.
pub async fn concurrent_senders<F: ContractFixture>(fx: &F) {
    const CASE: &str = "concurrent_senders";
    const TASKS: usize = 16;
    const PER_TASK: usize = 20;
    let sink = fx.sink();
    let destination = fx.destination().await;
    let mut sent = Vec::with_capacity(TASKS * PER_TASK);
    let mut tasks = Vec::with_capacity(TASKS);
    for task in 0..TASKS {
        let deliveries: Vec<Delivery> = (1..=PER_TASK as u64)
            .map(|n| {
                let data = json!({"case": CASE, "task": task, "n": n});
                to(&*sink, &destination, event(&data, n))
            })
            .collect();
        sent.extend(deliveries.iter().cloned());
        let sink = Arc::clone(&sink);
        tasks.push(tokio::spawn(async move {
            for delivery in &deliveries {
                send_ok(CASE, &*sink, std::slice::from_ref(delivery)).await;
            }
        }));
    }
    for task in tasks {
        match task.await {
            Ok(()) => {}
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("contract case `{CASE}`: a sender task did not finish: {e}"),
        }
    }
    observe_exactly(CASE, fx, &destination, &sent).await;
}

/// **Payloads travel byte for byte.** Data with emoji (including ZWJ sequences and skin tones),
/// right-to-left Arabic and Hebrew, CJK, escaped quotes, backslashes, newlines and control
/// characters arrives byte-identical; so does a payload near the limit (`limit − 512` bytes when
/// the sink has one, [`ContractFixture::max_payload_bytes`]; 256 KiB otherwise).
pub async fn unicode_and_near_limit_payloads<F: ContractFixture>(fx: &F) {
    const CASE: &str = "unicode_and_near_limit_payloads";
    let sink = fx.sink();
    let destination = fx.destination().await;
    let data = json!({
        "case": CASE,
        "emoji": "olá 👋🏽 👨‍👩‍👧‍👦 🇧🇷 ❤️",
        "arabic": "مرحبا بالعالم",
        "hebrew": "שלום עולם",
        "mixed_direction": "abc \u{202e}مرحبا\u{202c} def",
        "cjk": "你好，世界 こんにちは 안녕하세요",
        "escapes": "quote \" backslash \\ slash / newline \n carriage \r tab \t",
        "controls": "\u{0000}\u{0001}\u{001f}\u{007f}",
        "invisible": "zero\u{200b}width\u{feff}bom",
        "astral": "𝄞 𐍈 🀄",
        "json_in_string": "{\"key\":[1,2,\"three\"]}",
    });
    let unicode = to(&*sink, &destination, event(&data, 1));

    let target = match fx.max_payload_bytes() {
        Some(limit) => limit.saturating_sub(512),
        None => 256 * 1024,
    };
    let padded = |pad: usize| event(&json!({"case": CASE, "pad": "a".repeat(pad)}), 2);
    let overhead = padded(0).payload(NamingProfile::Seed).len();
    let near_limit = to(&*sink, &destination, padded(target.saturating_sub(overhead)));
    assert_eq!(
        near_limit.payload().len(),
        target.max(overhead),
        "contract case `{CASE}`: the testkit built a near-limit payload of the wrong size"
    );

    send_ok(CASE, &*sink, std::slice::from_ref(&unicode)).await;
    send_ok(CASE, &*sink, std::slice::from_ref(&near_limit)).await;
    let sent = [unicode, near_limit];
    let observed = observe_exactly(CASE, fx, &destination, &sent).await;
    for delivery in &sent {
        if let Some(message) = observed.iter().find(|m| m.id == delivery.envelope.id()) {
            assert_same_message(CASE, message, delivery);
        }
    }
}

/// **A redelivery keeps the idempotency key.** The same delivery sent twice (the second as
/// attempt 2, as the dispatcher retries) gives two messages on the wire (at-least-once: sinks do
/// not deduplicate), both carrying the event id and the same payload — or exactly one when the
/// fixture says the server deduplicates by that key
/// ([`ContractFixture::deduplicates_redeliveries`]).
pub async fn same_id_on_redelivery<F: ContractFixture>(fx: &F) {
    const CASE: &str = "same_id_on_redelivery";
    let sink = fx.sink();
    let destination = fx.destination().await;
    let first = to(&*sink, &destination, event(&json!({"case": CASE}), 1));
    let mut again = first.clone();
    again.attempt = 2;
    send_ok(CASE, &*sink, std::slice::from_ref(&first)).await;
    send_ok(CASE, &*sink, std::slice::from_ref(&again)).await;
    let expected = if fx.deduplicates_redeliveries() { 1 } else { 2 };
    let observed = fx.observed(&destination, expected, ARRIVAL).await;
    let observed = if observed.len() == expected {
        fx.observed(&destination, expected + 1, SETTLE).await
    } else {
        observed
    };
    if expected == 1 {
        assert_eq!(
            observed.len(),
            1,
            "contract case `{CASE}`: the server deduplicates by the idempotency key, so one delivery sent \
             twice must give one message"
        );
    } else {
        assert_eq!(
            observed.len(),
            2,
            "contract case `{CASE}`: one delivery sent twice must give two messages on the wire"
        );
    }
    for message in &observed {
        assert_same_message(CASE, message, &first);
    }
}

#[cfg(test)]
mod tests {
    //! The cases catch broken sinks and probes.

    use evolution_events::ErrorKind;

    use super::*;
    use crate::memory::{MemoryFixture, MemorySink};

    #[derive(Clone, Copy, Debug)]
    enum Fault {
        SendFails,
        UnreachableIsUp,
        Duplicates,
        Reverses,
        CorruptsPayload,
        DropsOne,
        ClaimsDedupe,
    }

    struct Broken {
        inner: MemoryFixture,
        fault: Fault,
    }

    impl Broken {
        fn new(fault: Fault) -> Self {
            let inner = MemoryFixture::new();
            if let Fault::SendFails = fault {
                inner.memory().fail_next(1, ErrorKind::Unexpected, None);
            }
            Self { inner, fault }
        }
    }

    #[async_trait::async_trait]
    impl ContractFixture for Broken {
        fn sink(&self) -> Arc<dyn EventSink> {
            self.inner.sink()
        }
        async fn destination(&self) -> Destination {
            self.inner.destination().await
        }
        async fn observed(
            &self,
            destination: &Destination,
            expected: usize,
            within: Duration,
        ) -> Vec<Observed> {
            let mut seen = self.inner.observed(destination, expected, within).await;
            match self.fault {
                Fault::Duplicates => seen.extend(seen.clone()),
                Fault::Reverses => seen.reverse(),
                Fault::CorruptsPayload => {
                    for m in &mut seen {
                        m.payload =
                            bytes::Bytes::from(String::from_utf8_lossy(&m.payload).into_owned() + " ");
                    }
                }
                Fault::DropsOne => {
                    seen.pop();
                }
                Fault::SendFails | Fault::UnreachableIsUp | Fault::ClaimsDedupe => {}
            }
            seen
        }
        fn deduplicates_redeliveries(&self) -> bool {
            matches!(self.fault, Fault::ClaimsDedupe)
        }
        fn max_payload_bytes(&self) -> Option<usize> {
            self.inner.max_payload_bytes()
        }
        async fn unreachable_sink(&self) -> Arc<dyn EventSink> {
            match self.fault {
                Fault::UnreachableIsUp => Arc::new(MemorySink::new(MemoryFixture::CHANNEL)),
                _ => self.inner.unreachable_sink().await,
            }
        }
    }

    #[tokio::test]
    #[should_panic(expected = "failed as a whole")]
    async fn a_failing_send_fails_delivers_one() {
        delivers_one(&Broken::new(Fault::SendFails)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "a send to an unreachable server must fail")]
    async fn a_reachable_unreachable_sink_fails() {
        unreachable_is_retryable(&Broken::new(Fault::UnreachableIsUp)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "health_check of a sink pointed where nothing listens returned Ok")]
    async fn a_healthy_unreachable_sink_fails() {
        health_check_up_and_down(&Broken::new(Fault::UnreachableIsUp)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[should_panic(expected = "duplicated id(s)")]
    async fn duplicates_fail_concurrent_senders() {
        concurrent_senders(&Broken::new(Fault::Duplicates)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "arrived in a different order")]
    async fn reordering_fails_keeps_order() {
        keeps_order(&Broken::new(Fault::Reverses)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "changed on the wire")]
    async fn a_changed_payload_fails_unicode() {
        unicode_and_near_limit_payloads(&Broken::new(Fault::CorruptsPayload)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "1 missing")]
    async fn a_lost_message_fails_flush() {
        flush_makes_sent_visible(&Broken::new(Fault::DropsOne)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "must give two messages")]
    async fn a_deduplicated_redelivery_fails() {
        same_id_on_redelivery(&Broken::new(Fault::DropsOne)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "must give one message")]
    async fn a_duplicate_past_server_deduplication_fails() {
        same_id_on_redelivery(&Broken::new(Fault::ClaimsDedupe)).await;
    }
}
