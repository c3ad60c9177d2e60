//! Test harness: the real server binary on a free port with its own data directory, and a real
//! HTTP receiver that records what reaches it.
#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::Value;

pub const API_KEY: &str = "test-global-key-0123456789";

/// A running `evolution-server` process.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
    pub env: HashMap<String, String>,
    pub client: reqwest::Client,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("evo-{name}-{}-{}", std::process::id(), uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

impl Server {
    /// Starts the binary with `env` on top of a test baseline, and waits for `/health`.
    pub async fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let data_dir = temp_dir(name);
        let mut vars: HashMap<String, String> = HashMap::new();
        vars.insert("AUTHENTICATION_API_KEY".into(), API_KEY.into());
        vars.insert("SERVER_HOST".into(), "127.0.0.1".into());
        vars.insert("SERVER_DATA_DIR".into(), data_dir.display().to_string());
        vars.insert("LOG_LEVEL".into(), "warn".into());
        // Loopback receivers (the SSRF guard refuses private targets unless allowed).
        vars.insert("WEBHOOK_ALLOWED_NETWORKS".into(), "127.0.0.0/8".into());
        for (k, v) in env {
            vars.insert((*k).into(), (*v).into());
        }
        Self::spawn(vars, data_dir).await
    }

    async fn spawn(mut env: HashMap<String, String>, data_dir: PathBuf) -> Self {
        let port = free_port();
        env.insert("SERVER_PORT".into(), port.to_string());
        // `EVOLUTION_TEST_LOG=<file>` in `env` sends the server's output there (appending, so a
        // restarted server adds to the same file) instead of the test's stderr.
        let (stdout, stderr) = match env.get("EVOLUTION_TEST_LOG") {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap();
                (Stdio::from(file.try_clone().unwrap()), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::inherit()),
        };
        // `EVOLUTION_SERVER_BIN`: another build of the server (to compare two builds in one bench).
        let binary = std::env::var("EVOLUTION_SERVER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_evolution-server").to_owned());
        let child = Command::new(binary)
            .env_clear()
            .envs(env.iter().filter(|(k, _)| k.as_str() != "EVOLUTION_TEST_LOG"))
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn evolution-server");
        let server = Self {
            child,
            port,
            data_dir,
            env,
            client: reqwest::Client::new(),
        };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.client.get(self.url("/health")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not become healthy in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process with SIGKILL (no shutdown at all).
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// Starts the binary again on the same data directory and environment (new port).
    pub async fn restart(mut self) -> Self {
        self.child.try_wait().ok();
        let env = std::mem::take(&mut self.env);
        let dir = self.data_dir.clone();
        std::mem::forget(self);
        Self::spawn(env, dir).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method.parse().unwrap(), self.url(path));
        if let Some(key) = key {
            req = req.header("apikey", key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn raw(&self, method: &str, path: &str, body: &'static [u8]) -> (u16, Value) {
        let resp = self
            .client
            .request(method.parse().unwrap(), self.url(path))
            .header("apikey", API_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        std::fs::remove_dir_all(&self.data_dir).ok();
    }
}

/// A PostgreSQL schema of its own for the replicas of one test or bench scenario
/// (`OUTBOX_SCHEMA`), dropped with everything in it at the end (the outbox's test helper).
pub use evolution_outbox::testing::PostgresSchema as Schema;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Hit {
    /// When it arrived.
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: String,
}

#[derive(Default)]
struct ReceiverState {
    hits: Mutex<Vec<Hit>>,
    status: Mutex<u16>,
    /// The answer to the next request only (status, `Retry-After`), then `status` again.
    once: Mutex<Option<(u16, Option<String>)>>,
    /// When each request answered with `once` arrived.
    refused: Mutex<Vec<Instant>>,
}

/// A real HTTP receiver on 127.0.0.1 that records every request and answers `status` (200).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    pub async fn start_on(port: u16) -> Self {
        let state = Arc::new(ReceiverState {
            status: Mutex::new(200),
            ..ReceiverState::default()
        });
        let app = axum::Router::new()
            .fallback(record)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_status(&self, status: u16) {
        *self.state.status.lock().unwrap() = status;
    }

    /// Answers the next request with `status` and a `Retry-After: retry_after` header (recording
    /// when it came in [`Receiver::refused`]), then the usual status again.
    pub fn answer_once(&self, status: u16, retry_after: Option<&str>) {
        *self.state.once.lock().unwrap() = Some((status, retry_after.map(str::to_owned)));
    }

    /// When the requests answered by [`Receiver::answer_once`] arrived.
    pub fn refused(&self) -> Vec<Instant> {
        self.state.refused.lock().unwrap().clone()
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (or `within` passed) and returns them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let hits = self.hits();
            if hits.len() >= n || Instant::now() > deadline {
                return hits;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn record(
    State(state): State<Arc<ReceiverState>>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let at = Instant::now();
    if let Some((status, retry_after)) = state.once.lock().unwrap().take() {
        state.refused.lock().unwrap().push(at);
        let status = StatusCode::from_u16(status).unwrap();
        return match retry_after {
            Some(value) => (status, [("retry-after", value)]).into_response(),
            None => status.into_response(),
        };
    }
    let status = *state.status.lock().unwrap();
    if status < 300 {
        let raw = String::from_utf8_lossy(&body).into_owned();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        state.hits.lock().unwrap().push(Hit {
            at,
            path: uri.to_string(),
            headers,
            body,
            raw,
        });
    }
    StatusCode::from_u16(status).unwrap().into_response()
}

/// The specification's RabbitMQ consumer: declares the durable topic exchange, an exclusive
/// server-named queue bound with `pattern`, and consumes it (no acks). Returns each delivery as it
/// arrives, through `on_delivery`, from a task that keeps the channel open; the connection must be
/// kept alive by the caller.
pub async fn amqp_consumer(
    uri: &str,
    exchange: &str,
    pattern: &str,
    mut on_delivery: impl FnMut(lapin::message::Delivery) + Send + 'static,
) -> lapin::Connection {
    use futures_util::StreamExt as _;
    use lapin::options::{
        BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;

    let connection = lapin::Connection::connect(uri, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    let name = queue.name().clone();
    channel
        .queue_bind(
            name.clone(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut consumer = channel
        .basic_consume(name, "".into(), no_ack, FieldTable::default())
        .await
        .unwrap();
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = consumer.next().await {
            on_delivery(delivery);
        }
    });
    connection
}

/// A test service's address from `scripts/services env`. Unset (or empty): the test is skipped
/// with a note, except in CI (`CI` or `EVOLUTION_CONTRACT_STRICT` = `true`/`1`), where it fails.
pub fn service_env(name: &str) -> Option<String> {
    let strict = ["CI", "EVOLUTION_CONTRACT_STRICT"].iter().any(|var| {
        std::env::var(var).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true"))
    });
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if strict => panic!("{name} is not set in CI: run through scripts/test (scripts/services env)"),
        _ => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipped: set {name} (eval \"$(scripts/services env)\")");
            }
            None
        }
    }
}

/// A short unique token for instance names, exchanges, streams, topics and prefixes.
pub fn unique() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_owned()
}

/// The specification's example event of `kind`.
pub fn seed_event(kind: &str) -> Value {
    serde_json::json!({"event": kind, "sender": "5511999999999@s.whatsapp.net", "data": {
        "key": {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": false, "id": "MESSAGE_ID"},
        "message": {"conversation": "olá 👋"}, "messageTimestamp": "1234567890"}})
}

/// Creates `instance` (global key) with `settings` (an object of channel settings) merged in.
pub async fn create_instance(server: &Server, instance: &str, settings: Value) {
    let mut body = serde_json::json!({"instanceName": instance});
    if let (Some(b), Some(s)) = (body.as_object_mut(), settings.as_object()) {
        b.extend(s.clone());
    }
    let (status, created) = server
        .call("POST", "/instance/create", Some(API_KEY), Some(body))
        .await;
    assert_eq!(status, 201, "{created}");
}

/// Posts `events` (one or an array) to `instance` with the global key; the ids of the `202`.
pub async fn post_events(server: &Server, instance: &str, events: Value) -> Vec<String> {
    let (status, body) = server
        .call(
            "POST",
            &format!("/events/{instance}"),
            Some(API_KEY),
            Some(events),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Posts MESSAGES_UPSERT, CALL, CONNECTION_UPDATE (in that order, one request); their ids.
pub async fn post_three(server: &Server, instance: &str) -> Vec<String> {
    let events = serde_json::json!([
        seed_event("MESSAGES_UPSERT"),
        seed_event("CALL"),
        seed_event("CONNECTION_UPDATE")
    ]);
    post_events(server, instance, events).await
}

/// The seed payload of `kind` (its `event` as in the seed profile) with id `id`, fields in the
/// design's order (checked on the raw text), no secret.
pub fn assert_seed_payload(raw: &[u8], id: &str, kind: &str, instance: &str) {
    let text = std::str::from_utf8(raw).unwrap();
    let body: Value = serde_json::from_str(text).unwrap();
    let positions: Vec<usize> = [
        "id",
        "event",
        "instance",
        "data",
        "date_time",
        "sender",
        "server_url",
        "apikey",
        "sequence",
    ]
    .iter()
    .map(|k| text.find(&format!("\"{k}\":")).unwrap())
    .collect();
    assert!(positions.is_sorted(), "field order: {text}");
    assert!(text.starts_with(r#"{"id":"#), "{text}");
    assert_eq!(body["id"], id, "{text}");
    assert_eq!(body["event"], kind, "{text}");
    assert_eq!(body["instance"], instance, "{text}");
    assert_eq!(body["data"], seed_event(kind)["data"], "{text}");
    assert_eq!(body["sender"], "5511999999999@s.whatsapp.net");
    assert_eq!(body["apikey"], Value::Null, "no secret by default");
}

/// The filter the filter tests set on each channel: messages not sent by me, in groups.
pub fn group_filter() -> Value {
    serde_json::json!({"data.key.fromMe": false, "data": {"key": {"remoteJid": {"$endsWith": "@g.us"}}}})
}

/// A MESSAGES_UPSERT whose key has `from_me` and `remote_jid`.
pub fn message(from_me: bool, remote_jid: &str) -> Value {
    serde_json::json!({"event": "MESSAGES_UPSERT", "data": {
        "key": {"remoteJid": remote_jid, "fromMe": from_me, "id": unique()},
        "message": {"conversation": "olá"}}})
}

/// Posts a direct message, a group message sent by me, a group message sent by someone else (in
/// that order) and returns their ids; [`group_filter`] lets only the third through.
pub async fn post_filtered(server: &Server, instance: &str) -> Vec<String> {
    post_events(
        server,
        instance,
        serde_json::json!([
            message(false, "5511999999999@s.whatsapp.net"),
            message(true, "120363000000000000@g.us"),
            message(false, "120363000000000000@g.us"),
        ]),
    )
    .await
}

/// The delivery log of `instance` on `channel` holds deliveries of the events `ids` only (Socket.IO
/// makes two per event): the events the filters refused were never enqueued.
pub async fn assert_only_logged(server: &Server, instance: &str, channel: &str, ids: &[&str]) {
    let (status, log) = server
        .call(
            "GET",
            &format!("/deliveries/{instance}?channel={channel}&limit=1000"),
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{log}");
    let mut logged: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    logged.sort_unstable();
    logged.dedup();
    let mut want = ids.to_vec();
    want.sort_unstable();
    assert_eq!(logged, want, "{channel} log: {log}");
}

/// `POST /{channel}/set/{instance}` with a filter that has an unknown operator and a bad operand:
/// a 400 naming the path and the operator, and nothing stored.
pub async fn assert_bad_filter_refused(server: &Server, instance: &str, channel: &str, mut settings: Value) {
    let (_, before) = server
        .call("GET", &format!("/{channel}/find/{instance}"), Some(API_KEY), None)
        .await;
    settings["filter"] =
        serde_json::json!({"data.key.fromMe": {"$eqq": false}, "data.key.remoteJid": {"$endsWith": 1}});
    let (status, body) = server
        .call(
            "POST",
            &format!("/{channel}/set/{instance}"),
            Some(API_KEY),
            Some(serde_json::json!({ channel: settings })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let text = body.to_string();
    for needle in [
        format!("{channel}.filter.data.key.fromMe.$eqq: unknown operator `$eqq` on path `data.key.fromMe`"),
        format!(
            "{channel}.filter.data.key.remoteJid.$endsWith: `$endsWith` on path `data.key.remoteJid` takes a string"
        ),
    ] {
        assert!(text.contains(&needle), "missing {needle} in {text}");
    }
    let (_, after) = server
        .call("GET", &format!("/{channel}/find/{instance}"), Some(API_KEY), None)
        .await;
    assert_eq!(before, after, "nothing stored");
}

/// A MESSAGES_UPSERT whose data carries `pad` (to make it larger than a channel's limit).
pub fn padded(pad: &str) -> Value {
    serde_json::json!({"event": "MESSAGES_UPSERT", "data": {"key": {"id": "BIG"}, "pad": pad}})
}

/// Checks a reference body (`<CHANNEL>_OVERSIZE=reference`) for event `id` of `instance` whose data
/// holds `pad`: its fields, its URL fetching the whole event without an apikey, and a changed
/// signature or expiry refused with 403. Returns the URL.
pub async fn check_reference(reference: &Value, id: &str, instance: &str, pad: &str) -> String {
    assert_eq!(reference["id"], id, "{reference}");
    assert_eq!(reference["event"], "MESSAGES_UPSERT", "{reference}");
    assert_eq!(reference["instance"], instance, "{reference}");
    assert!(reference["sequence"].as_u64().unwrap() > 0, "{reference}");
    assert_eq!(reference["truncated"], true, "{reference}");
    assert!(reference["expires_at"].is_string(), "{reference}");
    let url = reference["url"].as_str().unwrap().to_owned();
    check_reference_url(&url, id, pad).await;
    url
}

/// The reference URL `url` gives the whole event `id` (data holding `pad`) without an apikey; a
/// changed signature or expiry gets 403.
pub async fn check_reference_url(url: &str, id: &str, pad: &str) {
    let client = reqwest::Client::new();
    let whole = client.get(url).send().await.unwrap();
    assert_eq!(whole.status(), 200, "{url}");
    let whole: Value = whole.json().await.unwrap();
    assert_eq!(whole["id"], id);
    assert_eq!(whole["data"]["pad"], pad);
    let last = url.chars().last().unwrap();
    let tampered = format!("{}{}", &url[..url.len() - 1], if last == '0' { '1' } else { '0' });
    let answer = client.get(&tampered).send().await.unwrap();
    assert_eq!(answer.status(), 403, "a changed signature");
    assert!(answer.text().await.unwrap().contains("signature"));
    let (before, after) = url.split_once("expires=").unwrap();
    let (expires, rest) = after.split_once('&').unwrap();
    let later = format!(
        "{before}expires={}&{rest}",
        expires.parse::<u64>().unwrap() + 3600
    );
    assert_eq!(
        client.get(&later).send().await.unwrap().status(),
        403,
        "a changed expiry"
    );
    let unsigned = url.split_once('?').unwrap().0;
    assert_eq!(
        client.get(unsigned).send().await.unwrap().status(),
        403,
        "no signature"
    );
}

/// `SERVER_URL` of the servers whose messages are compared with the golden bodies.
pub const GOLDEN_SERVER_URL: &str = "https://evo.example";

/// Compares a message received in the `evolution-v2` profile, byte for byte, with the body frozen
/// in `tests/golden/evolution-v2/<channel>.json` (see its README): `vars` fill the placeholders
/// the test knows; `date_time`, `sequence` and `timestamp` are read from the message and checked.
pub fn assert_golden(channel: &str, raw: &[u8], vars: &[(&str, &str)]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/evolution-v2")
        .join(format!("{channel}.json"));
    let golden = std::fs::read_to_string(&path).unwrap();
    let actual = std::str::from_utf8(raw).unwrap();
    let body: Value = serde_json::from_str(actual).unwrap_or_else(|e| panic!("{channel}: {e}: {actual}"));
    let date_time = body["date_time"].as_str().unwrap_or_default();
    let parsed = chrono::DateTime::parse_from_rfc3339(date_time)
        .unwrap_or_else(|e| panic!("{channel}: date_time {date_time:?}: {e}"));
    assert!(
        date_time.ends_with('Z') && date_time.len() == "2025-10-21T11:40:39.123Z".len(),
        "{channel}: date_time is UTC with milliseconds: {date_time}"
    );
    let age = chrono::Utc::now().signed_duration_since(parsed);
    assert!(
        age.num_seconds().abs() < 60,
        "{channel}: date_time is now in UTC: {date_time}"
    );
    let sequence = body["sequence"].as_u64().unwrap().to_string();
    let timestamp = parsed.timestamp_millis().to_string();
    let mut expected = golden.trim_end().to_owned();
    for (name, value) in vars.iter().copied().chain([
        ("DATE_TIME", date_time),
        ("SEQUENCE", sequence.as_str()),
        ("TIMESTAMP", timestamp.as_str()),
    ]) {
        expected = expected.replace(&format!("{{{{{name}}}}}"), value);
    }
    assert!(
        !expected.contains("{{"),
        "{channel}: a placeholder is left: {expected}"
    );
    assert_eq!(
        actual,
        expected,
        "{channel}: the body differs from {}",
        path.display()
    );
}

/// A Kafka consumer reading `topic` from the beginning by partition assignment (no consumer group:
/// tansu's group joins are slow): every partition of a topic that exists already (a broker-created
/// one may have several), partition 0 of one that does not yet (read as empty until it does).
#[allow(dead_code, reason = "only the Kafka tests read topics")]
pub fn kafka_reader(brokers: &str, topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer as _;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: rdkafka::consumer::StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("evolution-e2e-{}", unique()))
        .set("enable.auto.commit", "false")
        // A position the broker no longer knows (a restarted broker) reads again from the start.
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false")
        .set("topic.metadata.refresh.interval.ms", "500")
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .unwrap();
    let partitions = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()
        .and_then(|m| {
            m.topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len())
        })
        .unwrap_or(1)
        .max(1);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, i32::try_from(partition).unwrap(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    consumer
}

/// A Kafka record's headers, values as text.
#[allow(dead_code, reason = "only the Kafka tests read headers")]
pub fn kafka_headers_of(message: &rdkafka::message::BorrowedMessage<'_>) -> Vec<(String, String)> {
    use rdkafka::message::{Headers as _, Message as _};
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A client of the test SQS server at `endpoint` (moto: any credentials, `us-east-1`).
pub async fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_sqs::Client::new(&config)
}

/// The next message of the SQS queue `queue`, with its message attributes, deleted once read (the
/// queue's URL is looked up until the queue exists); `None` when nothing came within `within`.
pub async fn sqs_next(
    client: &aws_sdk_sqs::Client,
    queue: &str,
    within: Duration,
) -> Option<aws_sdk_sqs::types::Message> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let Ok(url) = client.get_queue_url().queue_name(queue).send().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let url = url.queue_url.unwrap_or_default();
        let Ok(answer) = client
            .receive_message()
            .queue_url(&url)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
        else {
            continue;
        };
        if let Some(message) = answer.messages.unwrap_or_default().into_iter().next() {
            client
                .delete_message()
                .queue_url(&url)
                .receipt_handle(message.receipt_handle.clone().unwrap_or_default())
                .send()
                .await
                .ok();
            return Some(message);
        }
    }
    None
}
