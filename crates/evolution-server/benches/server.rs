//! End-to-end benchmarks of the server binary (release build, SQLite outbox, loopback only):
//!
//! - `throughput`: a **ceiling** first — a bare axum handler in this process that reads the same
//!   JSON body, checks the `apikey` header in constant time and answers `202 {"ids": […]}` without
//!   storing anything — then events accepted per second by `POST /events` (single events and
//!   batches) and events accepted and delivered per second to a loopback webhook receiver
//!   (unsigned and signed), each with its ratio to the ceiling measured in the same run; batch
//!   ingest also against the SQLite outbox's own enqueue rate (same shape, measured in this
//!   process in the same run). The load generator is `wrk` (64 keep-alive connections for single
//!   events, the seed event as the body, 16 instances in turn; `benches/post_events.lua`). The
//!   same single-event ingest and single events → webhook also run on **PostgreSQL**
//!   (`EVOLUTION_TEST_POSTGRES`), with one replica and with three (one wrk thread per replica, 21
//!   connections each), each scenario in a fresh schema dropped at its end; a second table gives
//!   what each PostgreSQL scenario cost per event: rows written by table, WAL bytes, commits per
//!   second, and the CPU time of the server processes and of PostgreSQL (see `Probe`);
//! - `postgres` (only when named): the ceiling and the PostgreSQL rows of `throughput` alone;
//! - `latency`: p50/p99 from the moment an event is due to be posted until its `202`, and until it
//!   reaches a webhook receiver and a NATS subscriber, at a fixed offered rate below saturation;
//! - `isolation`: healthy webhook + NATS delivery with and without one extra instance whose
//!   webhook never answers;
//! - `footprint`: server RSS idle, with 1 000 000 pending deliveries (receiver down), the time to
//!   drain them once the receiver is back; then the SQLite files' size under a steady load of
//!   1 000 000 events with a short retention (`OUTBOX_RETENTION=1s`), and after pruning;
//! - `instances`: durable single-event ingest with 16 and with 10 000 instances, authorized by the
//!   global key and by each instance's own token (what finding the instance costs as a deployment
//!   grows), with the ceiling's ratio;
//! - `generators` (only when named): the ceiling driven by the reqwest generator of `latency`,
//!   `isolation` and `footprint` against `wrk`, to show which one can drive it at full speed.
//!
//! Run: `cargo bench -p evolution-server --bench server [-- SCENARIO…]` (all but `generators` by
//! default). `throughput` needs `wrk` (`apt-get install wrk`; `scripts/bench` installs it) and
//! PostgreSQL (`EVOLUTION_TEST_POSTGRES`); the `latency` and `isolation` scenarios need NATS
//! (`EVOLUTION_TEST_NATS_URL`); both from `scripts/services env`. `BENCH_ONLY=text` runs the
//! ceiling and only the `throughput` rows whose label, with its storage, holds `text` (`signed`,
//! `SQLite`, `PostgreSQL, 3 replicas`). The PostgreSQL rows run after every SQLite row. Prints
//! Markdown tables; `docs/benchmarks.md` records the results.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{API_KEY, Server};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// A receiver that only counts (so it is never the bottleneck).
async fn counting_receiver() -> (String, Arc<AtomicU64>) {
    counting_receiver_on(0).await
}

/// [`counting_receiver`] on `port` (0: any free port).
async fn counting_receiver_on(port: u16) -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    let app = axum::Router::new().fallback(move || {
        let c = Arc::clone(&c);
        async move {
            c.fetch_add(1, Ordering::Relaxed);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, count)
}

/// A receiver that accepts connections and never answers.
async fn stalled_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

fn payload(i: usize) -> Value {
    json!({"event": "MESSAGES_UPSERT", "sender": "5511999999999@s.whatsapp.net", "data": {
        "key": {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": false, "id": format!("MSG{i:08}")},
        "message": {"conversation": "x".repeat(800)}, "messageTimestamp": "1234567890"}})
}

/// Posts `total` events to `instances` round-robin from `producers` tasks, `per_request` per
/// request; returns events/s.
async fn ingest(
    server: &Server,
    instances: &[String],
    producers: usize,
    per_request: usize,
    total: usize,
) -> f64 {
    let requests = total / per_request;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|_| {
            let client = server.client.clone();
            let base = server.url("");
            let next = Arc::clone(&next);
            let instances = instances.to_vec();
            tokio::spawn(async move {
                loop {
                    let n = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap();
                    if n >= requests {
                        break;
                    }
                    let instance = &instances[n % instances.len()];
                    let body = if per_request == 1 {
                        payload(n)
                    } else {
                        Value::Array((0..per_request).map(|i| payload(n * per_request + i)).collect())
                    };
                    let resp = client
                        .post(format!("{base}/events/{instance}"))
                        .header("apikey", API_KEY)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 202, "{}", resp.text().await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = (requests * per_request) as f64 / start.elapsed().as_secs_f64();
    rate
}

async fn setup(
    name: &str,
    instances: usize,
    hook: Option<&str>,
    env: &[(&str, &str)],
) -> (Server, Vec<String>) {
    let (mut servers, names) = start_servers(name, 1, instances, hook, env).await;
    (servers.remove(0), names)
}

/// Starts `replicas` servers with `env` (replicas share their database through it) and creates
/// `instances` instances through the first one, with a webhook to `hook` if given, before the
/// others start (so that they find the instances at start).
async fn start_servers(
    name: &str,
    replicas: usize,
    instances: usize,
    hook: Option<&str>,
    env: &[(&str, &str)],
) -> (Vec<Server>, Vec<String>) {
    let first = Server::start(name, env).await;
    let mut names = Vec::new();
    for i in 0..instances {
        let name = format!("bench-{i}");
        let mut body = json!({"instanceName": name});
        if let Some(url) = hook {
            body["webhook"] = json!({"url": url, "events": ["MESSAGES_UPSERT"]});
        }
        let (status, resp) = first
            .call("POST", "/instance/create", Some(API_KEY), Some(body))
            .await;
        assert_eq!(status, 201, "{resp}");
        names.push(name);
    }
    let mut servers = vec![first];
    for i in 1..replicas {
        servers.push(Server::start(&format!("{name}-{i}"), env).await);
    }
    (servers, names)
}

async fn wait_delivered(count: &AtomicU64, expected: u64, start: Instant) -> f64 {
    let deadline = start + Duration::from_secs(600);
    while count.load(Ordering::Relaxed) < expected {
        assert!(
            Instant::now() < deadline,
            "delivery stalled at {} of {expected}",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = expected as f64 / start.elapsed().as_secs_f64();
    rate
}

/// One table row: a label and its values.
type Rows = Vec<Vec<String>>;

/// A row of a `| measure | result |` table.
fn row(label: impl Into<String>, value: impl Into<String>) -> Vec<String> {
    vec![label.into(), value.into()]
}

/// Accepting single events (the throughput scenarios' load and the ceiling's): 64 keep-alive
/// connections at full speed.
const CONNECTIONS: usize = 64;
/// How long `wrk` drives an ingest (and the ceiling).
const INGEST_TIME: Duration = Duration::from_secs(8);
/// How long `wrk` drives a scenario that also waits for the deliveries.
const DELIVER_TIME: Duration = Duration::from_secs(5);
/// `WEBHOOK_SIGNING_SECRET` of the signed scenario (Standard Webhooks, `whsec_` + base64).
const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The body of one request: the seed event alone, or an array of `n` of them.
fn body(n: usize) -> Vec<u8> {
    let event = common::seed_event("MESSAGES_UPSERT");
    let value = if n == 1 {
        event
    } else {
        Value::Array(vec![event; n])
    };
    serde_json::to_vec(&value).unwrap()
}

/// The event of a `POST /events` body, as the server reads it.
#[derive(serde::Deserialize)]
struct EventInput {
    event: String,
    #[serde(default)]
    #[allow(dead_code)]
    data: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    #[allow(dead_code)]
    sender: Option<String>,
}

/// Compares two byte strings in time that depends only on their lengths (as the server does).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The ceiling's `POST /events/{instance}`: the server's request handling without the server —
/// the `apikey` header checked in constant time, the body read as the server reads it (one event
/// or an array, each event name parsed), `202 {"ids": […]}` with a fresh id per event; nothing
/// stored, nothing delivered.
async fn accept(
    headers: axum::http::HeaderMap,
    axum::extract::Path(_instance): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let key = headers.get("apikey").and_then(|v| v.to_str().ok());
    if !key.is_some_and(|k| constant_time_eq(k.as_bytes(), API_KEY.as_bytes())) {
        return (StatusCode::UNAUTHORIZED, "invalid `apikey`").into_response();
    }
    let is_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let inputs: Result<Vec<EventInput>, _> = if is_array {
        serde_json::from_slice(&body)
    } else {
        serde_json::from_slice(&body).map(|one| vec![one])
    };
    let Ok(inputs) = inputs else {
        return (StatusCode::BAD_REQUEST, "invalid event body").into_response();
    };
    if inputs
        .iter()
        .any(|i| evolution_events::EventKind::parse(&i.event).is_err())
    {
        return (StatusCode::BAD_REQUEST, "unknown event").into_response();
    }
    let ids: Vec<evolution_events::Uuid> = inputs.iter().map(|_| evolution_events::Uuid::now_v7()).collect();
    (StatusCode::ACCEPTED, axum::Json(json!({ "ids": ids }))).into_response()
}

/// Starts the ceiling on a free loopback port; its base URL.
async fn ceiling() -> String {
    let app = axum::Router::new().route("/events/{instance}", axum::routing::post(accept));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// What one `wrk` run did.
#[derive(Clone, Copy, Debug)]
struct Load {
    /// Requests answered (every one 2xx: checked).
    requests: u64,
    /// From the first connection to the end.
    seconds: f64,
    /// Keep-alive connections (over every server driven).
    connections: usize,
}

impl Load {
    #[allow(clippy::cast_precision_loss)]
    fn rate(self, per_request: usize) -> f64 {
        (self.requests * per_request as u64) as f64 / self.seconds
    }
}

/// Runs `wrk` against `base` for `time`: `connections` keep-alive connections at full speed,
/// each request `POST /events/<instance>` with `body`, the instances in turn (the global key).
/// Panics when `wrk` is missing, fails, or any request failed or was not answered 2xx.
async fn wrk(base: &str, instances: &[String], body: &[u8], connections: usize, time: Duration) -> Load {
    wrk_on(&[base.to_owned()], instances, body, connections, time).await
}

/// [`wrk`] with each instance's own token as its requests' `apikey` (`keys[i]` for
/// `instances[i]`).
async fn wrk_keys(
    base: &str,
    instances: &[String],
    keys: &[String],
    body: &[u8],
    connections: usize,
    time: Duration,
) -> Load {
    wrk_with(&[base.to_owned()], instances, Some(keys), body, connections, time).await
}

/// [`wrk`] spread over the servers at `bases` (replicas of one database, on one host): one wrk
/// thread per server when there are several, each with the same share of `connections` (rounded
/// down to a multiple of the servers), its rate the sum over them all.
async fn wrk_on(
    bases: &[String],
    instances: &[String],
    body: &[u8],
    connections: usize,
    time: Duration,
) -> Load {
    wrk_with(bases, instances, None, body, connections, time).await
}

async fn wrk_with(
    bases: &[String],
    instances: &[String],
    keys: Option<&[String]>,
    body: &[u8],
    connections: usize,
    time: Duration,
) -> Load {
    let dir = common::temp_dir("bench-wrk");
    let body_file = dir.join("body.json");
    std::fs::write(&body_file, body).unwrap();
    let instances_file = dir.join("instances.txt");
    std::fs::write(&instances_file, instances.join("\n")).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/post_events.lua");
    let (threads, connections) = match bases.len() {
        0 | 1 => (connections.min(2), connections),
        n => (n, connections / n * n),
    };
    let ports: Vec<&str> = bases
        .iter()
        .filter_map(|b| b.trim_end_matches('/').rsplit(':').next())
        .collect();
    let mut command = std::process::Command::new("wrk");
    command
        .args(["-t", &threads.to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-d", &format!("{}s", time.as_secs())])
        .args(["--timeout", "60s", "-s", script, &bases[0]])
        .env("WRK_BODY_FILE", &body_file)
        .env("WRK_INSTANCES_FILE", &instances_file)
        .env("WRK_APIKEY", API_KEY);
    if let Some(keys) = keys {
        let keys_file = dir.join("keys.txt");
        std::fs::write(&keys_file, keys.join("\n")).unwrap();
        command.env("WRK_APIKEYS_FILE", keys_file);
    }
    if bases.len() > 1 {
        command.env("WRK_PORTS", ports.join(","));
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("cannot run wrk ({e}): install it (`apt-get install wrk`; scripts/bench does)")
        });
    std::fs::remove_dir_all(&dir).ok();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "wrk failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("wrk-result "))
        .unwrap_or_else(|| panic!("no wrk-result line in wrk's output: {stdout}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in `{line}`"))
    };
    let failed: u64 = ["connect", "read", "write", "status", "timeout"]
        .iter()
        .map(|f| field(f))
        .sum();
    assert_eq!(failed, 0, "failed or non-2xx requests: {line}");
    #[allow(clippy::cast_precision_loss)]
    let seconds = field("duration_us") as f64 / 1e6;
    Load {
        requests: field("requests"),
        seconds,
        connections,
    }
}

/// The SQLite outbox's own enqueue rate in this process, on a temporary file with its default
/// options: 200 000 events of the seed event's shape in batches of 500 over 16 instances, one
/// ordered webhook delivery each, from 8 concurrent tasks (the shape of the server's batch
/// ingest). The events are built before the clock starts.
async fn outbox_enqueue_rate(hook: &str) -> f64 {
    use evolution_events::{
        Channel, Destination, EventEnvelope, EventKind, InstanceName, NamingProfile, Scope, WebhookTarget,
    };
    use evolution_outbox::{NewDelivery, NewEvent, Outbox as _, SqliteOptions, SqliteOutbox};
    const BATCHES: usize = 400;
    const PER_BATCH: usize = 500;
    let dir = common::temp_dir("bench-outbox");
    let outbox = Arc::new(
        SqliteOutbox::open(&dir.join("outbox.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let data = serde_json::value::to_raw_value(&common::seed_event("MESSAGES_UPSERT")["data"]).unwrap();
    let destination = Arc::new(Destination::Webhook(WebhookTarget {
        rate_limit: None,
        url: hook.to_owned(),
        headers: Vec::new(),
        signing_secrets: Vec::new(),
        payload_destination: None,
        base64: true,
    }));
    let batches: Vec<Vec<NewEvent>> = (0..BATCHES)
        .map(|b| {
            let instance = InstanceName::new(&format!("bench-{}", b % 16)).unwrap();
            let key: Arc<str> = Arc::from(format!("{instance}\u{1f}{}", destination.label()));
            (0..PER_BATCH)
                .map(|_| NewEvent {
                    envelope: EventEnvelope::new(EventKind::MessagesUpsert, instance.clone(), data.clone()),
                    profile: NamingProfile::Seed,
                    deliveries: vec![NewDelivery {
                        channel: Channel::Webhook,
                        scope: Scope::Instance,
                        destination: Arc::clone(&destination),
                        ordering_key: Some(Arc::clone(&key)),
                    }],
                })
                .collect()
        })
        .collect();
    let queue = Arc::new(Mutex::new(batches));
    let start = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (outbox, queue) = (Arc::clone(&outbox), Arc::clone(&queue));
            tokio::spawn(async move {
                loop {
                    let Some(batch) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    outbox.enqueue(batch).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = (BATCHES * PER_BATCH) as f64 / start.elapsed().as_secs_f64();
    outbox.close().await;
    std::fs::remove_dir_all(&dir).ok();
    rate
}

/// `0.13×`.
fn ratio(rate: f64, of: f64) -> String {
    format!("{:.3}×", rate / of)
}

/// A row whose ratio needs the ceiling, known at the end of the run.
type Later = Box<dyn FnOnce(f64) -> Vec<String>>;

/// Where the servers of a throughput scenario keep their outbox.
#[derive(Clone, Copy, Debug)]
enum Storage {
    /// One server on a SQLite file of its own (the default).
    Sqlite,
    /// `replicas` servers sharing a fresh schema of the PostgreSQL database of
    /// [`postgres_url`], dropped at the end of the scenario.
    Postgres { replicas: usize },
}

impl Storage {
    fn label(self) -> String {
        match self {
            Self::Sqlite => "SQLite".to_owned(),
            Self::Postgres { replicas: 1 } => "PostgreSQL, 1 replica".to_owned(),
            Self::Postgres { replicas } => format!("PostgreSQL, {replicas} replicas"),
        }
    }
}

/// The PostgreSQL database of the PostgreSQL rows (`EVOLUTION_TEST_POSTGRES`, from
/// `scripts/services env`; `?options[synchronous_commit]=off` and the like set PostgreSQL
/// settings for the servers' connections).
fn postgres_url() -> String {
    std::env::var("EVOLUTION_TEST_POSTGRES")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "EVOLUTION_TEST_POSTGRES is not set: run `eval \"$(scripts/services env)\"` first \
                 (postgresql://postgres@127.0.0.1:5432/postgres here)"
            )
        })
}

/// The servers of one throughput scenario and, on PostgreSQL, their schema and the [`Probe`] of
/// what they cost PostgreSQL. (Fields drop in order: the servers stop before the schema goes.)
struct Cluster {
    servers: Vec<Server>,
    names: Vec<String>,
    postgres: Option<(Probe, common::Schema)>,
}

impl Cluster {
    /// Starts the servers of `storage` with 16 instances (each with a webhook to `hook`, if given)
    /// and `env`; on PostgreSQL, in a fresh schema, and the probe starts counting.
    async fn start(name: &str, storage: Storage, hook: Option<&str>, env: &[(&str, &str)]) -> Self {
        let Storage::Postgres { replicas } = storage else {
            let (servers, names) = start_servers(name, 1, 16, hook, env).await;
            return Self {
                servers,
                names,
                postgres: None,
            };
        };
        let url = postgres_url();
        let schema = common::Schema::new(&url, &format!("bench_{}", common::unique()));
        let mut env = env.to_vec();
        env.extend([
            ("DATABASE_CONNECTION_URI", url.as_str()),
            ("OUTBOX_SCHEMA", schema.name.as_str()),
        ]);
        let (servers, names) = start_servers(name, replicas, 16, hook, &env).await;
        let probe = Probe::start(&url, &schema.name, &servers).await;
        Self {
            servers,
            names,
            postgres: Some((probe, schema)),
        }
    }

    fn bases(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.url("")).collect()
    }

    /// Stops the servers. On PostgreSQL: what the scenario cost it (`events` events over
    /// `seconds`, the scenario's own clock), then the schema is dropped.
    async fn finish(self, events: u64, seconds: f64) -> Option<Cost> {
        let Self {
            servers, postgres, ..
        } = self;
        let Some((probe, schema)) = postgres else {
            drop(servers);
            return None;
        };
        let cost = probe.finish(servers, events, seconds).await;
        drop(schema);
        Some(cost)
    }
}

/// Rows inserted, updated and deleted, by table of the schema (`pg_stat_user_tables`).
type TableRows = BTreeMap<String, [i64; 3]>;

/// CPU time so far, in clock ticks: of the server processes, of every PostgreSQL process (by pid),
/// of this process with its children that have ended (the receivers and wrk), and of the whole
/// machine (busy, from `/proc/stat`).
struct CpuSample {
    at: Instant,
    servers: u64,
    postgres: HashMap<u32, u64>,
    bench: u64,
    machine: u64,
}

/// What a PostgreSQL scenario costs, measured from outside the servers: PostgreSQL's counters
/// (rows written per table of the scenario's schema, the WAL position, the database's commits) and
/// CPU time from `/proc` (the server processes; PostgreSQL's backends serving them, found by their
/// client ports; the rest of PostgreSQL: WAL writer, checkpointer, autovacuum, other clients).
/// The WAL and the commits are the whole cluster's and database's: on a machine shared with other
/// work they include it.
struct Probe {
    conn: sqlx::PgConnection,
    schema: String,
    /// The port PostgreSQL listens on (the servers' connections go there).
    port: u16,
    /// The postmaster's pid, when PostgreSQL runs on this machine (else no PostgreSQL CPU).
    postmaster: Option<u32>,
    /// `synchronous_commit` and `commit_delay` of the servers' connections.
    settings: String,
    replicas: usize,
    tables: TableRows,
    commits: i64,
    lsn: String,
    cpu: CpuSample,
}

impl Probe {
    async fn start(url: &str, schema: &str, servers: &[Server]) -> Self {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at EVOLUTION_TEST_POSTGRES: {e}"));
        let (port, backend, settings): (Option<i32>, i32, String) = sqlx::query_as(
            "SELECT inet_server_port(), pg_backend_pid(), \
               'synchronous_commit=' || current_setting('synchronous_commit') \
               || ', commit_delay=' || current_setting('commit_delay')",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        // Settings given in the URI (`?options[name]=value`) apply to the servers' connections too.
        let given: Vec<String> = url::Url::parse(url)
            .map(|u| {
                u.query_pairs()
                    .filter_map(|(k, v)| {
                        Some(format!("{}={v}", k.strip_prefix("options[")?.strip_suffix(']')?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let settings = if given.is_empty() {
            settings
        } else {
            format!("{settings}; in the URI: {}", given.join(", "))
        };
        let port = port.and_then(|p| u16::try_from(p).ok()).unwrap_or(5432);
        let postmaster = u32::try_from(backend)
            .ok()
            .and_then(proc_stat)
            .map(|stat| stat.ppid);
        let tables = table_rows(&mut conn, schema).await;
        let commits = database_commits(&mut conn).await;
        let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let cpu = cpu_sample(servers, postmaster);
        Self {
            conn,
            schema: schema.to_owned(),
            port,
            postmaster,
            settings,
            replicas: servers.len(),
            tables,
            commits,
            lsn,
            cpu,
        }
    }

    /// Takes the CPU times and the WAL position, stops the servers, waits until their backends
    /// have exited (a backend flushes its statistics when it exits), then reads the rows and the
    /// commits.
    async fn finish(mut self, servers: Vec<Server>, events: u64, seconds: f64) -> Cost {
        let end = cpu_sample(&servers, self.postmaster);
        let wal: f64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
            .bind(&self.lsn)
            .fetch_one(&mut self.conn)
            .await
            .unwrap();
        let ports: Vec<i32> = servers
            .iter()
            .flat_map(|s| client_ports(s.child.id(), self.port))
            .collect();
        let backends: Vec<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1)")
                .bind(&ports)
                .fetch_all(&mut self.conn)
                .await
                .unwrap();
        drop(servers);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(&backends)
                .fetch_one(&mut self.conn)
                .await
                .unwrap();
            if left == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tables = table_rows(&mut self.conn, &self.schema).await;
        let rows = tables
            .into_iter()
            .map(|(table, now)| {
                let before = self.tables.get(&table).copied().unwrap_or_default();
                (table, [0, 1, 2].map(|i| now[i] - before[i]))
            })
            .collect();
        let commits = database_commits(&mut self.conn).await - self.commits;
        let delta =
            |pid: &u32, ticks: &u64| ticks.saturating_sub(self.cpu.postgres.get(pid).copied().unwrap_or(0));
        let ours: HashSet<u32> = backends.iter().filter_map(|p| u32::try_from(*p).ok()).collect();
        let (mut backend_ticks, mut other_ticks) = (0, 0);
        for (pid, ticks) in &end.postgres {
            if ours.contains(pid) {
                backend_ticks += delta(pid, ticks);
            } else {
                other_ticks += delta(pid, ticks);
            }
        }
        let tick = clock_tick();
        #[allow(clippy::cast_precision_loss)]
        let secs = |ticks: u64| ticks as f64 / tick;
        Cost {
            events,
            seconds,
            settings: self.settings.clone(),
            replicas: self.replicas,
            connections: backends.len(),
            rows,
            wal,
            commits,
            postgres_local: self.postmaster.is_some(),
            servers: secs(end.servers.saturating_sub(self.cpu.servers)),
            backends: secs(backend_ticks),
            rest: secs(other_ticks),
            bench: secs(end.bench.saturating_sub(self.cpu.bench)),
            machine: secs(end.machine.saturating_sub(self.cpu.machine)),
            window: end.at.duration_since(self.cpu.at).as_secs_f64(),
        }
    }
}

async fn table_rows(conn: &mut sqlx::PgConnection, schema: &str) -> TableRows {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE schemaname = $1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    rows.into_iter().map(|(t, i, u, d)| (t, [i, u, d])).collect()
}

async fn database_commits(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

/// Fields of `/proc/<pid>/stat`.
struct ProcStat {
    ppid: u32,
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// cutime + cstime: of the children waited for.
    children: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses): state, ppid, … utime (14th field), stime (15th).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(ProcStat {
        ppid: u32::try_from(number(1)?).ok()?,
        ticks: number(11)? + number(12)?,
        children: number(13)? + number(14)?,
    })
}

/// The CPU times of `servers`, of the postmaster and its children, and of the machine.
fn cpu_sample(servers: &[Server], postmaster: Option<u32>) -> CpuSample {
    let servers_ticks = servers
        .iter()
        .filter_map(|s| proc_stat(s.child.id()))
        .map(|s| s.ticks)
        .sum();
    let mut postgres = HashMap::new();
    if let Some(postmaster) = postmaster {
        for entry in std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(stat) = proc_stat(pid)
                && (pid == postmaster || stat.ppid == postmaster)
            {
                postgres.insert(pid, stat.ticks);
            }
        }
    }
    // The first line of /proc/stat: user nice system idle iowait irq softirq steal …
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_owned();
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .take(8)
                .filter_map(|x| x.parse().ok())
                .collect();
            let idle = v.get(3)? + v.get(4)?;
            Some(v.iter().sum::<u64>() - idle)
        })
        .unwrap_or(0);
    let bench = proc_stat(std::process::id()).map_or(0, |s| s.ticks + s.children);
    CpuSample {
        at: Instant::now(),
        servers: servers_ticks,
        postgres,
        bench,
        machine,
    }
}

/// Clock ticks per second of `/proc`'s CPU times (`getconf CLK_TCK`; 100 on Linux).
fn clock_tick() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The local ports of the TCP connections of process `pid` to port `to`: its PostgreSQL
/// connections (`pg_stat_activity.client_port`).
fn client_ports(pid: u32, to: u16) -> Vec<i32> {
    let inodes: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(inode)) = (f.get(1), f.get(2), f.get(9)) else {
                continue;
            };
            if port(remote) == Some(to)
                && inode.parse::<u64>().is_ok_and(|i| inodes.contains(&i))
                && let Some(p) = port(local)
            {
                ports.push(i32::from(p));
            }
        }
    }
    ports
}

/// What one PostgreSQL scenario cost (see [`Probe`]); CPU times in seconds.
struct Cost {
    events: u64,
    /// The scenario's time (wrk's run for ingest; first request → last delivery for delivery).
    seconds: f64,
    settings: String,
    replicas: usize,
    /// The servers' connections to PostgreSQL at the end (the pools grow with the load).
    connections: usize,
    rows: TableRows,
    /// WAL bytes written (the whole cluster).
    wal: f64,
    /// Transactions committed in the database.
    commits: i64,
    postgres_local: bool,
    servers: f64,
    backends: f64,
    rest: f64,
    /// This process (the receivers) and wrk.
    bench: f64,
    machine: f64,
    /// The CPU times' window: from the probe's start to the end of the scenario.
    window: f64,
}

/// The head of the PostgreSQL cost table.
const COST_HEAD: &[&str] = &[
    "PostgreSQL cost (per event unless said)",
    "events",
    "rows written (by table)",
    "WAL",
    "commits (every transaction of the database, reads included)",
    "CPU per event: servers / PostgreSQL backends / rest of PostgreSQL",
    "CPU busy, cores: servers / PostgreSQL / bench process and wrk / whole machine",
    "connections",
];

impl Cost {
    #[allow(clippy::cast_precision_loss)]
    fn row(&self, what: &str) -> Vec<String> {
        let events = self.events.max(1) as f64;
        let per = |n: i64| n as f64 / events;
        let written: i64 = self.rows.values().flatten().sum();
        // Per table, what rounds to at least 0.01 per event.
        let tables: Vec<String> = self
            .rows
            .iter()
            .filter_map(|(table, counts)| {
                let parts: Vec<String> = counts
                    .iter()
                    .zip(["ins", "upd", "del"])
                    .filter(|(n, _)| per(**n) >= 0.005)
                    .map(|(n, what)| format!("{:.2} {what}", per(*n)))
                    .collect();
                (!parts.is_empty()).then(|| format!("{table} {}", parts.join(", ")))
            })
            .collect();
        let us = |s: f64| s * 1e6 / events;
        let cores = |s: f64| s / self.window;
        let cpu = if self.postgres_local {
            (
                format!(
                    "{:.0} / {:.0} / {:.0} µs",
                    us(self.servers),
                    us(self.backends),
                    us(self.rest)
                ),
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2} of {}",
                    cores(self.servers),
                    cores(self.backends + self.rest),
                    cores(self.bench),
                    cores(self.machine),
                    std::thread::available_parallelism().map_or(1, usize::from)
                ),
            )
        } else {
            (
                format!("{:.0} µs / n/a (PostgreSQL elsewhere)", us(self.servers)),
                format!(
                    "{:.2} / n/a / {:.2} / {:.2}",
                    cores(self.servers),
                    cores(self.bench),
                    cores(self.machine)
                ),
            )
        };
        vec![
            format!("{what} ({})", self.settings),
            format!("{} in {:.1} s", self.events, self.seconds),
            format!("{:.2} ({})", per(written), tables.join("; ")),
            format!(
                "{:.0} B ({:.1} MB/s)",
                self.wal / events,
                self.wal / self.seconds / 1e6
            ),
            format!(
                "{:.0}/s, {:.1} events per commit",
                self.commits as f64 / self.seconds,
                events / self.commits.max(1) as f64
            ),
            cpu.0,
            cpu.1,
            format!(
                "{} for {}",
                self.connections,
                Storage::Postgres {
                    replicas: self.replicas
                }
                .label()
                .trim_start_matches("PostgreSQL, ")
            ),
        ]
    }
}

/// The throughput scenarios (`sqlite`: all of them; otherwise only the PostgreSQL rows, the
/// `postgres` scenario). The ceiling is measured at the start and at the end of the run (the
/// machine's load moves in between); every ratio is to the higher of the two. Returns the rows of
/// the PostgreSQL cost table (see [`Probe`]).
async fn throughput(rows: &mut Rows, sqlite: bool) -> Rows {
    let names: Vec<String> = (0..16).map(|i| format!("bench-{i}")).collect();
    let single = body(1);
    let label = |what: &str| format!("{what}, 16 instances, {CONNECTIONS} connections");
    let mut later: Vec<Later> = Vec::new();
    let mut costs = Rows::new();
    // PostgreSQL first: a run that would fail at its end fails now.
    {
        use sqlx::Connection as _;
        sqlx::PgConnection::connect(&postgres_url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at EVOLUTION_TEST_POSTGRES: {e}"));
    }

    // The ceiling: the same generator, body and connections against a handler that stores nothing.
    let ceiling_base = ceiling().await;
    let ceiling_start = wrk(&ceiling_base, &names, &single, CONNECTIONS, INGEST_TIME)
        .await
        .rate(1);

    // The durable accept path: every event is stored with its webhook delivery, and the receiver
    // never answers, so delivery work does not compete for the CPU.
    let stalled = stalled_receiver().await;
    // `BENCH_ONLY=text`: the ceiling and only the rows whose label (with its storage) holds `text`.
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |label: &str| only.as_deref().is_none_or(|text| label.contains(text));
    if sqlite && wanted("durable ingest, SQLite") {
        // Single events, then batches, pile up on this server for 2 × INGEST_TIME: room for them all.
        let (server, names) = setup(
            "bench-ingest",
            16,
            Some(&stalled),
            &[("EVENTS_MAX_BACKLOG", "50000000")],
        )
        .await;
        let base = server.url("");
        let single_rate = wrk(&base, &names, &single, CONNECTIONS, INGEST_TIME)
            .await
            .rate(1);
        let what = label(
            "durable ingest (stored with a webhook delivery each, receiver never answers), single events, OUTBOX_SYNCHRONOUS=full (default: survives a power loss)",
        );
        later.push(Box::new(move |ceiling| {
            vec![
                what,
                format!("{single_rate:.0} events/s"),
                ratio(single_rate, ceiling),
                "≥ 0.3× ceiling".into(),
            ]
        }));
        let batch_rate = wrk(&base, &names, &body(500), 8, INGEST_TIME).await.rate(500);
        drop(server);
        // The same single-event ingest with the faster durability setting (a killed process loses
        // nothing; a power loss may lose the last commits).
        let (server, names) = setup(
            "bench-ingest-normal",
            16,
            Some(&stalled),
            &[("OUTBOX_SYNCHRONOUS", "normal")],
        )
        .await;
        let normal_rate = wrk(&server.url(""), &names, &single, CONNECTIONS, INGEST_TIME)
            .await
            .rate(1);
        drop(server);
        let what = label(
            "durable ingest as above, single events, OUTBOX_SYNCHRONOUS=normal (survives a killed process, not a power loss)",
        );
        later.push(Box::new(move |ceiling| {
            vec![
                what,
                format!("{normal_rate:.0} events/s"),
                ratio(normal_rate, ceiling),
                String::new(),
            ]
        }));
        let outbox = outbox_enqueue_rate(&stalled).await;
        later.push(Box::new(move |_| {
            vec![
                "SQLite outbox alone (this process, default options): enqueue, batches of 500, 1 webhook delivery each, 8 tasks".into(),
                format!("{outbox:.0} events/s"),
                String::new(),
                String::new(),
            ]
        }));
        later.push(Box::new(move |_| {
            vec![
                "durable ingest (stored with a webhook delivery each, receiver never answers), batches of 500, 16 instances, 8 connections"
                    .into(),
                format!("{batch_rate:.0} events/s"),
                format!("{} outbox alone", ratio(batch_rate, outbox)),
                "≥ 0.8× outbox alone".into(),
            ]
        }));
    }

    // Accept and deliver to a loopback webhook receiver that answers 200 at once.
    let ordered = "single events → webhook, ordered per instance (default)";
    for (what, env, connections, per_request, bar, storage) in [
        (ordered, vec![], CONNECTIONS, 1, "", Storage::Sqlite),
        (
            "single events → webhook, ordered per instance (default), signed (WEBHOOK_SIGNING_SECRET)",
            vec![("WEBHOOK_SIGNING_SECRET", SIGNING_SECRET)],
            CONNECTIONS,
            1,
            "≥ 0.12× ceiling",
            Storage::Sqlite,
        ),
        (
            "single events → webhook, unordered (WEBHOOK_ORDERED=false)",
            vec![("WEBHOOK_ORDERED", "false")],
            CONNECTIONS,
            1,
            "",
            Storage::Sqlite,
        ),
        (
            "batches of 100 → webhook, ordered per instance (default)",
            vec![],
            8,
            100,
            "",
            Storage::Sqlite,
        ),
        (
            ordered,
            vec![],
            CONNECTIONS,
            1,
            "",
            Storage::Postgres { replicas: 1 },
        ),
        (
            ordered,
            vec![],
            CONNECTIONS,
            1,
            "",
            Storage::Postgres { replicas: 3 },
        ),
    ] {
        if !sqlite && matches!(storage, Storage::Sqlite) {
            continue;
        }
        if !wanted(&format!("{what}, {}", storage.label())) {
            continue;
        }
        let (url, count) = counting_receiver().await;
        // A request the receiver fails now and then (a connection closed under load) is retried
        // within 1–2 s instead of the default 5 s and more, which would stall an ordered instance.
        let mut env = env;
        env.extend([
            ("WEBHOOK_WORKERS", "64"),
            ("WEBHOOK_RETRY_MAX_ATTEMPTS", "100"),
            ("WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_MAX_DELAY_SECONDS", "2"),
        ]);
        let cluster = Cluster::start("bench-deliver", storage, Some(&url), &env).await;
        let start = Instant::now();
        let load = wrk_on(
            &cluster.bases(),
            &cluster.names,
            &body(per_request),
            connections,
            DELIVER_TIME,
        )
        .await;
        let accepted = load.rate(per_request);
        let events = load.requests * per_request as u64;
        let delivered = wait_delivered(&count, events, start).await;
        let what = match storage {
            Storage::Sqlite => format!("{what}, 16 instances, {} connections", load.connections),
            _ => format!(
                "{what}, {}, 16 instances, {} connections",
                storage.label(),
                load.connections
            ),
        };
        if let Some(cost) = cluster.finish(events, start.elapsed().as_secs_f64()).await {
            costs.push(cost.row(&format!("{what}: accepted and delivered")));
        }
        let accepted_what = format!("{what}: accepted");
        later.push(Box::new(move |ceiling| {
            vec![
                accepted_what,
                format!("{accepted:.0} events/s"),
                ratio(accepted, ceiling),
                String::new(),
            ]
        }));
        later.push(Box::new(move |ceiling| {
            vec![
                format!("{what}: accepted and delivered (first request → last delivery)"),
                format!("{delivered:.0} events/s"),
                ratio(delivered, ceiling),
                bar.into(),
            ]
        }));
    }

    // The same single-event durable ingest on PostgreSQL (after every SQLite row: PostgreSQL goes
    // on checkpointing and vacuuming after a scenario, which would slow the next one): one replica,
    // then three sharing the load
    // (one wrk thread per replica).
    for replicas in [1, 3] {
        let storage = Storage::Postgres { replicas };
        if !wanted(&format!("durable ingest, {}", storage.label())) {
            continue;
        }
        let cluster = Cluster::start(
            "bench-ingest-pg",
            storage,
            Some(&stalled),
            &[("EVENTS_MAX_BACKLOG", "50000000")],
        )
        .await;
        let load = wrk_on(
            &cluster.bases(),
            &cluster.names,
            &single,
            CONNECTIONS,
            INGEST_TIME,
        )
        .await;
        let rate = load.rate(1);
        let what = format!(
            "durable ingest as above, single events, {}, 16 instances, {} connections",
            storage.label(),
            load.connections
        );
        if let Some(cost) = cluster.finish(load.requests, load.seconds).await {
            costs.push(cost.row(&what));
        }
        later.push(Box::new(move |ceiling| {
            vec![
                what,
                format!("{rate:.0} events/s"),
                ratio(rate, ceiling),
                String::new(),
            ]
        }));
    }

    let ceiling_end = wrk(&ceiling_base, &names, &single, CONNECTIONS, INGEST_TIME)
        .await
        .rate(1);
    let ceiling = ceiling_start.max(ceiling_end);
    rows.push(vec![
        label("**ceiling**: bare axum handler (apikey checked, body read, 202 with ids, nothing stored), single events"),
        format!("{ceiling:.0} requests/s (start {ceiling_start:.0}, end {ceiling_end:.0})"),
        "1.000×".into(),
        String::new(),
    ]);
    rows.extend(later.into_iter().map(|row| row(ceiling)));
    costs
}

/// The ceiling driven by the reqwest generator (64 tasks, one event per request, the same seed
/// body, 16 instances) and by `wrk` (64 connections): which one drives it at full speed.
async fn generators(rows: &mut Rows) {
    let names: Vec<String> = (0..16).map(|i| format!("bench-{i}")).collect();
    let base = ceiling().await;
    let single = bytes::Bytes::from(body(1));
    let requests: u64 = 200_000;
    let next = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, next, base, names, single) = (
                client.clone(),
                Arc::clone(&next),
                base.clone(),
                names.clone(),
                single.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests {
                        break;
                    }
                    let instance = &names[usize::try_from(n).unwrap() % names.len()];
                    let resp = client
                        .post(format!("{base}/events/{instance}"))
                        .header("apikey", API_KEY)
                        .header("content-type", "application/json")
                        .body(single.clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 202);
                    resp.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    #[allow(clippy::cast_precision_loss)]
    let reqwest_rate = requests as f64 / start.elapsed().as_secs_f64();
    let wrk_rate = wrk(&base, &names, &single, CONNECTIONS, INGEST_TIME)
        .await
        .rate(1);
    rows.push(row(
        format!("ceiling driven by reqwest in the bench process ({CONNECTIONS} tasks, {requests} requests)"),
        format!("{reqwest_rate:.0} requests/s"),
    ));
    rows.push(row(
        format!(
            "ceiling driven by wrk ({CONNECTIONS} connections, {} s)",
            INGEST_TIME.as_secs()
        ),
        format!("{wrk_rate:.0} requests/s"),
    ));
}

/// When each event (by its number `n`, carried as `data.key.id = MSG{n}`) arrived.
type Arrivals = Arc<Mutex<HashMap<usize, Instant>>>;

fn event_number(body: &[u8]) -> Option<usize> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["data"]["key"]["id"].as_str()?.strip_prefix("MSG")?.parse().ok()
}

/// A webhook receiver that records when each event arrived.
async fn timing_receiver() -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let a = Arc::clone(&arrivals);
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let a = Arc::clone(&a);
        async move {
            let now = Instant::now();
            if let Some(n) = event_number(&body) {
                a.lock().unwrap().entry(n).or_insert(now);
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, arrivals)
}

/// A NATS subscriber on `subject` that records when each event arrived, skipping subjects that
/// contain `skip`.
async fn nats_subscriber(url: &str, subject: String, skip: Option<String>) -> Arrivals {
    let client = async_nats::connect(url).await.unwrap();
    let mut subscription = client.subscribe(subject).await.unwrap();
    client.flush().await.unwrap();
    let arrivals: Arrivals = Arc::default();
    let a = Arc::clone(&arrivals);
    tokio::spawn(async move {
        let _client = client;
        while let Some(message) = subscription.next().await {
            let now = Instant::now();
            if skip
                .as_deref()
                .is_some_and(|s| message.subject.as_str().contains(s))
            {
                continue;
            }
            if let Some(n) = event_number(&message.payload) {
                a.lock().unwrap().entry(n).or_insert(now);
            }
        }
    });
    arrivals
}

fn nats_url() -> String {
    std::env::var("EVOLUTION_TEST_NATS_URL").unwrap_or_else(|_| {
        panic!("EVOLUTION_TEST_NATS_URL is not set: run `eval \"$(scripts/services env)\"` first")
    })
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}", nanos % 0xffff_ffff)
}

/// The NATS settings of a server delivering every instance's `MESSAGES_UPSERT` under `prefix`.
fn nats_env(url: &str, prefix: &str) -> Vec<(String, String)> {
    [
        ("NATS_ENABLED", "true"),
        ("NATS_URI", url),
        ("NATS_PREFIX_KEY", prefix),
        ("NATS_GLOBAL_ENABLED", "true"),
        ("NATS_EVENTS_MESSAGES_UPSERT", "true"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Latencies from each event's due time to its arrival; (count, p50, p99, max).
fn latencies(due: &HashMap<usize, Instant>, arrivals: &HashMap<usize, Instant>) -> (usize, String) {
    let mut all: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(n, at)| due.get(n).map(|d| at.saturating_duration_since(*d)))
        .collect();
    all.sort();
    let text = format!(
        "p50 {}, p99 {}, max {}",
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default())
    );
    (all.len(), text)
}

/// Single events at a fixed rate (`BENCH_LATENCY_RATE`, default 1 000/s, for 10 s), each posted
/// at its due time whatever the earlier ones are doing, so a slow answer does not hide the wait of
/// the next (no coordinated omission), to 16 instances whose events go to a webhook receiver and
/// to NATS.
async fn latency(rows: &mut Rows) {
    let rate: u64 = std::env::var("BENCH_LATENCY_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(1_000);
    let events = usize::try_from(rate * 10).unwrap();
    let url = nats_url();
    let prefix = format!("lat{}", unique());
    let nats = nats_subscriber(&url, format!("{prefix}.>"), None).await;
    let (hook, webhook) = timing_receiver().await;
    let env = nats_env(&url, &prefix);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (server, names) = setup("bench-latency", 16, Some(&hook), &env).await;
    let accepted: Arrivals = Arc::default();
    let mut due = HashMap::new();
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(events);
    for n in 0..events {
        let at = start + Duration::from_micros(1_000_000 * n as u64 / rate);
        due.insert(n, at);
        tokio::time::sleep_until(at.into()).await;
        let client = server.client.clone();
        let target = server.url(&format!("/events/{}", names[n % names.len()]));
        let accepted = Arc::clone(&accepted);
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(target)
                .header("apikey", API_KEY)
                .json(&payload(n))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 202);
            accepted.lock().unwrap().insert(n, Instant::now());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (webhook.lock().unwrap().len() < events || nats.lock().unwrap().len() < events)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let label = format!("{events} single events at {rate}/s over 16 instances, ~1 KB");
    for (what, arrivals) in [
        ("due → 202 (durably stored)", &accepted),
        ("due → webhook receiver", &webhook),
        ("due → NATS subscriber", &nats),
    ] {
        let (n, text) = latencies(&due, &arrivals.lock().unwrap());
        rows.push(row(format!("{label}: {what}"), format!("{n} / {events}; {text}")));
    }
    drop(server);
}

/// Events delivered per second to the healthy destinations (a webhook receiver and NATS, 16
/// instances, batches of 100 from 8 producers), with and without one extra instance whose
/// webhook never answers getting a 17th share of the events on top.
async fn isolation(rows: &mut Rows) {
    const EVENTS: usize = 20_000;
    let url = nats_url();
    let mut runs: Vec<(bool, f64)> = Vec::new();
    // Alternate, twice each: the machine's noise is larger than the effect measured.
    for stalled in [false, true, true, false] {
        let prefix = format!("iso{}", unique());
        let nats = nats_subscriber(&url, format!("{prefix}.>"), Some(".stalled.".into())).await;
        let (hook, webhook) = timing_receiver().await;
        let env = nats_env(&url, &prefix);
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("WEBHOOK_WORKERS", "64"));
        let (server, names) = setup("bench-isolation", 16, Some(&hook), &env).await;
        let mut side = None;
        if stalled {
            let never = stalled_receiver().await;
            let body = json!({"instanceName": "stalled",
                "webhook": {"url": never, "events": ["MESSAGES_UPSERT"]}});
            let (status, resp) = server
                .call("POST", "/instance/create", Some(API_KEY), Some(body))
                .await;
            assert_eq!(status, 201, "{resp}");
            // One producer keeps feeding the stalled instance while the healthy ones run.
            let client = server.client.clone();
            let target = server.url("/events/stalled");
            side = Some(tokio::spawn(async move {
                for n in 0..EVENTS / 16 / 100 {
                    let body: Vec<Value> = (0..100).map(|i| payload(1_000_000 + n * 100 + i)).collect();
                    let resp = client
                        .post(&target)
                        .header("apikey", API_KEY)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 202);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        let start = Instant::now();
        ingest(&server, &names, 8, 100, EVENTS).await;
        let deadline = start + Duration::from_secs(300);
        while (webhook.lock().unwrap().len() < EVENTS || nats.lock().unwrap().len() < EVENTS)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        #[allow(clippy::cast_precision_loss)]
        let rate = (2 * EVENTS) as f64 / start.elapsed().as_secs_f64();
        assert_eq!(
            webhook.lock().unwrap().len(),
            EVENTS,
            "every healthy webhook delivery"
        );
        assert_eq!(nats.lock().unwrap().len(), EVENTS, "every healthy NATS delivery");
        if let Some(side) = side {
            side.await.unwrap();
        }
        runs.push((stalled, rate));
        drop(server);
    }
    let best = |stalled: bool| {
        runs.iter()
            .filter(|(s, _)| *s == stalled)
            .map(|(_, r)| *r)
            .fold(0.0_f64, f64::max)
    };
    let list = |stalled: bool| {
        runs.iter()
            .filter(|(s, _)| *s == stalled)
            .map(|(_, r)| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (healthy, with_stall) = (best(false), best(true));
    let label = format!(
        "{EVENTS} events in batches of 100 → webhook + NATS (16 instances): healthy deliveries/s, best of 2"
    );
    rows.push(row(
        format!("{label}, alone (runs: {})", list(false)),
        format!("{healthy:.0}"),
    ));
    rows.push(row(
        format!(
            "{label}, with a 17th instance whose webhook never answers (runs: {})",
            list(true)
        ),
        format!("{with_stall:.0} ({:+.1} %)", (with_stall / healthy - 1.0) * 100.0),
    ));
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MB.
fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn dir_size_mb(dir: &std::path::Path) -> f64 {
    let bytes: u64 = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let mb = bytes as f64 / 1_048_576.0;
    mb
}

/// RSS idle; 1 000 000 events accepted for a webhook whose receiver is down (connection refused,
/// retried every 1–2 s, ordered per instance over 16 instances); RSS then; the receiver comes
/// back on the same port and the backlog drains.
async fn footprint(rows: &mut Rows) {
    const EVENTS: usize = 1_000_000;
    let port = common::free_port();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let (server, names) = setup(
        "bench-footprint",
        16,
        Some(&hook),
        &[
            ("EVENTS_MAX_BACKLOG", "2000000"),
            ("WEBHOOK_WORKERS", "64"),
            ("WEBHOOK_RETRY_MAX_ATTEMPTS", "100000"),
            ("WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_MAX_DELAY_SECONDS", "2"),
        ],
    )
    .await;
    let pid = server.child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle, _) = rss(pid);
    let start = Instant::now();
    let accepted = ingest(&server, &names, 8, 500, EVENTS).await;
    let ingest_time = start.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (pending, peak_ingest) = rss(pid);
    let disk = dir_size_mb(&server.data_dir);

    // The receiver comes back on the same port.
    let back = Instant::now();
    let (_, count) = counting_receiver_on(port).await;
    let mut first = None;
    let deadline = back + Duration::from_secs(1_800);
    let total = u64::try_from(EVENTS).unwrap();
    while count.load(Ordering::Relaxed) < total {
        if first.is_none() && count.load(Ordering::Relaxed) > 0 {
            first = Some(back.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "drain stalled at {} of {EVENTS}",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = back.elapsed();
    let (after, peak) = rss(pid);
    rows.push(row(
        "server RSS, idle (16 instances, no events; bar ≤ 30 MB)",
        format!("{idle:.1} MB"),
    ));
    rows.push(row(
        format!("accepting {EVENTS} events in batches of 500, receiver down"),
        format!(
            "{:.1} s ({accepted:.0} events/s), SQLite files {disk:.0} MB",
            ingest_time.as_secs_f64()
        ),
    ));
    rows.push(row(
        format!("server RSS with {EVENTS} pending deliveries (peak while accepting; bar ≤ 200 MB)"),
        format!("{pending:.1} MB ({peak_ingest:.1} MB)"),
    ));
    rows.push(row(
        format!("drain of {EVENTS} once the receiver is back (first delivery after)"),
        format!(
            "{:.1} s, {:.0} deliveries/s ({:.1} s)",
            drain.as_secs_f64(),
            EVENTS as f64 / drain.as_secs_f64(),
            first.unwrap_or_default().as_secs_f64()
        ),
    ));
    rows.push(row(
        "server RSS after the drain (peak over the run)",
        format!("{after:.1} MB ({peak:.1} MB)"),
    ));
    drop(server);
    // The footprint's table now, so that it is not lost if the retention phase fails.
    print_table(&["footprint", "result"], rows);
    rows.clear();
    retention(rows).await;
}

/// The retention the `retention` phase gives the server (`OUTBOX_RETENTION`).
const RETENTION: &str = "1s";

/// The SQLite files under a steady load with a short retention: 1 000 000 events in batches of
/// 500 over 16 instances, posted while fewer than 20 000 wait for delivery (so the load follows
/// what delivery sustains), delivered to a loopback receiver, `OUTBOX_RETENTION=1s`; the size at
/// every 100 000 delivered, after the last delivery, and once the last event is pruned
/// (`GET /events/{instance}/{id}` answers 404). A server whose first event is still there after the
/// whole load does not prune with that setting (a build without `OUTBOX_RETENTION`: the server
/// ignores variables it does not know): the pruning row then says "n/a".
async fn retention(rows: &mut Rows) {
    const EVENTS: u64 = 1_000_000;
    const BATCH: usize = 500;
    const WINDOW: u64 = 20_000;
    const STEP: u64 = 100_000;
    let (hook, count) = counting_receiver().await;
    let (mut server, names) = setup(
        "bench-retention",
        16,
        Some(&hook),
        &[("OUTBOX_RETENTION", RETENTION), ("WEBHOOK_WORKERS", "64")],
    )
    .await;

    // The size at every STEP delivered, from a task watching the receiver's count.
    let dir = server.data_dir.clone();
    let watched = Arc::clone(&count);
    let sampler = tokio::spawn(async move {
        let mut sizes = Vec::new();
        let mut next = STEP;
        while next <= EVENTS {
            if watched.load(Ordering::Relaxed) >= next {
                sizes.push(dir_size_mb(&dir));
                next += STEP;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sizes
    });

    let batch = bytes::Bytes::from(body(BATCH));
    let mut sent = 0;
    let mut first = None;
    let mut last = None;
    let start = Instant::now();
    for n in 0.. {
        if sent >= EVENTS {
            break;
        }
        while sent.saturating_sub(count.load(Ordering::Relaxed)) >= WINDOW {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let instance = &names[n % names.len()];
        let resp = server
            .client
            .post(server.url(&format!("/events/{instance}")))
            .header("apikey", API_KEY)
            .header("content-type", "application/json")
            .body(batch.clone())
            .send()
            .await;
        let resp = match resp {
            Ok(resp) => resp,
            Err(e) => panic!(
                "POST failed after {sent} events ({e}); the server: {:?}",
                server.child.try_wait()
            ),
        };
        assert_eq!(resp.status().as_u16(), 202);
        let ids: Value = resp.json().await.unwrap();
        let id = |i: usize| (instance.clone(), ids["ids"][i].as_str().unwrap().to_owned());
        first.get_or_insert_with(|| id(0));
        last = Some(id(BATCH - 1));
        sent += BATCH as u64;
    }
    wait_delivered(&count, EVENTS, start).await;
    let took = start.elapsed();
    let sizes = sampler.await.unwrap();
    let delivered_size = dir_size_mb(&server.data_dir);
    let gone = async |(instance, id): &(String, String)| {
        server
            .call("GET", &format!("/events/{instance}/{id}"), Some(API_KEY), None)
            .await
            .0
            == 404
    };
    let first_gone = gone(first.as_ref().unwrap()).await;
    let pruned = if !first_gone {
        "n/a: the first event was still there after the whole load (this server build does not prune \
         with OUTBOX_RETENTION)"
            .to_owned()
    } else {
        // The writer prunes on its own schedule: wait (at most 6 minutes) for the last event to go.
        let last = last.unwrap();
        let waited = Instant::now();
        let mut size = None;
        while waited.elapsed() < Duration::from_secs(360) {
            if gone(&last).await {
                size = Some(dir_size_mb(&server.data_dir));
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        size.map_or_else(
            || "the last event was not pruned within 360 s".to_owned(),
            |mb| {
                format!(
                    "{mb:.0} MB, {:.0} s after the last delivery",
                    waited.elapsed().as_secs_f64()
                )
            },
        )
    };
    let label = format!(
        "SQLite files under a steady load, OUTBOX_RETENTION={RETENTION} ({EVENTS} events in batches of 500, ≤ {WINDOW} waiting, \
         delivered to a loopback receiver, 16 instances)"
    );
    rows.push(row(
        format!("{label}: at every {STEP} delivered"),
        sizes
            .iter()
            .map(|mb| format!("{mb:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
            + " MB",
    ));
    #[allow(clippy::cast_precision_loss)]
    let rate = EVENTS as f64 / took.as_secs_f64();
    rows.push(row(
        format!("{label}: after the last delivery (first event already pruned?)"),
        format!(
            "{delivered_size:.0} MB after {:.0} s, {rate:.0} events/s ({})",
            took.as_secs_f64(),
            if first_gone { "yes" } else { "no" }
        ),
    ));
    rows.push(row(format!("{label}: once the last event is pruned"), pruned));
    drop(server);
}

/// Instances of the `instances` scenario's large deployment.
const MANY_INSTANCES: usize = 10_000;

/// Creates `count` instances `{prefix}-{i}` on `server` (16 requests at a time), each with a
/// webhook to `hook`; returns their names and tokens.
async fn create_many(server: &Server, prefix: &str, count: usize, hook: &str) -> (Vec<String>, Vec<String>) {
    let base = server.url("");
    let client = reqwest::Client::new();
    let created: Vec<(usize, String, String)> = futures_util::stream::iter(0..count)
        .map(|i| {
            let (client, base) = (client.clone(), base.clone());
            let name = format!("{prefix}-{i}");
            let body = json!({"instanceName": name, "webhook": {"url": hook, "events": ["MESSAGES_UPSERT"]}});
            async move {
                let resp = client
                    .post(format!("{base}/instance/create"))
                    .header("apikey", API_KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201, "creating {name}");
                let resp: Value = resp.json().await.unwrap();
                let token = resp["hash"].as_str().unwrap().to_owned();
                (i, name, token)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut created = created;
    created.sort_by_key(|(i, _, _)| *i);
    created.into_iter().map(|(_, name, token)| (name, token)).unzip()
}

/// Durable single-event ingest (SQLite, webhook receiver that never answers, as in `throughput`)
/// with 16 and with [`MANY_INSTANCES`] instances, each request authorized by the global key and
/// by the instance's own token: what finding the instance costs as a deployment grows.
async fn instances(rows: &mut Rows) {
    let ceiling_url = ceiling().await;
    let seed = body(1);
    let ceiling_load = wrk(
        &ceiling_url,
        &["bench-0".to_owned()],
        &seed,
        CONNECTIONS,
        INGEST_TIME,
    )
    .await;
    let ceiling = ceiling_load.rate(1);
    rows.push(vec![
        format!("ceiling: bare axum handler, single events, {CONNECTIONS} connections"),
        format!("{ceiling:.0} requests/s"),
        "1.000×".to_owned(),
    ]);
    let hook = stalled_receiver().await;
    for count in [16, MANY_INSTANCES] {
        let server = Server::start(&format!("bench-instances-{count}"), &[]).await;
        let (names, tokens) = create_many(&server, "bench", count, &hook).await;
        for (key, load) in [
            (
                "the global key",
                wrk(&server.url(""), &names, &seed, CONNECTIONS, INGEST_TIME).await,
            ),
            (
                "each instance's token",
                wrk_keys(&server.url(""), &names, &tokens, &seed, CONNECTIONS, INGEST_TIME).await,
            ),
        ] {
            let rate = load.rate(1);
            rows.push(vec![
                format!(
                    "durable ingest, single events, {count} instances in turn, apikey: {key}, {} connections",
                    load.connections
                ),
                format!("{rate:.0} events/s"),
                ratio(rate, ceiling),
            ]);
        }
        drop(server);
    }
}

#[tokio::main]
async fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let default = ["throughput", "latency", "isolation", "footprint", "instances"];
    let all = [
        "throughput",
        "postgres",
        "latency",
        "isolation",
        "footprint",
        "instances",
        "generators",
    ];
    if let Some(unknown) = wanted.iter().find(|w| !all.contains(&w.as_str())) {
        panic!("unknown scenario `{unknown}`: choose from {all:?}");
    }
    let run = |name: &str| {
        if wanted.is_empty() {
            default.contains(&name)
        } else {
            wanted.iter().any(|w| w == name)
        }
    };
    for name in all {
        if !run(name) {
            continue;
        }
        let mut rows = Rows::new();
        let mut costs = None;
        let head: &[&str] = match name {
            "throughput" | "postgres" => {
                costs = Some(throughput(&mut rows, name == "throughput").await);
                &["throughput", "rate", "ratio", "bar"]
            }
            "latency" => {
                latency(&mut rows).await;
                &["latency", "result"]
            }
            "isolation" => {
                isolation(&mut rows).await;
                &["isolation", "result"]
            }
            "instances" => {
                instances(&mut rows).await;
                &["instances", "rate", "ratio"]
            }
            "generators" => {
                generators(&mut rows).await;
                &["generators", "result"]
            }
            _ => {
                footprint(&mut rows).await;
                &["footprint: retention", "result"]
            }
        };
        print_table(head, &rows);
        if let Some(costs) = costs {
            print_table(COST_HEAD, &costs);
        }
    }
}

/// Prints a Markdown table.
fn print_table(head: &[&str], rows: &Rows) {
    println!("\n| {} |", head.join(" | "));
    println!("|---|{}", "---:|".repeat(head.len() - 1));
    for cells in rows {
        println!("| {} |", cells.join(" | "));
    }
}
