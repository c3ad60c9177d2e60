//! W3C trace context end to end: a producer's `traceparent` / `tracestate` sent with
//! `POST /events/{instance}` reaches every channel that has headers — the webhook receiver's HTTP
//! headers, RabbitMQ's AMQP headers, NATS headers, Kafka record headers and SQS message
//! attributes — read by independent consumers; the server's OTLP exporter sends its spans to a
//! local OTLP/HTTP receiver (protobuf, decoded with the protocol's own messages), where the
//! ingest span is the child of the producer's span and each delivery attempt a child of the
//! ingest span, and the `traceparent` on the wire names the ingest span.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use common::{API_KEY, Receiver, Server, create_instance, seed_event, service_env, unique};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::json;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);
const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

/// A local OTLP/HTTP endpoint: every span of every `POST /v1/traces` (protobuf), with its
/// resource's `service.name`.
#[derive(Clone, Default)]
struct OtlpReceiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

async fn receive_traces(State(receiver): State<OtlpReceiver>, body: Bytes) -> axum::http::StatusCode {
    let request = ExportTraceServiceRequest::decode(body).unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                receiver.spans.lock().unwrap().push((service.clone(), span));
            }
        }
    }
    axum::http::StatusCode::OK
}

impl OtlpReceiver {
    async fn start() -> (Self, String) {
        let receiver = Self::default();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(receive_traces))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, format!("http://{addr}"))
    }

    /// Waits until `pred` holds for the spans received (or [`WAIT`] passed); returns them.
    async fn wait_until(&self, pred: impl Fn(&[(String, Span)]) -> bool) -> Vec<(String, Span)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if pred(&spans) || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

/// Reads partition 0 of `topic` from the beginning until a record arrives; its headers.
async fn kafka_headers(brokers: &str, topic: &str) -> Option<HashMap<String, String>> {
    let consumer = common::kafka_reader(brokers, topic);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            return Some(common::kafka_headers_of(&message).into_iter().collect());
        }
    }
    None
}

/// Receives one message of the SQS queue `queue` (its URL looked up until it exists); its
/// message attributes.
async fn sqs_attributes(endpoint: &str, queue: &str) -> Option<HashMap<String, String>> {
    let message = common::sqs_next(&common::sqs_client(endpoint).await, queue, WAIT).await?;
    Some(
        message
            .message_attributes()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

fn amqp_header(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[tokio::test]
async fn a_producers_trace_reaches_every_channel_and_the_otlp_receiver_as_one_trace() {
    let (Some(amqp), Some(nats), Some(brokers), Some(sqs)) = (
        service_env("EVOLUTION_TEST_RABBITMQ_URI"),
        service_env("EVOLUTION_TEST_NATS_URL"),
        service_env("EVOLUTION_TEST_KAFKA_BROKERS"),
        service_env("EVOLUTION_TEST_SQS_ENDPOINT"),
    ) else {
        return;
    };
    let tag = unique();
    let instance = format!("trace-{tag}");
    let exchange = format!("evolution-trace-{tag}");
    let (otlp, otlp_url) = OtlpReceiver::start().await;
    let webhook = Receiver::start().await;
    let amqp_got = Arc::new(Mutex::new(Vec::new()));
    let amqp_sink = Arc::clone(&amqp_got);
    let _amqp_connection =
        common::amqp_consumer(&amqp, &exchange, &format!("evolution.{instance}.*"), move |d| {
            amqp_sink.lock().unwrap().push(d);
        })
        .await;
    let nats_client = async_nats::connect(&nats).await.unwrap();
    let mut nats_sub = nats_client
        .subscribe(format!("evolution.{instance}.>"))
        .await
        .unwrap();
    nats_client.flush().await.unwrap();

    let server = Server::start(
        "trace",
        &[
            ("RABBITMQ_ENABLED", "true"),
            ("RABBITMQ_URI", &amqp),
            ("RABBITMQ_EXCHANGE_NAME", &exchange),
            ("NATS_ENABLED", "true"),
            ("NATS_URI", &nats),
            ("KAFKA_ENABLED", "true"),
            ("KAFKA_BROKERS", &brokers),
            ("KAFKA_AUTO_CREATE_TOPICS", "true"),
            ("SQS_ENABLED", "true"),
            ("SQS_ENDPOINT", &sqs),
            ("SQS_REGION", "us-east-1"),
            ("SQS_ACCESS_KEY_ID", "test"),
            ("SQS_SECRET_ACCESS_KEY", "test"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp_url),
            ("OTEL_SERVICE_NAME", "evolution-trace-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let events = json!({"enabled": true, "events": ["MESSAGES_UPSERT"]});
    create_instance(
        &server,
        &instance,
        json!({
            "webhook": {"enabled": true, "url": webhook.url("/hook"), "events": ["MESSAGES_UPSERT"]},
            "rabbitmq": events, "nats": events, "kafka": events, "sqs": events,
        }),
    )
    .await;

    let response = server
        .client
        .post(server.url(&format!("/events/{instance}")))
        .header("apikey", API_KEY)
        .header("traceparent", format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01"))
        .header("tracestate", TRACESTATE)
        .json(&seed_event("MESSAGES_UPSERT"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    let id = body["ids"][0].as_str().unwrap().to_owned();

    // The ingest span: a child of the producer's span, in its trace, exported by the server.
    let spans = otlp
        .wait_until(|spans| {
            spans.iter().any(|(_, s)| s.name.starts_with("create "))
                && spans.iter().filter(|(_, s)| s.name.starts_with("send ")).count() >= 5
        })
        .await;
    let ingest = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == format!("create {instance}") && hex(&s.trace_id) == PRODUCER_TRACE)
        .unwrap_or_else(|| panic!("no ingest span in the producer's trace: {spans:#?}"));
    assert_eq!(
        hex(&ingest.parent_span_id),
        PRODUCER_SPAN,
        "ingest is a child of the producer's span"
    );
    assert_eq!(ingest.kind, SpanKind::Producer as i32);
    assert_eq!(
        attribute(ingest, "messaging.operation.type").as_deref(),
        Some("create")
    );
    assert!(
        spans.iter().all(|(service, _)| service == "evolution-trace-test"),
        "OTEL_SERVICE_NAME"
    );
    let ingest_span = hex(&ingest.span_id);
    let traceparent = format!("00-{PRODUCER_TRACE}-{ingest_span}-01");

    // One send span per channel, each a child of the ingest span.
    let mut systems: Vec<String> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name.starts_with("send "))
        .map(|s| {
            assert_eq!(hex(&s.trace_id), PRODUCER_TRACE, "{s:?}");
            assert_eq!(
                hex(&s.parent_span_id),
                ingest_span,
                "a delivery is a child of its ingest: {s:?}"
            );
            assert_eq!(s.kind, SpanKind::Producer as i32);
            assert_eq!(attribute(s, "messaging.operation.type").as_deref(), Some("send"));
            assert_eq!(attribute(s, "messaging.message.id").as_deref(), Some(id.as_str()));
            assert!(s.start_time_unix_nano <= s.end_time_unix_nano);
            assert!(s.start_time_unix_nano >= ingest.start_time_unix_nano);
            attribute(s, "messaging.system").unwrap()
        })
        .collect();
    systems.sort();
    assert_eq!(systems, ["aws_sqs", "kafka", "nats", "rabbitmq", "webhook"]);

    // What each channel carried.
    let hits = webhook.wait_for(1, WAIT).await;
    assert_eq!(hits[0].headers["traceparent"], traceparent.as_str());
    assert_eq!(hits[0].headers["tracestate"], TRACESTATE);

    let deadline = Instant::now() + WAIT;
    while amqp_got.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let amqp_message = amqp_got.lock().unwrap().pop().unwrap();
    assert_eq!(
        amqp_header(&amqp_message, "traceparent"),
        Some(traceparent.clone())
    );
    assert_eq!(
        amqp_header(&amqp_message, "tracestate").as_deref(),
        Some(TRACESTATE)
    );

    let nats_message = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut nats_sub))
        .await
        .unwrap()
        .unwrap();
    let nats_headers = nats_message.headers.unwrap();
    assert_eq!(
        nats_headers.get("traceparent").map(|v| v.as_str()),
        Some(traceparent.as_str())
    );
    assert_eq!(
        nats_headers.get("tracestate").map(|v| v.as_str()),
        Some(TRACESTATE)
    );

    let kafka = kafka_headers(&brokers, &format!("evolution.{instance}.messages-upsert"))
        .await
        .unwrap();
    assert_eq!(kafka.get("traceparent"), Some(&traceparent));
    assert_eq!(kafka.get("tracestate").map(String::as_str), Some(TRACESTATE));

    let attributes = sqs_attributes(&sqs, &format!("evolution-{instance}-messages-upsert"))
        .await
        .unwrap();
    assert_eq!(attributes.get("traceparent"), Some(&traceparent));
    assert_eq!(attributes.get("tracestate").map(String::as_str), Some(TRACESTATE));

    // Without a traceparent (or with one that is not W3C's), the event starts a trace of its own:
    // a root ingest span, its context on the wire.
    for header in [None, Some("00-not-a-trace-01")] {
        let mut request = server
            .client
            .post(server.url(&format!("/events/{instance}")))
            .header("apikey", API_KEY)
            .json(&seed_event("MESSAGES_UPSERT"));
        if let Some(header) = header {
            request = request.header("traceparent", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 202);
    }
    let hits = webhook.wait_for(3, WAIT).await;
    assert_eq!(hits.len(), 3);
    let mut roots = Vec::new();
    for hit in &hits[1..] {
        let sent = hit.headers["traceparent"].to_str().unwrap().to_owned();
        assert!(hit.headers.get("tracestate").is_none());
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{sent}");
        assert_ne!(parts[1], PRODUCER_TRACE, "a new trace");
        let spans = otlp
            .wait_until(|spans| spans.iter().any(|(_, s)| hex(&s.span_id) == parts[2]))
            .await;
        let root = spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| hex(&s.span_id) == parts[2])
            .unwrap();
        assert_eq!(hex(&root.trace_id), parts[1]);
        assert!(root.parent_span_id.is_empty(), "a root span: {root:?}");
        roots.push(parts[1].to_owned());
    }
    assert_ne!(roots[0], roots[1], "each request a trace of its own");
}

/// An OTLP protocol the server cannot speak stops the start with a message naming the variable.
#[test]
fn an_otlp_protocol_the_server_cannot_speak_is_refused_at_start() {
    let dir = common::temp_dir("trace-grpc");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_evolution-server"))
        .env_clear()
        .env("AUTHENTICATION_API_KEY", API_KEY)
        .env("SERVER_HOST", "127.0.0.1")
        .env("SERVER_PORT", common::free_port().to_string())
        .env("SERVER_DATA_DIR", &dir)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && stderr.contains("http/protobuf"),
        "{stderr}"
    );
}
