//! What accepting an event costs before it is stored: routing with settings the router checked
//! when they were saved (`Routing::Checked`, what the server does: nothing validated again, each
//! event kind's deliveries planned once per instance) against settings validated on every event
//! (`Routing::Unchecked`, what it did before), with 16 and with 10 000 instances.
//!
//! `cargo bench -p evolution-sinks --bench emit`. The in-memory outbox and sinks that never
//! answer, so the time is `emit_many`'s: routing, names, ordering keys, the outbox's enqueue.

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use evolution_events::{Capabilities, Channel, EventEnvelope, EventKind, GlobalSettings, InstanceSettings};
use evolution_outbox::MemoryOutbox;
use evolution_sink_testkit::MemorySink;
use evolution_sinks::{Dispatcher, Router, Routing};
use serde_json::json;

const EVENTS: usize = 50_000;

fn dispatcher() -> Dispatcher {
    let mut g = GlobalSettings::default();
    g.rabbitmq.enabled = true;
    g.nats.enabled = true;
    g.sqs.broker.enabled = true;
    let mut builder = Dispatcher::builder(Arc::new(MemoryOutbox::new(10 * EVENTS)), Router::new(g).unwrap());
    for channel in [Channel::Webhook, Channel::Rabbitmq, Channel::Nats, Channel::Sqs] {
        let sink = MemorySink::new(channel);
        sink.set_hang(true);
        builder = builder.sink(Arc::new(sink));
    }
    builder.start().unwrap()
}

/// Events per second handed to `emit_many` (500 per call), checked or not.
async fn rate(envelopes: Vec<EventEnvelope>, settings: &InstanceSettings, checked: bool) -> f64 {
    let d = dispatcher();
    let table = common::checked(&d, &envelopes, Some(settings));
    let count = envelopes.len();
    let mut envelopes = envelopes.into_iter();
    let start = Instant::now();
    loop {
        let chunk: Vec<(EventEnvelope, Routing<'_>)> = envelopes
            .by_ref()
            .take(500)
            .map(|e| {
                let routing = if checked {
                    Routing::Checked(&table[e.instance().as_str()])
                } else {
                    Routing::Unchecked(Some(settings))
                };
                (e, routing)
            })
            .collect();
        if chunk.is_empty() {
            break;
        }
        d.emit_many(chunk).await.unwrap();
    }
    let elapsed = start.elapsed();
    d.shutdown(Duration::from_millis(10)).await;
    count as f64 / elapsed.as_secs_f64()
}

/// The pipeline without I/O: 16 instances' events through the global NATS routes to a sink that
/// answers at once (the NATS sink's capabilities: ordered, batches of 256), from hand-over to the
/// last settle — the most a channel can get from the Dispatcher and the in-memory outbox on this
/// machine.
async fn ceiling(count: usize) -> f64 {
    let mut g = GlobalSettings::default();
    g.nats.enabled = true;
    g.nats.global_enabled = true;
    g.nats.events.insert(EventKind::MessagesUpsert);
    let sink = MemorySink::new(Channel::Nats).with_capabilities(Capabilities::new(256).ordered());
    let d = Dispatcher::builder(Arc::new(MemoryOutbox::new(10 * count)), Router::new(g).unwrap())
        .sink(Arc::new(sink))
        .start()
        .unwrap();
    common::throughput(d, Channel::Nats, common::envelopes(count, 16, "ceiling")).await
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let settings = InstanceSettings::from_json(&json!({
        "webhook": {"enabled": true, "url": "https://receiver.example/hook", "headers": {"authorization": "Bearer t"}},
        "rabbitmq": {"enabled": true},
        "nats": {"enabled": true},
        "sqs": {"enabled": true},
    }))
    .unwrap();
    println!(
        "emit: {EVENTS} events (~1 KB), 4 deliveries each (webhook, RabbitMQ, NATS, SQS), in-memory outbox"
    );
    for instances in [16, 10_000] {
        let mut unchecked_rates = Vec::new();
        let mut checked_rates = Vec::new();
        let mut ratios = Vec::new();
        for round in 0..common::ROUNDS {
            let mut pair = [0.0; 2];
            // Alternately first, so drift on the machine moves both sides alike.
            for checked in if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            } {
                let envelopes = common::envelopes(EVENTS, instances, "emit");
                pair[usize::from(checked)] = runtime.block_on(rate(envelopes, &settings, checked));
            }
            unchecked_rates.push(pair[0]);
            checked_rates.push(pair[1]);
            ratios.push(pair[1] / pair[0]);
        }
        println!(
            "{instances:>6} instances: validated per event {:>9.0}/s, checked when saved {:>9.0}/s: {:.2}× \
             (medians of {} paired rounds)",
            common::median(unchecked_rates),
            common::median(checked_rates),
            common::median(ratios),
            common::ROUNDS,
        );
    }
    let mut rates: Vec<f64> = (0..common::ROUNDS)
        .map(|_| runtime.block_on(ceiling(EVENTS)))
        .collect();
    rates.sort_by(f64::total_cmp);
    println!(
        "pipeline without I/O (emit, claim, a sink that answers at once, settle; 16 instances): {:.0}/s \
         (median of {}; {:.0}–{:.0})",
        common::median(rates.clone()),
        common::ROUNDS,
        rates[0],
        rates[rates.len() - 1]
    );
}
