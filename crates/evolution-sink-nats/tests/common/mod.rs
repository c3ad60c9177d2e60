//! Test helpers on the real NATS server: subscriptions that record what arrives, a reader of a
//! JetStream stream, and cleanup.

#![allow(dead_code, unreachable_pub, reason = "each test crate uses a different part")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::{Client, Message};
use evolution_events::Uuid;
pub use evolution_sink_testkit::fixtures::closed_port;
use evolution_sink_testkit::{Observed, Skip};
use futures_util::StreamExt;

/// The server of the tests (`scripts/services env`).
pub fn server_url() -> Result<String, Skip> {
    std::env::var("EVOLUTION_TEST_NATS_URL").map_err(|_| {
        Skip::new("set EVOLUTION_TEST_NATS_URL=nats://127.0.0.1:4222 (eval \"$(scripts/services env)\")")
    })
}

/// A unique token: `{prefix}-{uuid}` (valid in subjects and, without `-`, in stream names).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::now_v7().simple())
}

/// Messages received on a subscription, in arrival order.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<Message>>>);

impl Recorder {
    /// Subscribes `client` to `subject` and records everything that arrives; returns once the
    /// server has the subscription.
    pub async fn subscribe(client: &Client, subject: String) -> Self {
        let recorder = Self::default();
        let mut subscription = client.subscribe(subject).await.unwrap();
        client.flush().await.unwrap();
        let sink = recorder.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                sink.0.lock().unwrap().push(message);
            }
        });
        recorder
    }

    /// Waits until at least `expected` messages arrived (or `within` passed).
    pub async fn wait(&self, expected: usize, within: Duration) -> Vec<Message> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.0.lock().unwrap().clone();
            if got.len() >= expected || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A header's value.
pub fn header(message: &Message, name: &str) -> Option<String> {
    message.headers.as_ref()?.get(name).map(|v| v.as_str().to_owned())
}

/// What the contract suite reads from a message: the `Nats-Msg-Id` header as id.
pub fn observed(message: &Message) -> Observed {
    Observed {
        id: header(message, "Nats-Msg-Id")
            .and_then(|id| id.parse().ok())
            .unwrap_or(Uuid::nil()),
        payload: message.payload.clone(),
    }
}

/// Reads every message stored in `stream` under `subject` (a filter), from the start, until at
/// least `expected` were read or `within` passed. A stream that does not exist reads as empty.
pub async fn read_stream(
    client: &Client,
    stream: &str,
    subject: &str,
    expected: usize,
    within: Duration,
) -> Vec<Message> {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + within;
    let mut out: Vec<Message> = Vec::new();
    let mut consumer = None;
    loop {
        if consumer.is_none()
            && let Ok(stream) = js.get_stream(stream).await
        {
            consumer = stream
                .create_consumer(pull::Config {
                    filter_subject: subject.to_owned(),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::None,
                    inactive_threshold: Duration::from_secs(60),
                    ..pull::Config::default()
                })
                .await
                .ok();
        }
        if let Some(consumer) = &consumer
            && let Ok(mut batch) = consumer
                .fetch()
                .max_messages(1000)
                .expires(Duration::from_millis(300))
                .messages()
                .await
        {
            while let Some(Ok(message)) = batch.next().await {
                out.push(message.message);
            }
        }
        if out.len() >= expected || tokio::time::Instant::now() >= deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deletes `streams` (best effort) from a thread and runtime of its own (callable from `Drop`).
pub fn delete_streams(url: String, streams: Vec<String>) {
    let work = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        runtime.block_on(async move {
            let Ok(client) = async_nats::connect(url).await else {
                return;
            };
            let js = async_nats::jetstream::new(client);
            for stream in streams {
                let _ignored = js.delete_stream(stream).await;
            }
        });
    });
    let _ignored = work.join();
}

/// A `nats-server -js` of its own (port and store in a temporary directory), so that a test can
/// stop and restart it without disturbing the shared server other tests use.
pub struct PrivateServer {
    pub dir: std::path::PathBuf,
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateServer {
    /// Starts a server and waits until it accepts connections. `Err` when `nats-server` is not
    /// installed.
    pub async fn start() -> Result<Self, Skip> {
        let exe = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or_else(|| Skip::new("nats-server is missing: scripts/services up nats"))?;
        let dir = std::env::temp_dir().join(format!("evo-nats-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            dir,
            port: closed_port(),
            child: None,
        };
        server.boot_with(exe).await;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn boot_with(&mut self, exe: &str) {
        std::fs::write(self.dir.join("exe"), exe).unwrap();
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = std::process::Command::new(exe)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.join("store"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(client) = async_nats::connect(self.url()).await {
                drop(client);
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the private nats-server was not ready in 20 s; see {}",
                self.dir.join("server.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the server again on the same port and store.
    pub async fn boot(&mut self) {
        let exe = std::fs::read_to_string(self.dir.join("exe")).unwrap();
        self.boot_with(&exe).await;
    }

    /// Stops the server gracefully (SIGTERM: JetStream flushes its store) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ignored = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ignored = child.kill();
            let _ignored = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ignored = child.kill();
            let _ignored = child.wait();
        }
        let _ignored = std::fs::remove_dir_all(&self.dir);
    }
}
