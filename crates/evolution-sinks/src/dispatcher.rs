//! The Dispatcher: one bounded queue and worker pool per channel over an [`Outbox`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::Poll;
use std::time::Duration;

use evolution_events::{
    Bytes, Channel, Decision, Delivery, DeliveryId, DeliveryReport, Destination, DispatchHints, ErrorKind,
    EventEnvelope, EventKind, EventSink, Filter, InstanceName, InstanceSettings, NameError, NamingProfile,
    Retry, RetryPolicy, SinkError,
};
use evolution_outbox::{Attempt, NewDelivery, NewEvent, Outbox, OutboxError, Outcome, Settlement};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::health::{DestinationHealth, DisabledHook, DisabledNotice, Tracker};
use crate::pace::{Pace, Pacer};
use crate::router::{CheckedSettings, Route, Router};

/// How long an idle worker sleeps before looking again when nothing is scheduled (it is woken
/// earlier by new work).
const IDLE_WAIT: Duration = Duration::from_secs(60);
/// Pause after an outbox error before the worker tries again.
const OUTBOX_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Windows of batches a claim holds when the sink allows several batches of a key in flight
/// ([`ChannelCtx::claim_limit`]): the key's next claim waits for this one's last answer, so the
/// sink's pipeline drains once per claim instead of once per window.
const CLAIM_WINDOWS: usize = 4;
/// The longest pause between retries of recording outcomes.
const MAX_OUTBOX_ERROR_PAUSE: Duration = Duration::from_secs(30);

/// How one channel is dispatched.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelConfig {
    /// When to retry and when to give up.
    pub retry: RetryPolicy,
    /// Concurrent batches in flight for this channel.
    pub workers: usize,
    /// Largest batch handed to the sink; `None` uses the sink's `max_batch_size` (always clamped
    /// to it).
    pub batch_size: Option<usize>,
    /// A `send` that takes longer fails with `Timeout` (and is retried).
    pub send_timeout: Duration,
    /// Keep per-(instance, destination) order; `None` uses the sink's `ordered` capability.
    pub ordered: Option<bool>,
    /// Batches of one ordering key in flight at once (ADR 0012); `None` uses the sink's
    /// `max_in_flight_per_key` (always clamped to it).
    pub max_in_flight_per_key: Option<usize>,
    /// Disable a destination of an instance's settings once every attempt to it failed for this
    /// long (its deliveries are then held as dead letters until it is enabled again:
    /// [`Dispatcher::enable_destinations`]); `None`: never.
    pub disable_after: Option<Duration>,
    /// Send an event larger than the sink's [`EventSink::max_payload_bytes`] by reference (a small
    /// body with a signed URL, made by [`DispatcherBuilder::reference_with`]) instead of letting
    /// the sink refuse it (`<CHANNEL>_OVERSIZE=reference`).
    pub by_reference: bool,
}

impl ChannelConfig {
    /// The defaults for `channel`: HTTP channels (webhook, Pusher) use the specification's webhook
    /// retry policy (10 attempts, then dead); brokers and the rest retry for ever, so deliveries
    /// wait while a broker is down. 4 workers, 30 s send timeout.
    #[must_use]
    pub fn default_for(channel: Channel) -> Self {
        let retry = match channel {
            Channel::Webhook | Channel::Pusher => RetryPolicy::default(),
            _ => RetryPolicy::forever(),
        };
        Self {
            retry,
            workers: 4,
            batch_size: None,
            send_timeout: Duration::from_secs(30),
            ordered: None,
            max_in_flight_per_key: None,
            disable_after: None,
            by_reference: false,
        }
    }

    /// The defaults for `channel` ([`ChannelConfig::default_for`]) with what the channel's
    /// configuration asks for (read by its crate with its variables).
    #[must_use]
    pub fn from_hints(channel: Channel, hints: DispatchHints) -> Self {
        let default = Self::default_for(channel);
        Self {
            retry: hints.retry.unwrap_or(default.retry),
            workers: hints.workers.unwrap_or(default.workers),
            batch_size: hints.batch_size.or(default.batch_size),
            send_timeout: hints.send_timeout.unwrap_or(default.send_timeout),
            ordered: hints.ordered.or(default.ordered),
            max_in_flight_per_key: default.max_in_flight_per_key,
            disable_after: hints.disable_after.or(default.disable_after),
            by_reference: default.by_reference,
        }
    }
}

/// Why an event was not accepted. Nothing of it was stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The dispatcher is shutting down.
    #[error("the dispatcher is shutting down and accepts no more events")]
    Closed,
    /// A destination name would be refused by its channel.
    #[error("cannot route the event: {0}")]
    Routing(#[from] NameError),
    /// The settings route to a channel with no sink.
    #[error(
        "the settings deliver to the {0} channel, but no {0} sink is configured: add one or disable the channel"
    )]
    NoSink(Channel),
    /// The outbox refused or failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// Why the dispatcher could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Two sinks for one channel.
    #[error("two sinks were given for the {0} channel; give one per channel")]
    DuplicateChannel(Channel),
    /// No Tokio runtime to spawn the workers on.
    #[error("the dispatcher must be started inside a Tokio runtime")]
    NoRuntime,
}

/// Upper bounds (seconds) of the delivery-latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A latency histogram (cumulative buckets, Prometheus style).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyHistogram {
    /// Count of observations ≤ each bound of [`LATENCY_BUCKETS`].
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    /// Count of all observations.
    pub count: u64,
    /// Sum of all observations, seconds.
    pub sum_seconds: f64,
}

/// A delivery that was just given up, for [`DispatcherBuilder::on_dead`].
#[derive(Clone, Debug)]
pub struct DeadNotice {
    /// The delivery, as last attempted.
    pub delivery: Delivery,
    /// Why it was given up (no secrets).
    pub error: String,
    /// The protocol status of the last answer (an HTTP status), if any.
    pub status: Option<u16>,
}

/// Called for every delivery given up, after the outbox recorded it.
pub type DeadHook = Arc<dyn Fn(DeadNotice) + Send + Sync>;

/// Makes the body that replaces an oversize event's payload (see [`ChannelConfig::by_reference`]).
pub type ReferenceHook = Arc<dyn Fn(&Delivery) -> Bytes + Send + Sync>;

/// One attempt to send one delivery, for [`DispatcherBuilder::on_attempt`] (a tracing span per
/// attempt, say).
#[derive(Debug)]
pub struct AttemptNotice<'a> {
    /// The delivery, as attempted (`attempt` counts from 1).
    pub delivery: &'a Delivery,
    /// When the batch holding it was handed to the sink (wall clock).
    pub started: std::time::SystemTime,
    /// How long the sink took with that batch.
    pub elapsed: Duration,
    /// Why the attempt failed (`None`: delivered). A delivery sent after a failed one of its
    /// ordering key in the same batch is sent again later: its notice reports its own outcome.
    pub error: Option<&'a SinkError>,
}

/// Called for every attempt, see [`DispatcherBuilder::on_attempt`].
pub type AttemptHook = Arc<dyn Fn(AttemptNotice<'_>) + Send + Sync>;

/// Counters of one channel since start.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ChannelCounters {
    /// Deliveries that reached the backend.
    pub delivered: u64,
    /// Failed attempts (each retry counts).
    pub failed_attempts: u64,
    /// Failed attempts scheduled for a retry.
    pub retried: u64,
    /// Deliveries given up (dead letters).
    pub dead: u64,
    /// Batches sent.
    pub batches: u64,
    /// Time from acceptance of the event to its delivery.
    pub latency: LatencyHistogram,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    batches: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_micros: AtomicU64,
}

impl Counters {
    fn observe_latency(&self, seconds: f64) {
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| seconds <= *b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        // Saturating float-to-int conversion is what we want for a sum of microseconds.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let micros = (seconds.max(0.0) * 1e6) as u64;
        self.latency_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ChannelCounters {
        let delivered = self.delivered.load(Ordering::Relaxed);
        let mut buckets = [0; LATENCY_BUCKETS.len()];
        let mut running = 0;
        for (slot, bucket) in buckets.iter_mut().zip(&self.latency_buckets) {
            running += bucket.load(Ordering::Relaxed);
            *slot = running;
        }
        #[allow(clippy::cast_precision_loss)]
        let sum_seconds = self.latency_micros.load(Ordering::Relaxed) as f64 / 1e6;
        ChannelCounters {
            delivered,
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            latency: LatencyHistogram {
                buckets,
                count: delivered,
                sum_seconds,
            },
        }
    }
}

#[derive(Debug)]
struct ChannelCtx {
    channel: Channel,
    sink: Arc<dyn EventSink>,
    config: ChannelConfig,
    batch_size: usize,
    /// Batches a worker has in flight at once (the sink's `max_in_flight_per_key`), started in
    /// claim order; see [`ChannelCtx::claim_limit`].
    in_flight: usize,
    ordered: bool,
    counters: Counters,
    /// Whether an idle worker of the channel watches the outbox's notifier. One idle worker watches;
    /// the others wait on `idle`, so a commit wakes one worker instead of every idle one (each of
    /// which would ask the outbox for work, mostly in vain).
    watching: AtomicBool,
    /// Wakes one idle worker that is not watching: a worker that claimed work wakes the next, which
    /// looks for more (and watches the outbox if it finds none).
    idle: tokio::sync::Notify,
    /// Rate limits and pauses of the channel's destinations.
    pacer: Pacer,
    /// Each destination's last success, failures, and whether it is disabled.
    health: Tracker,
    /// Payloads above this go by reference (`by_reference` and the sink's limit).
    reference_above: Option<usize>,
}

impl ChannelCtx {
    /// The most deliveries a worker claims at once: one batch, or — when the sink allows several
    /// batches of a key in flight — [`CLAIM_WINDOWS`] windows of `in_flight` batches, so that a
    /// window slides over several before the claim's last answer (ADR 0025).
    fn claim_limit(&self) -> usize {
        let windows = if self.in_flight > 1 { CLAIM_WINDOWS } else { 1 };
        self.batch_size
            .saturating_mul(self.in_flight)
            .saturating_mul(windows)
    }
}

/// Builds a [`Dispatcher`].
pub struct DispatcherBuilder {
    outbox: Arc<dyn Outbox>,
    router: Router,
    sinks: Vec<(Arc<dyn EventSink>, ChannelConfig)>,
    on_dead: Option<DeadHook>,
    on_disabled: Option<DisabledHook>,
    reference: Option<ReferenceHook>,
    on_attempt: Option<AttemptHook>,
}

impl std::fmt::Debug for DispatcherBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherBuilder")
            .field("outbox", &self.outbox)
            .field("router", &self.router)
            .field("sinks", &self.sinks)
            .field("on_dead", &self.on_dead.is_some())
            .field("on_disabled", &self.on_disabled.is_some())
            .field("reference", &self.reference.is_some())
            .field("on_attempt", &self.on_attempt.is_some())
            .finish()
    }
}

impl DispatcherBuilder {
    /// Adds a sink with [`ChannelConfig::default_for`] its channel.
    #[must_use]
    pub fn sink(self, sink: Arc<dyn EventSink>) -> Self {
        let config = ChannelConfig::default_for(sink.channel());
        self.sink_with(sink, config)
    }

    /// Adds a sink with its own configuration.
    #[must_use]
    pub fn sink_with(mut self, sink: Arc<dyn EventSink>, config: ChannelConfig) -> Self {
        self.sinks.push((sink, config));
        self
    }

    /// Calls `hook` for every delivery given up (after the outbox recorded the dead letter). It
    /// runs on a worker: keep it short and non-blocking (spawn for anything slow).
    #[must_use]
    pub fn on_dead(mut self, hook: impl Fn(DeadNotice) + Send + Sync + 'static) -> Self {
        self.on_dead = Some(Arc::new(hook));
        self
    }

    /// Calls `hook` once for each destination disabled because every attempt to it failed for
    /// its channel's [`ChannelConfig::disable_after`]. It runs on a worker: keep it short.
    #[must_use]
    pub fn on_disabled(mut self, hook: impl Fn(DisabledNotice) + Send + Sync + 'static) -> Self {
        self.on_disabled = Some(Arc::new(hook));
        self
    }

    /// Makes the body sent instead of an event larger than its sink's limit on the channels that
    /// send those by reference ([`ChannelConfig::by_reference`]): typically the event's id, kind,
    /// instance and sequence with a signed URL that fetches it whole. Without it they are refused.
    #[must_use]
    pub fn reference_with(mut self, hook: impl Fn(&Delivery) -> Bytes + Send + Sync + 'static) -> Self {
        self.reference = Some(Arc::new(hook));
        self
    }

    /// Calls `hook` once per delivery for every attempt to send it, when the sink has answered
    /// (before the outbox records the outcome). It runs on a worker: keep it short and
    /// non-blocking.
    #[must_use]
    pub fn on_attempt(mut self, hook: impl Fn(AttemptNotice<'_>) + Send + Sync + 'static) -> Self {
        self.on_attempt = Some(Arc::new(hook));
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// Two sinks for one channel, or no Tokio runtime.
    pub fn start(self) -> Result<Dispatcher, BuildError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let mut channels = HashMap::new();
        for (sink, config) in self.sinks {
            let caps = sink.capabilities();
            let channel = sink.channel();
            let reference_above = config.by_reference.then(|| sink.max_payload_bytes()).flatten();
            let ctx = ChannelCtx {
                channel,
                batch_size: config
                    .batch_size
                    .unwrap_or(caps.max_batch_size)
                    .clamp(1, caps.max_batch_size),
                in_flight: config
                    .max_in_flight_per_key
                    .unwrap_or(caps.max_in_flight_per_key)
                    .clamp(1, caps.max_in_flight_per_key.max(1)),
                ordered: config.ordered.unwrap_or(caps.ordered),
                sink,
                config,
                counters: Counters::default(),
                watching: AtomicBool::new(false),
                idle: tokio::sync::Notify::new(),
                pacer: Pacer::default(),
                health: Tracker::default(),
                reference_above,
            };
            if channels.insert(channel, Arc::new(ctx)).is_some() {
                return Err(BuildError::DuplicateChannel(channel));
            }
        }
        let (closing, _) = watch::channel(false);
        let mut tasks = Vec::new();
        for ctx in channels.values() {
            for _ in 0..ctx.config.workers.max(1) {
                let worker = Worker {
                    ctx: Arc::clone(ctx),
                    outbox: Arc::clone(&self.outbox),
                    closing: closing.subscribe(),
                    on_dead: self.on_dead.clone(),
                    on_disabled: self.on_disabled.clone(),
                    reference: self.reference.clone(),
                    on_attempt: self.on_attempt.clone(),
                };
                tasks.push(runtime.spawn(worker.run()));
            }
        }
        Ok(Dispatcher {
            shared: Arc::new(Shared {
                id: crate::router::next_id(),
                outbox: self.outbox,
                router: self.router,
                channels,
                accepting: AtomicBool::new(true),
                closing,
                tasks: Mutex::new(tasks),
            }),
        })
    }
}

#[derive(Debug)]
struct Shared {
    /// Tells dispatchers apart for the deliveries planned in [`CheckedSettings`].
    id: u64,
    outbox: Arc<dyn Outbox>,
    router: Router,
    channels: HashMap<Channel, Arc<ChannelCtx>>,
    accepting: AtomicBool,
    closing: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Routes events into the outbox and runs, per channel, workers that claim due deliveries in
/// batches, send them through the channel's sink, and record the outcome: delivered, retry on the
/// channel's [`RetryPolicy`], or dead. Channels never wait for each other. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

/// What [`Dispatcher::shutdown`] managed.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    /// Every worker finished the due work before the deadline.
    pub drained: bool,
    /// Sinks whose flush or shutdown failed or timed out, with the reason.
    pub sink_errors: Vec<(Channel, String)>,
}

impl Dispatcher {
    /// The longest [`Dispatcher::prepare`] waits for one channel.
    pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(5);

    /// Starts building a dispatcher over an outbox and a router.
    #[must_use]
    pub fn builder(outbox: Arc<dyn Outbox>, router: Router) -> DispatcherBuilder {
        DispatcherBuilder {
            outbox,
            router,
            sinks: Vec::new(),
            on_dead: None,
            on_disabled: None,
            reference: None,
            on_attempt: None,
        }
    }

    /// Accepts one event: routes it with the instance's own settings (see [`Routing`]) and the
    /// global settings, and stores it with all its deliveries. Returns the stored event (with its
    /// sequence) once the outbox has it.
    ///
    /// # Errors
    /// See [`EmitError`]; nothing is stored on error.
    pub async fn emit<'a>(
        &self,
        event: EventEnvelope,
        settings: impl Into<Routing<'a>>,
    ) -> Result<Arc<EventEnvelope>, EmitError> {
        let mut stored = self.emit_many(vec![(event, settings.into())]).await?;
        stored.pop().ok_or(EmitError::Closed)
    }

    /// Accepts several events at once: all of them, or none.
    ///
    /// # Errors
    /// See [`EmitError`]; nothing is stored on error.
    pub async fn emit_many<'a, S: Into<Routing<'a>>>(
        &self,
        events: Vec<(EventEnvelope, S)>,
    ) -> Result<Vec<Arc<EventEnvelope>>, EmitError> {
        if !self.shared.accepting.load(Ordering::Acquire) {
            return Err(EmitError::Closed);
        }
        let profile = self.shared.router.global().naming;
        let mut batch = Vec::with_capacity(events.len());
        for (envelope, settings) in events {
            let planned: Arc<[PlannedDelivery]> = match settings.into() {
                Routing::Checked(checked) if checked.checked_by(&self.shared.router, envelope.instance()) => {
                    self.planned(envelope.kind(), checked)?
                }
                Routing::Checked(checked) => self
                    .plan(
                        envelope.instance(),
                        self.shared.router.route(&envelope, Some(checked.settings()))?,
                    )?
                    .into(),
                Routing::Unchecked(settings) => self
                    .plan(
                        envelope.instance(),
                        self.shared.router.route(&envelope, settings)?,
                    )?
                    .into(),
            };
            let deliveries = select(&envelope, profile, &planned);
            batch.push(NewEvent {
                envelope,
                profile,
                deliveries,
            });
        }
        Ok(self.shared.outbox.enqueue(batch).await?)
    }

    /// The deliveries of an event of `kind` with settings this dispatcher's router checked: planned
    /// on the first event of that kind, then shared.
    fn planned(
        &self,
        kind: EventKind,
        checked: &CheckedSettings,
    ) -> Result<Arc<[PlannedDelivery]>, EmitError> {
        let slot = checked.planned.get(kind.index());
        if let Some(planned) = slot.and_then(OnceLock::get)
            && planned.dispatcher == self.shared.id
        {
            return Ok(Arc::clone(&planned.deliveries));
        }
        let deliveries: Arc<[PlannedDelivery]> = self
            .plan(
                checked.instance(),
                self.shared.router.route_checked(kind, checked),
            )?
            .into();
        if let Some(slot) = slot {
            // Another thread may have planned it first: theirs is the same. (Settings shared by two
            // dispatchers keep the first one's plan; the other plans on each event.)
            let _kept_if_first = slot.set(Arc::new(Planned {
                dispatcher: self.shared.id,
                deliveries: Arc::clone(&deliveries),
            }));
        }
        Ok(deliveries)
    }

    /// The deliveries of `routes`, each with its ordering key where its channel keeps order, and
    /// the payload filter it must pass.
    fn plan(&self, instance: &InstanceName, routes: Vec<Route>) -> Result<Vec<PlannedDelivery>, EmitError> {
        routes
            .into_iter()
            .map(|route| {
                let ctx = self
                    .shared
                    .channels
                    .get(&route.channel)
                    .ok_or(EmitError::NoSink(route.channel))?;
                let ordering_key = ctx.ordered.then(|| ordering_key(instance, &route.destination));
                Ok(PlannedDelivery {
                    delivery: NewDelivery {
                        channel: route.channel,
                        scope: route.scope,
                        destination: Arc::new(route.destination),
                        ordering_key,
                    },
                    filter: route.filter,
                })
            })
            .collect()
    }

    /// The router.
    #[must_use]
    pub fn router(&self) -> &Router {
        &self.shared.router
    }

    /// The outbox.
    #[must_use]
    pub fn outbox(&self) -> &Arc<dyn Outbox> {
        &self.shared.outbox
    }

    /// The channels that have a sink.
    pub fn channels(&self) -> impl Iterator<Item = Channel> + '_ {
        self.shared.channels.keys().copied()
    }

    /// The sink of `channel`.
    #[must_use]
    pub fn sink(&self, channel: Channel) -> Option<&Arc<dyn EventSink>> {
        self.shared.channels.get(&channel).map(|c| &c.sink)
    }

    /// The health of `instance`'s destinations on every channel, each destination this process
    /// attempted: last success, failures since, and whether it is disabled.
    #[must_use]
    pub fn destination_health(&self, instance: &InstanceName) -> Vec<DestinationHealth> {
        let mut all: Vec<DestinationHealth> = self
            .shared
            .channels
            .values()
            .flat_map(|ctx| ctx.health.list(Some(instance)))
            .collect();
        all.sort_by(|a, b| (a.channel, &a.destination).cmp(&(b.channel, &b.destination)));
        all
    }

    /// Enables again those of `instance`'s disabled destinations on `channel` that are among
    /// `destinations` (what its settings deliver to now: a destination they no longer name stays
    /// disabled, with what it held); the ids of the deliveries they held back meanwhile (dead
    /// letters: redrive them to send them).
    #[must_use]
    pub fn enable_destinations(
        &self,
        channel: Channel,
        instance: &InstanceName,
        destinations: &[Destination],
    ) -> Vec<DeliveryId> {
        let labels: Vec<String> = destinations.iter().map(Destination::label).collect();
        self.shared
            .channels
            .get(&channel)
            .map(|ctx| ctx.health.enable(instance, &labels))
            .unwrap_or_default()
    }

    /// How `channel` is dispatched.
    #[must_use]
    pub fn config(&self, channel: Channel) -> Option<&ChannelConfig> {
        self.shared.channels.get(&channel).map(|c| &c.config)
    }

    /// Counters of `channel` since start.
    #[must_use]
    pub fn counters(&self, channel: Channel) -> Option<ChannelCounters> {
        self.shared.channels.get(&channel).map(|c| c.counters.snapshot())
    }

    /// Provisions what `instance`'s settings deliver to — SQS queues, Kafka topics — through each
    /// channel's [`EventSink::prepare`], at most [`Dispatcher::PREPARE_TIMEOUT`] per channel (channels
    /// concurrently). Call it when the settings are saved: a destination the backend refuses is
    /// then reported at once (an error of kind `Rejected`), and the first events find everything
    /// in place. The sinks provision on first use anyway, so the other failures (a backend that is
    /// down) can be logged and ignored.
    ///
    /// Returns the channels that failed, with the reason.
    pub async fn prepare(
        &self,
        instance: &InstanceName,
        settings: &InstanceSettings,
    ) -> Vec<(Channel, SinkError)> {
        let mut by_channel: HashMap<Channel, Vec<Destination>> = HashMap::new();
        for route in self.shared.router.instance_destinations(instance, settings) {
            by_channel
                .entry(route.channel)
                .or_default()
                .push(route.destination);
        }
        let mut calls = tokio::task::JoinSet::new();
        for (channel, destinations) in by_channel {
            let Some(ctx) = self.shared.channels.get(&channel) else {
                continue;
            };
            let sink = Arc::clone(&ctx.sink);
            calls.spawn(async move {
                match tokio::time::timeout(Self::PREPARE_TIMEOUT, sink.prepare(&destinations)).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some((channel, e)),
                    Err(_) => Some((
                        channel,
                        SinkError::new(
                            channel,
                            ErrorKind::Timeout,
                            format!(
                                "provisioning did not finish within {:?}; the sink does it on first use",
                                Self::PREPARE_TIMEOUT
                            ),
                        ),
                    )),
                }
            });
        }
        let mut failures = Vec::new();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok(Some(failure)) => failures.push(failure),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "a provisioning task failed"),
            }
        }
        failures.sort_by_key(|(channel, _)| channel.to_string());
        failures
    }

    /// Stops accepting events, lets the workers deliver what is due now, then flushes and shuts
    /// down every sink — all within `deadline`. Deliveries still in flight at the deadline go back
    /// to pending in the outbox (a durable outbox delivers them after a restart); retries
    /// scheduled for later stay pending. Idempotent.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let end = Instant::now() + deadline;
        self.shared.accepting.store(false, Ordering::Release);
        self.shared.closing.send_replace(true);
        let tasks = std::mem::take(&mut *self.shared.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let mut report = ShutdownReport {
            drained: true,
            sink_errors: Vec::new(),
        };
        for mut task in tasks {
            if tokio::time::timeout_at(end, &mut task).await.is_err() {
                task.abort();
                report.drained = false;
            }
        }
        if !report.drained {
            for channel in self.shared.channels.keys() {
                if let Err(e) = self.shared.outbox.release(*channel).await {
                    tracing::error!(%channel, error = %e, "could not release in-flight deliveries");
                }
            }
        }
        for (channel, ctx) in &self.shared.channels {
            let result = tokio::time::timeout_at(end, async {
                ctx.sink.flush().await?;
                ctx.sink.shutdown().await
            })
            .await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => report.sink_errors.push((*channel, e.to_string())),
                Err(_) => report
                    .sink_errors
                    .push((*channel, "flush and shutdown missed the deadline".into())),
            }
        }
        report
    }
}

/// The ordering key of a delivery: its instance and destination.
/// The instance settings an event is routed with.
#[derive(Clone, Copy, Debug)]
pub enum Routing<'a> {
    /// Global settings only (`None`), or instance settings validated on this event.
    Unchecked(Option<&'a InstanceSettings>),
    /// Settings the router checked when they were saved ([`Router::check`]): nothing is validated
    /// again, and each event kind's deliveries are planned once.
    Checked(&'a CheckedSettings),
}

impl<'a> From<Option<&'a InstanceSettings>> for Routing<'a> {
    fn from(settings: Option<&'a InstanceSettings>) -> Self {
        Self::Unchecked(settings)
    }
}

impl<'a> From<&'a CheckedSettings> for Routing<'a> {
    fn from(settings: &'a CheckedSettings) -> Self {
        Self::Checked(settings)
    }
}

/// The deliveries one dispatcher planned for one event kind of a [`CheckedSettings`].
#[derive(Debug)]
pub(crate) struct Planned {
    dispatcher: u64,
    deliveries: Arc<[PlannedDelivery]>,
}

/// A delivery an event kind gets, made only for the events that pass its filter.
#[derive(Clone, Debug)]
pub(crate) struct PlannedDelivery {
    delivery: NewDelivery,
    filter: Option<Arc<Filter>>,
}

/// The planned deliveries whose filter `envelope` passes, evaluated on this event (the payload
/// view is built once, only when some delivery has a filter).
fn select(envelope: &EventEnvelope, profile: NamingProfile, planned: &[PlannedDelivery]) -> Vec<NewDelivery> {
    let mut view = None;
    let mut out = Vec::with_capacity(planned.len());
    for p in planned {
        if let Some(filter) = &p.filter {
            let payload = view.get_or_insert_with(|| Filter::view(envelope, profile));
            if !filter.matches(payload) {
                continue;
            }
        }
        out.push(p.delivery.clone());
    }
    out
}

fn ordering_key(instance: &InstanceName, destination: &Destination) -> Arc<str> {
    Arc::from(format!("{instance}\u{1f}{}", destination.label()))
}

struct Worker {
    ctx: Arc<ChannelCtx>,
    outbox: Arc<dyn Outbox>,
    closing: watch::Receiver<bool>,
    on_dead: Option<DeadHook>,
    on_disabled: Option<DisabledHook>,
    reference: Option<ReferenceHook>,
    on_attempt: Option<AttemptHook>,
}

impl Worker {
    async fn run(mut self) {
        let notify = self.outbox.notifier(self.ctx.channel);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let closing = *self.closing.borrow() || self.closing.has_changed().is_err();
            let limit = self.ctx.claim_limit();
            let batch = match self.outbox.claim(self.ctx.channel, limit).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(channel = %self.ctx.channel, error = %e, "cannot claim deliveries; retrying");
                    tokio::time::sleep(OUTBOX_ERROR_PAUSE).await;
                    continue;
                }
            };
            if batch.is_empty() {
                if closing {
                    return;
                }
                if self.ctx.watching.swap(true, Ordering::AcqRel) {
                    // Another idle worker watches the outbox (its notifier and the next retry):
                    // wait until a worker that found work wakes this one.
                    tokio::select! {
                        () = self.ctx.idle.notified() => {}
                        _ = self.closing.changed() => {}
                    }
                    continue;
                }
                let wait = match self.outbox.next_due(self.ctx.channel).await {
                    Ok(Some(wait)) => wait.max(Duration::from_millis(1)),
                    Ok(None) | Err(_) => IDLE_WAIT,
                };
                tokio::select! {
                    () = &mut notified => {}
                    () = tokio::time::sleep(wait) => {}
                    _ = self.closing.changed() => {}
                }
                self.ctx.watching.store(false, Ordering::Release);
                continue;
            }
            // While this worker delivers, one more looks for work.
            self.ctx.idle.notify_one();
            self.deliver(batch).await;
        }
    }

    /// Sends a claim as batches of at most `batch_size`, in claim order, and settles each batch
    /// as it answers, in claim order: after a failed delivery, the later ones of its key in the
    /// claim are put back behind it (ADR 0002). When the sink allows several batches of a key in
    /// flight (ADR 0012), up to that many are sent at once and the next starts as the oldest
    /// answers, so the sink's pipeline stays full across the claim (ADR 0025); on an ordered
    /// channel, after a batch with a failure no further batch of the claim starts (they are put
    /// back, no attempt counted).
    async fn deliver(&self, batch: Vec<Delivery>) {
        let (mut batch, held) = self.pace(batch);
        if batch.is_empty() {
            self.settle(held).await;
            return;
        }
        if let (Some(limit), Some(reference)) = (self.ctx.reference_above, &self.reference) {
            for delivery in &mut batch {
                if delivery.payload().len() > limit {
                    delivery.body = Some(reference(delivery));
                }
            }
        }
        let ctx = &self.ctx;
        let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
        let sending = async {
            let mut chunks = batch.chunks(ctx.batch_size);
            let mut window = Window::default();
            let mut failed = false;
            loop {
                while window.len() < ctx.in_flight && !failed {
                    let Some(chunk) = chunks.next() else { break };
                    ctx.counters.batches.fetch_add(1, Ordering::Relaxed);
                    window.push(send_batch(ctx, chunk));
                }
                let Some((chunk, answer)) = window.next().await else {
                    break;
                };
                // On an ordered channel a failure blocks its key for the rest of the claim; later
                // batches would only be put back (unordered ones have nothing to wait for).
                failed |= ctx.ordered && answer.failed();
                if answers.send((chunk, answer)).is_err() {
                    break;
                }
            }
            // Closed: the settling side settles the rest.
            drop(answers);
        };
        let settling = async {
            let mut blocked: HashSet<&str> = HashSet::new();
            let mut done = 0;
            while let Some((chunk, answer)) = answered.recv().await {
                done += chunk.len();
                if !self.conclude(chunk, answer, &mut blocked).await {
                    return;
                }
            }
            // Not started (a batch before them failed) or postponed by `pace`: put back.
            let mut rest: Vec<Settlement> = batch
                .get(done..)
                .unwrap_or_default()
                .iter()
                .map(|delivery| Settlement {
                    id: delivery.id,
                    outcome: Outcome::Requeue,
                    attempt: None,
                })
                .collect();
            rest.extend(held);
            self.settle(rest).await;
        };
        tokio::join!(sending, settling);
    }

    /// Settles one batch of a claim from the sink's answer (`blocked`: the ordering keys that
    /// failed earlier in the claim, whose later deliveries are put back). `false` when the outbox
    /// could not record it and the dispatcher is shutting down.
    async fn conclude<'a>(
        &self,
        chunk: &'a [Delivery],
        answer: Answer,
        blocked: &mut HashSet<&'a str>,
    ) -> bool {
        let ctx = &self.ctx;
        let mut failures: Vec<Option<SinkError>> = chunk.iter().map(|_| None).collect();
        match answer.sent {
            Err(_) => {
                let timeout = ctx.config.send_timeout;
                for slot in &mut failures {
                    *slot = Some(SinkError::new(
                        ctx.channel,
                        ErrorKind::Timeout,
                        format!("the sink did not answer within {timeout:?}"),
                    ));
                }
            }
            Ok(Err(error)) => {
                for slot in &mut failures {
                    *slot = Some(error.duplicate());
                }
            }
            Ok(Ok(report)) => {
                for (index, error) in report.into_failures() {
                    if let Some(slot) = failures.get_mut(index) {
                        *slot = Some(error);
                    }
                }
            }
        }
        if let Some(hook) = &self.on_attempt {
            for (delivery, failure) in chunk.iter().zip(&failures) {
                hook(AttemptNotice {
                    delivery,
                    started: answer.started,
                    elapsed: answer.elapsed,
                    error: failure.as_ref(),
                });
            }
        }
        let latency = answer.elapsed;
        let mut attempted: Vec<(&Delivery, Option<String>)> = Vec::with_capacity(chunk.len());
        let mut settlements = Vec::with_capacity(chunk.len());
        let mut dead = Vec::new();
        let now = chrono::Utc::now();
        for (delivery, failure) in chunk.iter().zip(failures) {
            // The key computed when the event was routed (`None`: the channel is unordered).
            let key = delivery.ordering_key.as_deref();
            if let Some(key) = key
                && blocked.contains(key)
            {
                // An earlier delivery of this key failed in this claim: send this one again after it.
                settlements.push(Settlement {
                    id: delivery.id,
                    outcome: Outcome::Requeue,
                    attempt: None,
                });
                continue;
            }
            let attempt = Attempt {
                latency,
                status: failure.as_ref().and_then(SinkError::status),
            };
            attempted.push((delivery, failure.as_ref().map(ToString::to_string)));
            let outcome = match failure {
                None => {
                    ctx.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    let waited = (now - delivery.envelope.date_time())
                        .num_microseconds()
                        .unwrap_or(0);
                    #[allow(clippy::cast_precision_loss)]
                    ctx.counters.observe_latency(waited as f64 / 1e6);
                    Outcome::Delivered
                }
                Some(error) => {
                    ctx.counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    if error.kind() == ErrorKind::RateLimited
                        && let Retry::After(delay) = error.retry()
                    {
                        // The receiver asked to slow down: its destination waits that long.
                        ctx.pacer.slow_down(delivery, delay, Instant::now());
                    }
                    match ctx.config.retry.decide(delivery.attempt, &error) {
                        Decision::RetryAfter(delay) => {
                            ctx.counters.retried.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(
                                channel = %ctx.channel, delivery = delivery.id, attempt = delivery.attempt,
                                destination = %delivery.destination.label(), ?delay, %error, "delivery failed; will retry"
                            );
                            if let Some(key) = key {
                                blocked.insert(key);
                            }
                            Outcome::Retry {
                                delay,
                                error: error.to_string(),
                            }
                        }
                        Decision::Dead(reason) => {
                            ctx.counters.dead.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                channel = %ctx.channel, delivery = delivery.id, event = %delivery.envelope.id(),
                                attempt = delivery.attempt, destination = %delivery.destination.label(),
                                %reason, %error, "delivery is dead"
                            );
                            let status = error.status();
                            let error = format!("{reason}: {error}");
                            if self.on_dead.is_some() {
                                dead.push(DeadNotice {
                                    delivery: delivery.clone(),
                                    error: error.clone(),
                                    status,
                                });
                            }
                            Outcome::Dead { error }
                        }
                    }
                }
            };
            settlements.push(Settlement {
                id: delivery.id,
                outcome,
                attempt: Some(attempt),
            });
        }
        let disabled = ctx.health.record(
            attempted.iter().map(|(d, e)| (*d, e.as_deref())),
            ctx.config.disable_after,
            now,
        );
        if !self.settle(settlements).await {
            return false;
        }
        if let Some(hook) = &self.on_disabled {
            for notice in disabled {
                tracing::warn!(
                    channel = %ctx.channel, instance = %notice.health.instance,
                    destination = %notice.health.destination, failures = notice.health.consecutive_failures,
                    "every attempt failed for the whole window: the destination is disabled"
                );
                hook(notice);
            }
        }
        if let Some(hook) = &self.on_dead {
            for notice in dead {
                hook(notice);
            }
        }
        true
    }
}

impl Worker {
    /// Splits a claim into what goes now and what its destinations cannot take yet (a rate limit,
    /// a receiver that asked to slow down): those are postponed to their slot, without an attempt,
    /// and the later deliveries of their ordering keys put back behind them.
    fn pace(&self, batch: Vec<Delivery>) -> (Vec<Delivery>, Vec<Settlement>) {
        let now = Instant::now();
        let mut held = Vec::new();
        let mut blocked: HashSet<Arc<str>> = HashSet::new();
        let mut go = Vec::with_capacity(batch.len());
        for delivery in batch {
            if let Some(key) = &delivery.ordering_key
                && blocked.contains(key)
            {
                held.push(Settlement {
                    id: delivery.id,
                    outcome: Outcome::Requeue,
                    attempt: None,
                });
                continue;
            }
            if self.ctx.health.hold(&delivery) {
                held.push(Settlement {
                    id: delivery.id,
                    outcome: Outcome::Dead {
                        error:
                            "held: the destination is disabled (every attempt failed for the whole window); \
                                enable it again to redrive"
                                .to_owned(),
                    },
                    attempt: None,
                });
                continue;
            }
            match self.ctx.pacer.admit(&delivery, now) {
                Pace::Go => go.push(delivery),
                Pace::Wait(delay) => {
                    if let Some(key) = &delivery.ordering_key {
                        blocked.insert(Arc::clone(key));
                    }
                    held.push(Settlement {
                        id: delivery.id,
                        outcome: Outcome::Postpone { delay },
                        attempt: None,
                    });
                }
            }
        }
        (go, held)
    }

    /// Records outcomes, retrying until the outbox takes them (storage full or failing), since
    /// otherwise the deliveries would stay claimed until the next start. `false` when it gave up
    /// because the dispatcher is shutting down.
    async fn settle(&self, settlements: Vec<Settlement>) -> bool {
        if settlements.is_empty() {
            return true;
        }
        let mut pause = OUTBOX_ERROR_PAUSE;
        while let Err(e) = self.outbox.settle(settlements.clone()).await {
            tracing::error!(channel = %self.ctx.channel, error = %e, ?pause, "cannot record delivery outcomes; retrying");
            if *self.closing.borrow() {
                // Shutting down: a durable outbox puts in-flight deliveries back at the next start.
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_OUTBOX_ERROR_PAUSE);
        }
        true
    }
}

/// The sends of a claim in flight, oldest first. Every wake polls each unfinished one in claim
/// order — so each is first polled in claim order, what a sink with several batches of a key in
/// flight relies on to keep them in order (ADR 0012) — and the oldest's output is taken once it
/// is done.
struct Window<F: Future> {
    sends: VecDeque<InFlight<F>>,
}

/// A send, and its output once it is done.
type InFlight<F> = (Pin<Box<F>>, Option<<F as Future>::Output>);

impl<F: Future> Default for Window<F> {
    fn default() -> Self {
        Self {
            sends: VecDeque::new(),
        }
    }
}

impl<F: Future> Window<F> {
    fn len(&self) -> usize {
        self.sends.len()
    }

    fn push(&mut self, send: F) {
        self.sends.push_back((Box::pin(send), None));
    }

    /// The oldest send's output once it is done; `None` when the window is empty.
    async fn next(&mut self) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            for (send, output) in &mut self.sends {
                if output.is_none()
                    && let Poll::Ready(value) = send.as_mut().poll(cx)
                {
                    *output = Some(value);
                }
            }
            match self.sends.front() {
                None => Poll::Ready(None),
                Some((_, Some(_))) => Poll::Ready(self.sends.pop_front().and_then(|(_, output)| output)),
                Some((_, None)) => Poll::Pending,
            }
        })
        .await
    }
}

/// Hands one batch of a claim to the sink, within the send timeout.
async fn send_batch<'a>(ctx: &ChannelCtx, chunk: &'a [Delivery]) -> (&'a [Delivery], Answer) {
    let (started, wall) = (Instant::now(), std::time::SystemTime::now());
    let sent = tokio::time::timeout(ctx.config.send_timeout, ctx.sink.send(chunk)).await;
    (
        chunk,
        Answer {
            sent,
            elapsed: started.elapsed(),
            started: wall,
        },
    )
}

/// What the sink answered for one batch of a claim.
struct Answer {
    /// `Err`: it did not answer within the send timeout.
    sent: Result<Result<DeliveryReport, SinkError>, tokio::time::error::Elapsed>,
    elapsed: Duration,
    /// When the batch was handed to the sink (wall clock).
    started: std::time::SystemTime,
}

impl Answer {
    /// Whether any delivery of the batch failed.
    fn failed(&self) -> bool {
        !matches!(&self.sent, Ok(Ok(report)) if report.is_success())
    }
}
