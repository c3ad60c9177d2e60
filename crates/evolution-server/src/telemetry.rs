//! W3C trace context of the events the server accepts, and the optional OTLP export of its spans.
//!
//! Every event gets the trace context of its *ingest* span (OpenTelemetry messaging's "create"
//! span): a child of the producer's `traceparent`, or the root of a new trace. The outbox keeps
//! it and every delivery carries it. With an OTLP endpoint configured by the standard variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, with
//! `OTEL_EXPORTER_OTLP_[TRACES_]{PROTOCOL,HEADERS,TIMEOUT,COMPRESSION}`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`), the ingest spans and one
//! `send` span per delivery attempt (a child of the ingest span) are exported over OTLP/HTTP.

use std::borrow::Cow;
use std::str::FromStr;

use evolution_events::{Channel, InstanceName, TraceContext};
use evolution_sinks::AttemptNotice;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};

/// What the variables ask for that this server cannot do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TelemetryError {
    #[error(
        "{var}=`{value}`: this server exports spans over OTLP/HTTP only; use `http/protobuf` (the default) or `http/json`"
    )]
    Protocol { var: &'static str, value: String },
    #[error("OTEL_TRACES_EXPORTER=`{0}`: use `otlp` (the default) or `none`")]
    Exporter(String),
    #[error("cannot set up the OTLP span exporter: {0}")]
    Build(String),
}

/// The tracer of the server: exporting spans, or only giving events their trace context.
#[derive(Debug)]
pub(crate) struct Telemetry {
    export: Option<(SdkTracerProvider, Tracer)>,
}

/// A request's ingest span: its trace context goes with each of its events.
#[derive(Debug)]
pub(crate) struct Ingest {
    context: TraceContext,
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl Ingest {
    /// The trace context the request's events keep.
    pub(crate) fn context(&self) -> &TraceContext {
        &self.context
    }

    /// Ends the span: the events were stored (`ids` of them), or `error` says why not.
    pub(crate) fn end(mut self, stored: usize, error: Option<&dyn std::fmt::Display>) {
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new(
                "messaging.batch.message_count",
                i64::try_from(stored).unwrap_or(i64::MAX),
            ));
            if let Some(error) = error {
                span.set_attribute(KeyValue::new("error.type", "rejected"));
                span.set_status(Status::error(error.to_string()));
            }
            span.end();
        }
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Telemetry {
    /// Reads the standard OpenTelemetry variables: spans are exported when an OTLP endpoint is
    /// set, unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Builds the exporter on
    /// a thread of its own (its blocking HTTP client may not be created on the runtime).
    pub(crate) fn from_env() -> Result<Self, TelemetryError> {
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        match var("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(Self { export: None }),
            Some(other) => return Err(TelemetryError::Exporter(other.to_owned())),
        }
        let endpoint =
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
        if disabled || endpoint.is_none() {
            return Ok(Self { export: None });
        }
        // OTLP's default is http/protobuf (the exporter crate's would be JSON, both compiled in).
        let mut protocol = Protocol::HttpBinary;
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = var(name) {
                protocol = match value.trim() {
                    "http/protobuf" => Protocol::HttpBinary,
                    "http/json" => Protocol::HttpJson,
                    _ => return Err(TelemetryError::Protocol { var: name, value }),
                };
                break;
            }
        }
        let built = std::thread::spawn(move || {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .build()
                .map_err(|e| TelemetryError::Build(e.to_string()))?;
            let mut resource = Resource::builder();
            let named = var("OTEL_SERVICE_NAME").is_some()
                || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
            if !named {
                resource = resource.with_service_name("evolution-events");
            }
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build();
            let tracer = provider.tracer("evolution-events");
            Ok((provider, tracer))
        })
        .join()
        .map_err(|_| TelemetryError::Build("the set-up thread panicked".to_owned()))??;
        tracing::info!(
            endpoint = endpoint.as_deref().unwrap_or_default(),
            "exporting spans over OTLP"
        );
        Ok(Self { export: Some(built) })
    }

    /// Whether spans are exported.
    pub(crate) fn exports(&self) -> bool {
        self.export.is_some()
    }

    /// Starts the ingest span of events of `instance` (the first, when several): a child of
    /// `parent` (the producer's `traceparent`), or a new trace.
    pub(crate) fn ingest(&self, parent: Option<&TraceContext>, instance: &InstanceName) -> Ingest {
        let Some((_, tracer)) = &self.export else {
            return Ingest {
                context: TraceContext::child_of(parent),
                span: None,
            };
        };
        let span = tracer
            .span_builder(format!("create {instance}"))
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", "evolution-events"),
                KeyValue::new("messaging.operation.type", "create"),
                KeyValue::new("messaging.operation.name", "ingest"),
                KeyValue::new("messaging.destination.name", instance.to_string()),
            ])
            .start_with_context(tracer, &remote(parent));
        let sc = span.span_context();
        let context = TraceContext::from_parts(
            sc.trace_id().to_bytes(),
            sc.span_id().to_bytes(),
            sc.trace_flags().to_u8(),
            parent.and_then(TraceContext::tracestate),
        )
        .unwrap_or_else(|| TraceContext::child_of(parent));
        Ingest {
            context,
            span: Some(span),
        }
    }

    /// Records a `send` span for one delivery attempt, a child of its event's ingest span.
    pub(crate) fn attempt(&self, notice: &AttemptNotice<'_>) {
        let Some((_, tracer)) = &self.export else {
            return;
        };
        let delivery = notice.delivery;
        let Some(trace) = delivery.envelope.trace() else {
            return;
        };
        let channel = delivery.channel;
        let mut attributes = vec![
            KeyValue::new("messaging.system", messaging_system(channel)),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.operation.name", "send"),
            KeyValue::new("messaging.destination.name", delivery.destination.label()),
            KeyValue::new("messaging.message.id", delivery.envelope.id().to_string()),
            KeyValue::new("evolution.channel", channel.as_str().to_owned()),
            KeyValue::new(
                "evolution.delivery.id",
                i64::try_from(delivery.id).unwrap_or(i64::MAX),
            ),
            KeyValue::new("evolution.delivery.attempt", i64::from(delivery.attempt)),
            KeyValue::new(
                "evolution.event.sequence",
                i64::try_from(delivery.envelope.sequence()).unwrap_or(i64::MAX),
            ),
        ];
        if let Some(status) = notice.error.and_then(evolution_events::SinkError::status) {
            attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
        }
        let mut span = tracer
            .span_builder(format!("send {channel}"))
            .with_kind(SpanKind::Producer)
            .with_start_time(notice.started)
            .with_attributes(attributes)
            .start_with_context(tracer, &remote(Some(trace)));
        if let Some(error) = notice.error {
            span.set_attribute(KeyValue::new("error.type", format!("{:?}", error.kind())));
            span.set_status(Status::error(error.to_string()));
        }
        span.end_with_timestamp(notice.started + notice.elapsed);
    }

    /// Exports what is buffered and stops (on a thread of its own: the exporter blocks).
    pub(crate) async fn shutdown(&self) {
        if let Some((provider, _)) = &self.export {
            let provider = provider.clone();
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "could not export the last spans");
            }
        }
    }
}

/// The OpenTelemetry context of a remote parent span.
fn remote(parent: Option<&TraceContext>) -> Context {
    let Some(parent) = parent else {
        return Context::new();
    };
    let state = parent
        .tracestate()
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(parent.trace_id()),
        SpanId::from_bytes(parent.span_id()),
        TraceFlags::new(parent.flags()),
        true,
        state,
    ))
}

/// `messaging.system` of a channel: OpenTelemetry's well-known value where there is one.
fn messaging_system(channel: Channel) -> Cow<'static, str> {
    match channel {
        Channel::Rabbitmq => "rabbitmq".into(),
        Channel::Kafka => "kafka".into(),
        Channel::Sqs => "aws_sqs".into(),
        Channel::Nats => "nats".into(),
        Channel::Webhook => "webhook".into(),
        Channel::Websocket => "socket.io".into(),
        Channel::Pusher => "pusher".into(),
        other => other.as_str().to_owned().into(),
    }
}

/// Reads the producer's `traceparent` / `tracestate` headers. One that is not W3C Trace Context
/// is ignored (a new trace starts), as the W3C recommendation asks of a receiver.
pub(crate) fn parent_from_headers(headers: &axum::http::HeaderMap) -> Option<TraceContext> {
    let traceparent = headers.get("traceparent")?.to_str().ok()?;
    let tracestate: Vec<&str> = headers
        .get_all("tracestate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let tracestate = (!tracestate.is_empty()).then(|| tracestate.join(","));
    match TraceContext::parse(traceparent, tracestate.as_deref()) {
        Ok(context) => Some(context),
        Err(e) => {
            tracing::debug!(error = %e, "ignoring the request's traceparent; starting a new trace");
            None
        }
    }
}
