//! Test helpers on the real broker: a probe connection that reads queues, and cleanup of the
//! exchanges and queues a test created.

#![allow(dead_code, unreachable_pub, reason = "each test crate uses a different part")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use evolution_events::Uuid;
use evolution_sink_testkit::Skip;
pub use evolution_sink_testkit::fixtures::closed_port;
use lapin::message::Delivery;
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};

/// The broker of the tests (`scripts/services env`).
pub fn broker_uri() -> Result<String, Skip> {
    std::env::var("EVOLUTION_TEST_RABBITMQ_URI").map_err(|_| {
        Skip::new(
            "set EVOLUTION_TEST_RABBITMQ_URI=amqp://guest:guest@127.0.0.1:5672/%2f (eval \"$(scripts/services env)\")",
        )
    })
}

/// A unique name: `{prefix}-{uuid}`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::now_v7().simple())
}

/// A connection that reads queues with `basic.get` (a queue that does not exist yet reads as
/// empty).
pub struct Probe {
    connection: Connection,
}

impl Probe {
    pub async fn connect(uri: &str) -> Result<Self, lapin::Error> {
        let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        Ok(Self { connection })
    }

    /// Takes every message waiting in `queue` (acknowledged on the way), in queue order.
    pub async fn take(&self, queue: &str) -> Vec<Delivery> {
        let mut out = Vec::new();
        let Ok(channel) = self.connection.create_channel().await else {
            return out;
        };
        // 404 (no such queue yet) closes the channel: that reads as empty.
        while let Ok(Some(message)) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
        {
            out.push(message.delivery);
        }
        if channel.status().connected() {
            let _ignored = channel.close(200, "done".into()).await;
        }
        out
    }

    /// Reads `queue` into `seen` until it holds at least `expected` messages or `within` passed.
    pub async fn wait(&self, queue: &str, seen: &Mutex<Vec<Delivery>>, expected: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.take(queue).await;
            let len = {
                let mut seen = seen.lock().unwrap();
                seen.extend(got);
                seen.len()
            };
            if len >= expected || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }
}

/// Deletes `queues` and `exchanges` (best effort) on a connection of its own, from a thread of its
/// own (callable from `Drop`, inside or outside a runtime).
pub fn cleanup(uri: String, queues: Vec<String>, exchanges: Vec<String>) {
    let work = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        runtime.block_on(async move {
            let Ok(connection) = Connection::connect(&uri, ConnectionProperties::default()).await else {
                return;
            };
            for queue in queues {
                if let Ok(channel) = connection.create_channel().await {
                    let _ignored = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
            }
            for exchange in exchanges {
                if let Ok(channel) = connection.create_channel().await {
                    let _ignored = channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
            }
            let _ignored = connection.close(200, "cleanup".into()).await;
        });
    });
    let _ignored = work.join();
}

/// Names to delete when a test ends.
#[derive(Clone, Default)]
pub struct Created(pub Arc<Mutex<(Vec<String>, Vec<String>)>>);

impl Created {
    pub fn queue(&self, name: &str) {
        self.0.lock().unwrap().0.push(name.to_owned());
    }
    pub fn exchange(&self, name: &str) {
        self.0.lock().unwrap().1.push(name.to_owned());
    }
    pub fn take(&self) -> (Vec<String>, Vec<String>) {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A header's text value.
pub fn header(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A RabbitMQ node of its own (name, ports, data and cookie in a temporary directory), so that a
/// test can stop and restart it without disturbing the shared broker other tests use. The Debian
/// package's `rabbitmq-server` is run directly (as the current user, `HOME` = the directory, which
/// keeps the Erlang cookie private); the shared node's epmd is reused.
pub struct PrivateBroker {
    pub dir: std::path::PathBuf,
    pub node: String,
    pub port: u16,
    dist_port: u16,
    child: Option<std::process::Child>,
}

/// Where Debian installs the server scripts (the `/usr/sbin` wrappers switch to user rabbitmq).
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

impl PrivateBroker {
    /// Starts a node and waits until it accepts AMQP connections (at most 60 s). `Err` when the
    /// RabbitMQ server is not installed.
    pub async fn start() -> Result<Self, Skip> {
        let server = std::path::Path::new(RABBITMQ_BIN).join("rabbitmq-server");
        if !server.exists() {
            return Err(Skip::new(format!(
                "{} is missing: install rabbitmq-server (scripts/services up rabbitmq)",
                server.display()
            )));
        }
        let tag = Uuid::now_v7().simple().to_string();
        let dir = std::env::temp_dir().join(format!("evo-rabbitmq-{tag}"));
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(dir.join("rabbitmq.conf"), "").unwrap();
        std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        let mut broker = Self {
            node: format!("evo-{}@localhost", &tag[tag.len() - 12..]),
            port: closed_port(),
            dist_port: closed_port(),
            dir,
            child: None,
        };
        broker.boot().await;
        Ok(broker)
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn command(&self, program: &str) -> std::process::Command {
        let mut command = std::process::Command::new(std::path::Path::new(RABBITMQ_BIN).join(program));
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        command
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_PID_FILE", d("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf"));
        command
    }

    /// Starts the node (same name, ports and data as before) and waits until it is ready.
    pub async fn boot(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.out")).unwrap();
        let child = self
            .command("rabbitmq-server")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(c) = Connection::connect(&self.uri(), ConnectionProperties::default()).await {
                let _ignored = c.close(200, "ready".into()).await;
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(std::process::Child::try_wait) {
                panic!(
                    "the private RabbitMQ node exited with {status}; see {}",
                    self.dir.join("server.out").display()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the private RabbitMQ node was not ready in 60 s; see {}",
                self.dir.join("log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the node gracefully (`rabbitmqctl shutdown` waits until it has exited).
    pub fn stop(&mut self) {
        let status = self
            .command("rabbitmqctl")
            .args(["-n", &self.node, "shutdown"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            if !status.is_ok_and(|s| s.success()) {
                let _ignored = child.kill();
            }
            let _ignored = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
        let _ignored = std::fs::remove_dir_all(&self.dir);
    }
}
