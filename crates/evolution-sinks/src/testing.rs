//! Scenarios the channel crates' tests share (feature `test-util`; dev-dependencies only).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use evolution_events::{
    EventEnvelope, EventKind, EventSink, GlobalSettings, InstanceName, RawValue, RetryPolicy, Uuid,
};
use evolution_outbox::{MemoryOutbox, Outbox};
use tokio::time::Instant;

use crate::{ChannelConfig, ChannelCounters, Dispatcher, Router};

/// What [`restart_mid_stream`] saw.
#[derive(Debug)]
pub struct RestartRun {
    /// Every event id the dispatcher accepted, in order.
    pub ids: Vec<Uuid>,
    /// Deliveries done when the restart began.
    pub delivered_at_stop: u64,
    /// The channel's counters once every delivery settled.
    pub counters: ChannelCounters,
}

/// A broker restart in the middle of a stream, at library level: `events` events of ~1 KB
/// (`MESSAGES_UPSERT`, data `{"n": n, "text": …}`, instances `fault-0` … `fault-{instances - 1}`
/// in turn, global routes of `global`) go through a [`Dispatcher`] over a [`MemoryOutbox`] and
/// `sink`, 100 every 20 ms. Once a quarter is delivered, `restart` runs (stop the broker, start it
/// again). Returns once every delivery settled — none dead — and the dispatcher shut down; the
/// caller's consumer then checks what reached the broker.
///
/// # Panics
/// When the stream makes no progress for 60 s before the restart, does not settle 90 s after it,
/// or a delivery went dead: the test fails.
pub async fn restart_mid_stream(
    sink: Arc<dyn EventSink>,
    global: GlobalSettings,
    events: usize,
    instances: usize,
    restart: impl Future<Output = ()>,
) -> RestartRun {
    let channel = sink.channel();
    let outbox = Arc::new(MemoryOutbox::default());
    let config = ChannelConfig {
        // The broker default (retry for ever), with a shorter cap so the test ends sooner.
        retry: RetryPolicy {
            max_delay: Duration::from_secs(2),
            ..RetryPolicy::forever()
        },
        ..ChannelConfig::default_for(channel)
    };
    let router = Router::new(global).unwrap_or_else(|e| panic!("the test's global settings: {e}"));
    let dispatcher = Dispatcher::builder(Arc::clone(&outbox) as Arc<dyn Outbox>, router)
        .sink_with(sink, config)
        .start()
        .unwrap_or_else(|e| panic!("the dispatcher: {e}"));

    let producer = {
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(events);
            for chunk in 0..events.div_ceil(100) {
                let batch: Vec<_> = (chunk * 100..((chunk + 1) * 100).min(events))
                    .map(|n| (fault_event(n, instances), None))
                    .collect();
                let stored = dispatcher
                    .emit_many(batch)
                    .await
                    .unwrap_or_else(|e| panic!("emit: {e}"));
                ids.extend(stored.iter().map(|e| e.id()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ids
        })
    };

    let delivered = || dispatcher.counters(channel).map_or(0, |c| c.delivered);
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered() < (events / 4) as u64 {
        assert!(Instant::now() < deadline, "no progress before the restart");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivered_at_stop = delivered();
    restart.await;

    let ids = producer.await.unwrap_or_else(|e| panic!("the producer: {e}"));
    assert_eq!(ids.len(), events);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let stats = outbox
            .stats(channel)
            .await
            .unwrap_or_else(|e| panic!("outbox stats: {e}"));
        if stats.pending == 0 && stats.in_flight == 0 {
            assert_eq!(stats.dead, 0, "nothing may go to the dead letters");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries still pending 90 s after the restart: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counters = dispatcher
        .counters(channel)
        .unwrap_or_else(|| panic!("no counters for {channel}"));
    dispatcher.shutdown(Duration::from_secs(5)).await;
    RestartRun {
        ids,
        delivered_at_stop,
        counters,
    }
}

fn fault_event(n: usize, instances: usize) -> EventEnvelope {
    let data = RawValue::from_string(format!(r#"{{"n":{n},"text":"{}"}}"#, "x".repeat(900)))
        .unwrap_or_else(|e| panic!("{e}"));
    let instance = InstanceName::new(&format!("fault-{}", n % instances)).unwrap_or_else(|e| panic!("{e}"));
    EventEnvelope::new(EventKind::MessagesUpsert, instance, data)
}
