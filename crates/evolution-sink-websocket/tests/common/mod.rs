//! Test harness: the sink's Socket.IO endpoint served by axum on 127.0.0.1, and real Socket.IO
//! clients (node socket.io-client, `tests/node/sio-probe.mjs`) that print what they receive.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evolution_events::{
    Channel, Delivery, Destination, EventEnvelope, EventKind, EventSink, InstanceName, NamingProfile,
    RawValue, Scope,
};
use evolution_sink_testkit::Skip;
use evolution_sink_websocket::{Access, WebsocketConfig, WebsocketSink};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

pub const GLOBAL_KEY: &str = "ws-test-global-key";
pub const INSTANCE: &str = "contract-instance";
pub const INSTANCE_TOKEN: &str = "ws-test-token-contract-instance";
pub const OTHER: &str = "other-instance";
pub const OTHER_TOKEN: &str = "ws-test-token-other-instance";

/// The authorizer of the tests: the global key, and one token per test instance.
pub fn authorize(key: &str) -> Access {
    match key {
        GLOBAL_KEY => Access::Global,
        INSTANCE_TOKEN => Access::Instance(InstanceName::new(INSTANCE).unwrap()),
        OTHER_TOKEN => Access::Instance(InstanceName::new(OTHER).unwrap()),
        _ => Access::Denied,
    }
}

/// `EVOLUTION_TEST_NODE_DIR` (`scripts/services up node`), where socket.io-client is installed.
pub fn node_dir() -> Result<PathBuf, Skip> {
    evolution_sink_testkit::node::node_dir("socket.io-client")
}

/// `tests/node/<name>`, copied next to the installed node_modules.
pub fn node_script(name: &str) -> Result<PathBuf, Skip> {
    evolution_sink_testkit::node::node_script("socket.io-client", name)
}

/// The sink's endpoint, served on a free loopback port.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub sink: Arc<WebsocketSink>,
    server: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// A sink on the local adapter ([`WebsocketSink::new`]).
    pub async fn start(config: WebsocketConfig) -> Self {
        let (sink, layer) = WebsocketSink::new(config, authorize).unwrap();
        Self::serve(sink, layer).await
    }

    /// A sink built by [`WebsocketSink::connect`] (the Redis adapter when `config.redis` is set).
    pub async fn connect(config: WebsocketConfig) -> Self {
        let (sink, layer) = WebsocketSink::connect(config, authorize).await.unwrap();
        Self::serve(sink, layer).await
    }

    async fn serve(sink: WebsocketSink, layer: evolution_sink_websocket::WebsocketLayer) -> Self {
        let app = axum::Router::new()
            .route("/health", axum::routing::get(|| async { "ok" }))
            .layer(layer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .unwrap();
        });
        Self {
            addr,
            sink: Arc::new(sink),
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving (drops the router, and with it the endpoint's layer).
    pub async fn stop(&self) {
        self.server.abort();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.server.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A running `sio-probe.mjs`: a real socket.io-client connected to some namespaces.
pub struct Probe {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Probe {
    /// Connects with `apikey` (`None`: no key) to `namespaces` of `url`.
    pub async fn start(url: &str, apikey: Option<&str>, namespaces: &[&str]) -> Result<Self, Skip> {
        let script = node_script("sio-probe.mjs")?;
        let mut child = Command::new("node")
            .arg(&script)
            .arg(url)
            .arg(apikey.unwrap_or("-"))
            .args(namespaces)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Skip::new(format!("cannot run node: {e}")))?;
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        Ok(Self { child, lines })
    }

    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until every namespace answered (connected or refused), 15 s at most; returns the
    /// namespaces that connected.
    pub async fn settled(&self, namespaces: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let answers: Vec<Value> = self
                .lines()
                .into_iter()
                .filter(|l| matches!(l["type"].as_str(), Some("connect" | "connect_error")))
                .collect();
            if answers.len() >= namespaces || Instant::now() > deadline {
                return answers;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every namespace connected; panics with what happened otherwise.
    pub async fn connected(&self, namespaces: usize) {
        let answers = self.settled(namespaces).await;
        assert!(
            answers.len() >= namespaces && answers.iter().all(|a| a["type"] == "connect"),
            "the Socket.IO client did not connect: {answers:?}"
        );
    }

    /// The events received (`{"ns","event","raw","at"}`) matching `filter`, waiting until at least
    /// `expected` arrived or `within` passed.
    pub async fn events(
        &self,
        expected: usize,
        within: Duration,
        filter: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let events: Vec<Value> = self
                .lines()
                .into_iter()
                .filter(|l| l["type"] == "event" && filter(l))
                .collect();
            if events.len() >= expected || Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ignored = self.child.start_kill();
    }
}

/// Whether node is there (a panic in CI when it is not; a skip elsewhere).
pub fn ready() -> bool {
    match node_dir() {
        Ok(_) => true,
        Err(skip) if matches!(std::env::var("CI").as_deref(), Ok("true" | "1")) => {
            panic!("node is required in CI: {skip}")
        }
        Err(skip) => {
            eprintln!("skipped: {skip}");
            false
        }
    }
}

/// The seed profile's deliveries of one event of `instance` (instance scope, plus global scope
/// when `global`).
pub fn deliveries(instance: &str, global: bool) -> (Arc<EventEnvelope>, Vec<Delivery>) {
    let name = InstanceName::new(instance).unwrap();
    let data = RawValue::from_string(format!(r#"{{"for":"{instance}"}}"#)).unwrap();
    let envelope = Arc::new(EventEnvelope::new(EventKind::MessagesUpsert, name.clone(), data));
    let mut out = Vec::new();
    let mut scopes = vec![Scope::Instance];
    if global {
        scopes.push(Scope::Global);
    }
    for scope in scopes {
        for target in NamingProfile::Seed.websocket(scope, &name, EventKind::MessagesUpsert) {
            out.push(Delivery {
                body: None,
                id: out.len() as u64 + 1,
                channel: Channel::Websocket,
                scope,
                profile: NamingProfile::Seed,
                envelope: Arc::clone(&envelope),
                destination: Arc::new(Destination::Websocket(target)),
                ordering_key: None,
                attempt: 1,
            });
        }
    }
    (envelope, out)
}

pub async fn send(endpoint: &Endpoint, batch: &[Delivery]) {
    let report = endpoint.sink.send(batch).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures());
}

pub fn names(events: &[serde_json::Value]) -> Vec<String> {
    let mut names: Vec<String> = events
        .iter()
        .map(|e| format!("{} {}", e["ns"].as_str().unwrap(), e["event"].as_str().unwrap()))
        .collect();
    names.sort();
    names
}
