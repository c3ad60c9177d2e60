//! What the channel benches of this crate do the same way with the Dispatcher: hand it every
//! event at once, or one at a time at a fixed rate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use evolution_events::{Channel, EventEnvelope, EventKind, InstanceName, InstanceSettings, RawValue};
use evolution_sink_testkit::bench::paced;
use evolution_sinks::{CheckedSettings, Dispatcher};

/// Rounds of a paired comparison: each times the raw loop and the pipeline back to back,
/// alternately first; the ratio reported is [`median`] of the rounds' ratios, so a burst of load
/// from elsewhere on the machine moves it less than one run or a best-of-N.
#[allow(
    dead_code,
    reason = "the Kafka, NATS and emit benches use it, not every bench"
)]
pub(crate) const ROUNDS: usize = 7;

/// The median of `ratios` (the upper one of an even count).
#[allow(
    dead_code,
    reason = "the Kafka, NATS and emit benches use it, not every bench"
)]
pub(crate) fn median(mut ratios: Vec<f64>) -> f64 {
    ratios.sort_by(f64::total_cmp);
    ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `count` events of ~1 KB (`MESSAGES_UPSERT`), of the instances `{tag}-0` …
/// `{tag}-{instances - 1}` in turn.
#[allow(
    dead_code,
    reason = "the broker benches use it, not every bench that includes this module"
)]
pub(crate) fn envelopes(count: usize, instances: usize, tag: &str) -> Vec<EventEnvelope> {
    (0..count)
        .map(|i| {
            let data = format!(
                r#"{{"key":{{"id":"MSG{i:08}"}},"message":{{"conversation":"{}"}}}}"#,
                "x".repeat(800)
            );
            EventEnvelope::new(
                EventKind::MessagesUpsert,
                InstanceName::new(&format!("{tag}-{}", i % instances)).unwrap(),
                RawValue::from_string(data).unwrap(),
            )
        })
        .collect()
}

/// Events per second through `dispatcher`: every event handed over at once ([`emit_all`], global
/// routes) until `channel` delivered them all; then the dispatcher is shut down.
#[allow(
    dead_code,
    reason = "the broker benches use it, not every bench that includes this module"
)]
pub(crate) async fn throughput(
    dispatcher: Dispatcher,
    channel: Channel,
    envelopes: Vec<EventEnvelope>,
) -> f64 {
    let count = envelopes.len();
    let start = Instant::now();
    emit_all(&dispatcher, envelopes, None).await;
    while dispatcher.counters(channel).unwrap().delivered < count as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    dispatcher.shutdown(Duration::from_secs(5)).await;
    count as f64 / elapsed.as_secs_f64()
}

/// `settings` (`None`: the global routes only) checked once for each instance of `envelopes`, as
/// the server checks an instance's settings when they are saved.
pub(crate) fn checked(
    dispatcher: &Dispatcher,
    envelopes: &[EventEnvelope],
    settings: Option<&InstanceSettings>,
) -> HashMap<String, CheckedSettings> {
    let mut checked = HashMap::new();
    for e in envelopes {
        if !checked.contains_key(e.instance().as_str()) {
            let settings = settings.cloned().unwrap_or_default();
            let c = dispatcher.router().check(e.instance(), settings).unwrap();
            checked.insert(e.instance().to_string(), c);
        }
    }
    checked
}

/// Hands every event to `dispatcher`, 500 per `emit_many` call, each with its instance's
/// `settings` checked (`None`: the global routes only).
pub(crate) async fn emit_all(
    dispatcher: &Dispatcher,
    envelopes: Vec<EventEnvelope>,
    settings: Option<&InstanceSettings>,
) {
    let checked = checked(dispatcher, &envelopes, settings);
    let mut envelopes = envelopes.into_iter();
    loop {
        let chunk: Vec<_> = envelopes
            .by_ref()
            .take(500)
            .map(|e| {
                let settings = &checked[e.instance().as_str()];
                (e, settings)
            })
            .collect();
        if chunk.is_empty() {
            return;
        }
        dispatcher.emit_many(chunk).await.unwrap();
    }
}

/// Offers each event to `Dispatcher::emit` at `rate` per second, with its instance's `settings`
/// checked (`None`: the global routes only); returns when each was handed over.
#[allow(dead_code, reason = "the broker benches use it, not the emit bench")]
pub(crate) async fn emit_paced(
    dispatcher: &Dispatcher,
    envelopes: Vec<EventEnvelope>,
    rate: f64,
    settings: Option<&InstanceSettings>,
) -> HashMap<String, Instant> {
    let checked = checked(dispatcher, &envelopes, settings);
    paced(envelopes, rate, async |envelope| {
        let settings = &checked[envelope.instance().as_str()];
        dispatcher.emit(envelope, settings).await.unwrap();
    })
    .await
}
