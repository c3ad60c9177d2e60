//! `GET /metrics`: Prometheus text exposition.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use evolution_sinks::LATENCY_BUCKETS;

use crate::app::App;

/// Appends one formatted line (writing to a `String` cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(&format!($($arg)*));
        $out.push('\n');
    }};
}

pub(crate) async fn render(State(app): State<Arc<App>>) -> Response {
    let mut out = String::new();
    let accepted = app.accepted.load(Ordering::Relaxed);
    w!(
        out,
        "# HELP evolution_events_accepted_total Events accepted (durably stored)."
    );
    w!(out, "# TYPE evolution_events_accepted_total counter");
    w!(out, "evolution_events_accepted_total {accepted}");
    let mut channels: Vec<_> = app.dispatcher.channels().collect();
    channels.sort();
    let counters: Vec<_> = channels
        .iter()
        .filter_map(|c| app.dispatcher.counters(*c).map(|k| (*c, k)))
        .collect();
    for (name, help, get) in [
        (
            "delivered",
            "Deliveries that reached the channel.",
            (|k: &evolution_sinks::ChannelCounters| k.delivered) as fn(&_) -> u64,
        ),
        ("failed_attempts", "Failed delivery attempts.", |k| {
            k.failed_attempts
        }),
        ("retried", "Failed attempts scheduled for a retry.", |k| k.retried),
        ("dead", "Deliveries given up (dead letters).", |k| k.dead),
    ] {
        w!(out, "# HELP evolution_deliveries_{name}_total {help}");
        w!(out, "# TYPE evolution_deliveries_{name}_total counter");
        for (channel, k) in &counters {
            w!(
                out,
                "evolution_deliveries_{name}_total{{channel=\"{channel}\"}} {}",
                get(k)
            );
        }
    }
    w!(out, "# HELP evolution_queue_depth Deliveries waiting, by state.");
    w!(out, "# TYPE evolution_queue_depth gauge");
    for channel in &channels {
        if let Ok(stats) = app.outbox.stats(*channel).await {
            for (state, n) in [
                ("pending", stats.pending),
                ("in_flight", stats.in_flight),
                ("dead", stats.dead),
            ] {
                w!(
                    out,
                    "evolution_queue_depth{{channel=\"{channel}\",state=\"{state}\"}} {n}"
                );
            }
        }
    }
    w!(
        out,
        "# HELP evolution_delivery_latency_seconds Time from acceptance of an event to its delivery."
    );
    w!(out, "# TYPE evolution_delivery_latency_seconds histogram");
    for (channel, k) in &counters {
        for (bound, count) in LATENCY_BUCKETS.iter().zip(k.latency.buckets) {
            w!(
                out,
                "evolution_delivery_latency_seconds_bucket{{channel=\"{channel}\",le=\"{bound}\"}} {count}"
            );
        }
        w!(
            out,
            "evolution_delivery_latency_seconds_bucket{{channel=\"{channel}\",le=\"+Inf\"}} {}",
            k.latency.count
        );
        w!(
            out,
            "evolution_delivery_latency_seconds_sum{{channel=\"{channel}\"}} {}",
            k.latency.sum_seconds
        );
        w!(
            out,
            "evolution_delivery_latency_seconds_count{{channel=\"{channel}\"}} {}",
            k.latency.count
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
