//! [`NatsSink`]: the [`EventSink`] of the NATS channel.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State as ConnectionState;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event, HeaderMap};
use evolution_events::reconnect::{self, Health, Reconnect, backoff};
use evolution_events::{
    Bytes, Capabilities, Channel, Delivery, DeliveryReport, Destination, ErrorKind, EventSink, Retry,
    SinkError, async_trait,
};
use tokio::sync::Mutex;

use crate::classify::{
    classified, connect_error, error, flush_class, jetstream_class, publish_class, stream_class,
};
use crate::config::{JetStreamConfig, NatsConfig, NatsMode, check_stream_name};

/// The channel name of this sink (`nats`).
pub const NAME: &str = "nats";

/// The largest batch `send` takes.
const MAX_BATCH: usize = 256;

/// How long draining the connection at shutdown may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes events to NATS, core or JetStream (see the [crate documentation](crate)).
#[derive(Debug)]
pub struct NatsSink {
    config: NatsConfig,
    /// Made on first use; the client then reconnects by itself.
    connection: Reconnect<Link>,
}

/// A connected client (it reconnects by itself) and, in JetStream mode, the stream's state.
#[derive(Debug)]
struct Link {
    client: Client,
    jetstream: Option<(jetstream::Context, Mutex<StreamState>)>,
    /// The server, as messages name it.
    label: String,
}

impl reconnect::Link for Link {
    /// Never lost: while the client reconnects, sends fail fast.
    fn health(&self) -> Health {
        match self.client.connection_state() {
            ConnectionState::Connected => Health::Usable,
            ConnectionState::Pending | ConnectionState::Disconnected => Health::Recovering(format!(
                "not connected to {}: the connection was lost and the client is reconnecting",
                self.label
            )),
        }
    }
}

/// What the sink knows of its stream.
#[derive(Debug, Default)]
struct StreamState {
    /// The stream exists (created or found) on this connection.
    ensured: bool,
    /// Its subjects (filters), as last read or written.
    subjects: Vec<String>,
}

impl NatsSink {
    /// A round trip to the server: the client's buffer flushed and answered within
    /// `flush_timeout`.
    async fn flush_client(&self, client: &async_nats::Client) -> Result<(), SinkError> {
        match tokio::time::timeout(self.config.flush_timeout, client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classified(
                flush_class(e.kind()),
                &format!("flush to {}", self.label()),
                &e,
                &self.config.url.secrets(),
            )),
            Err(_) => Err(error(
                ErrorKind::Timeout,
                format!("{}: no answer to a flush", self.label()),
            )
            .with_retry(Retry::Backoff)),
        }
    }

    /// A sink with these settings. Nothing is connected yet: the first `send` or `health_check`
    /// connects.
    ///
    /// # Errors
    /// `ConfigInvalid` when a timeout or backoff is zero, `reconnect_min` exceeds
    /// `reconnect_max`, `max_payload_bytes` is zero, or the stream name or a stream subject is
    /// invalid.
    pub fn new(config: NatsConfig) -> Result<Self, SinkError> {
        if config.connect_timeout.is_zero() || config.flush_timeout.is_zero() {
            return Err(error(
                ErrorKind::ConfigInvalid,
                "the connect and flush timeouts must be longer than zero",
            ));
        }
        if config.max_payload_bytes == 0 {
            return Err(error(
                ErrorKind::ConfigInvalid,
                "max_payload_bytes must be greater than zero",
            ));
        }
        if let NatsMode::JetStream(js) = &config.mode {
            check_stream_name(&js.stream)
                .map_err(|e| error(ErrorKind::ConfigInvalid, format!("NATS_JETSTREAM_STREAM: {e}")))?;
            if js.ack_timeout.is_zero() {
                return Err(error(
                    ErrorKind::ConfigInvalid,
                    "the JetStream acknowledgement timeout must be longer than zero",
                ));
            }
            for subject in &js.subjects {
                if !valid_filter(subject) {
                    return Err(error(
                        ErrorKind::ConfigInvalid,
                        format!("`{subject}` is not a valid stream subject"),
                    ));
                }
            }
        }
        Ok(Self {
            connection: Reconnect::new(
                Channel::Nats,
                config.url.label(),
                config.reconnect_min,
                config.reconnect_max,
            )?,
            config,
        })
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    fn label(&self) -> &str {
        self.config.url.label()
    }

    /// The client, connecting first if there is none and the backoff allows an attempt now.
    /// Once connected, the client reconnects by itself; while it does, this fails fast.
    async fn link(&self) -> Result<Arc<Link>, SinkError> {
        self.connection
            .link(|| async {
                let client = self.connect().await?;
                let jetstream = match &self.config.mode {
                    NatsMode::Core => None,
                    NatsMode::JetStream(js) => {
                        let mut context = jetstream::new(client.clone());
                        context.set_timeout(js.ack_timeout);
                        Some((context, Mutex::new(StreamState::default())))
                    }
                };
                Ok(Link {
                    client,
                    jetstream,
                    label: self.label().to_owned(),
                })
            })
            .await
    }

    async fn connect(&self) -> Result<Client, SinkError> {
        let label = self.label().to_owned();
        let (min, max) = (self.config.reconnect_min, self.config.reconnect_max);
        let events_label = label.clone();
        let options = ConnectOptions::new()
            .name("evolution-events")
            .connection_timeout(self.config.connect_timeout)
            .max_reconnects(None)
            // The client sleeps this long before attempt `attempts` (counted from 1, reset on
            // success): the first attempt at once, then the capped exponential backoff.
            .reconnect_delay_callback(move |attempts| match attempts {
                0 | 1 => Duration::ZERO,
                n => backoff(min, max, u32::try_from(n - 1).unwrap_or(u32::MAX)),
            })
            .event_callback(move |event| {
                let server = events_label.clone();
                async move {
                    match event {
                        Event::Connected => tracing::info!(%server, "connected to NATS"),
                        Event::Disconnected => {
                            tracing::warn!(%server, "the NATS connection was lost; the client reconnects");
                        }
                        other => tracing::debug!(%server, event = %other, "NATS client event"),
                    }
                }
            });
        let secrets = self.config.url.secrets();
        match tokio::time::timeout(
            self.config.connect_timeout + Duration::from_secs(1),
            options.connect(self.config.url.expose()),
        )
        .await
        {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(connect_error(&label, &e, &secrets)),
            Err(_) => Err(error(
                ErrorKind::Timeout,
                format!("connect to {label}: timed out"),
            )),
        }
    }

    /// Makes sure the stream exists and captures every subject of `subjects` (adding
    /// `{first token}.>` for those it does not).
    async fn ensure_stream(
        &self,
        context: &jetstream::Context,
        stream_state: &Mutex<StreamState>,
        js: &JetStreamConfig,
        subjects: &BTreeSet<&str>,
    ) -> Result<(), SinkError> {
        let mut state = stream_state.lock().await;
        let uncovered = |known: &[String]| -> Vec<String> {
            let mut out: Vec<String> = subjects
                .iter()
                .filter(|s| !known.iter().any(|filter| subject_matches(filter, s)))
                .map(|s| covering(s))
                .collect();
            out.dedup();
            out
        };
        if state.ensured && uncovered(&state.subjects).is_empty() {
            return Ok(());
        }
        let secrets = self.config.url.secrets();
        let what = format!("ensure stream `{}` on {}", js.stream, self.label());
        let mut wanted = js.subjects.clone();
        for s in uncovered(&js.subjects) {
            if !wanted.contains(&s) {
                wanted.push(s);
            }
        }
        let created = context
            .get_or_create_stream(stream::Config {
                name: js.stream.clone(),
                subjects: wanted,
                storage: stream::StorageType::File,
                duplicate_window: js.duplicate_window,
                ..stream::Config::default()
            })
            .await
            .map_err(|e| classified(stream_class(&e.kind()), &what, &e, &secrets))?;
        let mut config = created.cached_info().config.clone();
        state.ensured = true;
        state.subjects.clone_from(&config.subjects);
        let missing = uncovered(&config.subjects);
        if missing.is_empty() {
            return Ok(());
        }
        config.subjects.extend(missing.iter().cloned());
        match context.update_stream(&config).await {
            Ok(info) => {
                tracing::info!(stream = %js.stream, added = ?missing, "added subjects to the JetStream stream");
                state.subjects = info.config.subjects;
                Ok(())
            }
            Err(e) => Err(classified(
                stream_class(&e.kind()),
                &format!(
                    "add subjects {missing:?} to stream `{}` on {}",
                    js.stream,
                    self.label()
                ),
                &e,
                &secrets,
            )),
        }
    }

    async fn send_core(&self, link: &Link, batch: &[Delivery]) -> DeliveryReport {
        let secrets = self.config.url.secrets();
        let mut failures: Vec<(usize, SinkError)> = Vec::new();
        let mut published = Vec::with_capacity(batch.len());
        for (index, delivery) in batch.iter().enumerate() {
            let (subject, payload) = match self.checked(delivery) {
                Ok(item) => item,
                Err(e) => {
                    failures.push((index, e));
                    continue;
                }
            };
            match link
                .client
                .publish_with_headers(subject.to_owned(), headers(delivery), payload)
                .await
            {
                Ok(()) => published.push(index),
                Err(e) => failures.push((
                    index,
                    classified(
                        publish_class(e.kind()),
                        &format!("publish to {subject}"),
                        &e,
                        &secrets,
                    ),
                )),
            }
        }
        if !published.is_empty() {
            let flushed = tokio::time::timeout(self.config.flush_timeout, link.client.flush()).await;
            let failure = match flushed {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(classified(
                    flush_class(e.kind()),
                    &format!("flush to {}", self.label()),
                    &e,
                    &secrets,
                )),
                Err(_) => Some(error(
                    ErrorKind::Timeout,
                    format!(
                        "flush to {}: no answer within {:?}; the batch is sent again",
                        self.label(),
                        self.config.flush_timeout
                    ),
                )),
            };
            if let Some(e) = failure {
                for index in published {
                    failures.push((index, e.duplicate()));
                }
            }
        }
        failures.into_iter().collect()
    }

    async fn send_jetstream(
        &self,
        context: &jetstream::Context,
        stream_state: &Mutex<StreamState>,
        js: &JetStreamConfig,
        batch: &[Delivery],
    ) -> DeliveryReport {
        let secrets = self.config.url.secrets();
        let mut failures: Vec<(usize, SinkError)> = Vec::new();
        let mut items = Vec::with_capacity(batch.len());
        for (index, delivery) in batch.iter().enumerate() {
            match self.checked(delivery) {
                Ok((subject, payload)) => items.push((index, delivery, subject, payload)),
                Err(e) => failures.push((index, e)),
            }
        }
        let subjects: BTreeSet<&str> = items.iter().map(|(_, _, s, _)| *s).collect();
        if !subjects.is_empty()
            && let Err(e) = self.ensure_stream(context, stream_state, js, &subjects).await
        {
            for (index, ..) in items {
                failures.push((index, e.duplicate()));
            }
            return failures.into_iter().collect();
        }
        let mut pending = Vec::with_capacity(items.len());
        for (index, delivery, subject, payload) in items {
            match context
                .publish_with_headers(subject.to_owned(), headers(delivery), payload)
                .await
            {
                Ok(ack) => pending.push((index, subject, ack)),
                Err(e) => failures.push((
                    index,
                    classified(
                        jetstream_class(e.kind()),
                        &format!("publish to {subject}"),
                        &e,
                        &secrets,
                    ),
                )),
            }
        }
        let mut stream_gone = false;
        for (index, subject, ack) in pending {
            if let Err(e) = ack.await {
                stream_gone |= e.kind() == async_nats::jetstream::context::PublishErrorKind::StreamNotFound;
                failures.push((
                    index,
                    classified(
                        jetstream_class(e.kind()),
                        &format!("publish to {subject} (waiting for the stream's acknowledgement)"),
                        &e,
                        &secrets,
                    ),
                ));
            }
        }
        if stream_gone {
            stream_state.lock().await.ensured = false;
        }
        failures.into_iter().collect()
    }

    /// The subject and payload of a delivery, or why it cannot be sent.
    fn checked<'a>(&self, delivery: &'a Delivery) -> Result<(&'a str, Bytes), SinkError> {
        let target = delivery
            .destination
            .nats()
            .ok_or_else(|| delivery.destination.mismatch(Channel::Nats))?;
        let payload = delivery.binding_body_within(self.config.max_payload_bytes)?;
        Ok((target.subject.as_str(), payload))
    }
}

/// The headers of a delivery: `Nats-Msg-Id` (JetStream de-duplication), `event`, `instance`,
/// `id`, `Content-Type`, the event's `traceparent` / `tracestate`, and in CloudEvents binary mode
/// the `ce-` attributes.
fn headers(delivery: &Delivery) -> HeaderMap {
    let envelope = &delivery.envelope;
    let id = envelope.id().to_string();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    headers.insert("event", delivery.profile.payload_event(envelope.kind()));
    headers.insert("instance", envelope.instance().as_str());
    headers.insert("id", id.as_str());
    headers.insert("Content-Type", delivery.binding_content_type());
    for (name, value) in envelope.trace_headers() {
        headers.insert(name, value.as_str());
    }
    // CloudEvents' NATS binding, binary mode: each attribute as a `ce-` header.
    for (name, value) in delivery.binary_attributes().unwrap_or_default() {
        headers.insert(format!("ce-{name}").as_str(), value.as_str());
    }
    headers
}

/// Whether the subject filter `filter` (with `*` and `>` wildcards) matches the literal `subject`.
pub(crate) fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for pattern in filter.split('.') {
        match (pattern, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// The stream subject added for a subject no filter covers: `{first token}.>`, or the subject
/// itself when it has a single token.
pub(crate) fn covering(subject: &str) -> String {
    match subject.split_once('.') {
        Some((first, _)) => format!("{first}.>"),
        None => subject.to_owned(),
    }
}

/// A valid stream subject filter: non-empty tokens, `>` only last, no whitespace.
fn valid_filter(filter: &str) -> bool {
    let tokens: Vec<&str> = filter.split('.').collect();
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.chars().any(char::is_whitespace)
            && (*t != ">" || i == tokens.len() - 1)
            && (!t.contains('>') || *t == ">")
            && (!t.contains('*') || *t == "*")
    })
}

#[async_trait]
impl EventSink for NatsSink {
    fn channel(&self) -> Channel {
        Channel::Nats
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(MAX_BATCH).ordered()
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(self.config.max_payload_bytes)
    }

    /// Core: publishes every item, then flushes (the batch counts as sent once the server
    /// answered the flush). JetStream: makes sure the stream captures every subject, publishes
    /// every item, then awaits every acknowledgement. `Err` when not connected (retryable
    /// `Unavailable` or `Timeout`) or shut down (`Closed`).
    async fn send(&self, batch: &[Delivery]) -> Result<DeliveryReport, SinkError> {
        self.connection.check_open()?;
        if batch.is_empty() {
            return Ok(DeliveryReport::success());
        }
        let link = self.link().await?;
        Ok(match (&self.config.mode, &link.jetstream) {
            (NatsMode::JetStream(js), Some((context, stream_state))) => {
                self.send_jetstream(context, stream_state, js, batch).await
            }
            _ => self.send_core(&link, batch).await,
        })
    }

    /// Connects if needed, then a round trip to the server (flush); in JetStream mode, also
    /// makes sure the stream exists.
    async fn health_check(&self) -> Result<(), SinkError> {
        let link = self.link().await?;
        self.flush_client(&link.client).await?;
        if let (NatsMode::JetStream(js), Some((context, stream_state))) = (&self.config.mode, &link.jetstream)
        {
            self.ensure_stream(context, stream_state, js, &BTreeSet::new())
                .await?;
        }
        Ok(())
    }

    /// Core: flushes what the client may still buffer. JetStream: nothing (every send waited
    /// for its acknowledgements).
    async fn flush(&self) -> Result<(), SinkError> {
        if let Some(link) = self.connection.current().await
            && link.client.connection_state() == ConnectionState::Connected
        {
            self.flush_client(&link.client).await?;
        }
        Ok(())
    }

    /// Nothing to provision: core subjects need nothing, and the JetStream stream gains the
    /// subjects it lacks on their first publish.
    async fn prepare(&self, _destinations: &[Destination]) -> Result<(), SinkError> {
        Ok(())
    }

    /// Drains and closes the connection (at most 5 s). Idempotent; later sends fail with
    /// `Closed`.
    async fn shutdown(&self) -> Result<(), SinkError> {
        if let Some(link) = self.connection.close().await {
            let _drained = tokio::time::timeout(CLOSE_TIMEOUT, link.client.drain()).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use evolution_sink_testkit::fixtures::closed_port;
    use evolution_sink_testkit::reconnect::unreachable_waits_for_the_backoff;

    use super::*;
    use crate::config::NatsUrl;

    fn config() -> NatsConfig {
        NatsConfig::new(NatsUrl::parse("nats://127.0.0.1:1").unwrap())
    }

    #[test]
    fn subjects() {
        assert!(subject_matches("evolution.>", "evolution.acme.messages.upsert"));
        assert!(!subject_matches("evolution.>", "evolution"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.c.d"));
        assert!(!subject_matches("a.*", "a"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.c"));
        assert_eq!(covering("acme.messages.upsert"), "acme.>");
        assert_eq!(covering("single"), "single");
        assert!(valid_filter("evolution.>") && valid_filter("a.*.c") && valid_filter("a"));
        for bad in ["", "a..b", "a.>.b", "a b", "a.b*", "a.>x"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let sink = NatsSink::new(config()).unwrap();
        assert_eq!(sink.capabilities(), Capabilities::new(256).ordered());
        assert_eq!(
            sink.config().max_payload_bytes,
            NatsConfig::DEFAULT_MAX_PAYLOAD_BYTES
        );
        assert_eq!((sink.channel(), NAME), (Channel::Nats, "nats"));
        let js = NatsSink::new(NatsConfig {
            mode: NatsMode::JetStream(JetStreamConfig::new("EVOLUTION", vec!["evolution.>".into()])),
            ..config()
        })
        .unwrap();
        assert_eq!(js.capabilities(), sink.capabilities());
        for bad in [
            NatsConfig {
                mode: NatsMode::JetStream(JetStreamConfig::new("a.b", vec![])),
                ..config()
            },
            NatsConfig {
                mode: NatsMode::JetStream(JetStreamConfig::new("S", vec!["a..b".into()])),
                ..config()
            },
            NatsConfig {
                flush_timeout: Duration::ZERO,
                ..config()
            },
            NatsConfig {
                reconnect_min: Duration::from_secs(60),
                ..config()
            },
            NatsConfig {
                max_payload_bytes: 0,
                ..config()
            },
        ] {
            assert_eq!(NatsSink::new(bad).unwrap_err().kind(), ErrorKind::ConfigInvalid);
        }
    }

    #[tokio::test]
    async fn unreachable_fails_then_waits_for_the_backoff() {
        let port = closed_port();
        let sink = NatsSink::new(NatsConfig {
            reconnect_min: Duration::from_secs(30),
            reconnect_max: Duration::from_secs(30),
            ..NatsConfig::new(NatsUrl::parse(&format!("nats://u:hunter2@127.0.0.1:{port}")).unwrap())
        })
        .unwrap();
        unreachable_waits_for_the_backoff(&sink, "hunter2").await;
    }
}
