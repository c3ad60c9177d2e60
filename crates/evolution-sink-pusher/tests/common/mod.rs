//! Test harness: the Pusher-protocol server of `scripts/services up pusher` (soketi) and a real
//! Pusher client (node pusher-js, `tests/node/pusher-probe.js`) that prints what it receives.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evolution_events::{PusherApp, Sensitive};
use evolution_sink_testkit::Skip;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};

/// The server and its test app, from `EVOLUTION_TEST_PUSHER_*` (`scripts/services env`).
#[derive(Clone, Debug)]
pub struct PusherServer {
    pub host: String,
    pub port: u16,
    pub app_id: String,
    pub key: String,
    pub secret: String,
}

impl PusherServer {
    pub fn from_env() -> Result<Self, Skip> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                Skip::new(format!(
                    "set {name} (run `scripts/services up pusher node`, then eval \"$(scripts/services env)\")"
                ))
            })
        };
        Ok(Self {
            host: var("EVOLUTION_TEST_PUSHER_HOST")?,
            port: var("EVOLUTION_TEST_PUSHER_PORT")?
                .parse()
                .map_err(|_| Skip::new("EVOLUTION_TEST_PUSHER_PORT is not a port"))?,
            app_id: var("EVOLUTION_TEST_PUSHER_APP_ID")?,
            key: var("EVOLUTION_TEST_PUSHER_KEY")?,
            secret: var("EVOLUTION_TEST_PUSHER_SECRET")?,
        })
    }

    /// The test app, pointed at the server.
    pub fn app(&self) -> PusherApp {
        PusherApp {
            app_id: self.app_id.clone(),
            key: self.key.clone(),
            secret: Sensitive::new(self.secret.clone()),
            cluster: "mt1".to_owned(),
            use_tls: false,
            host: Some(self.host.clone()),
            port: Some(self.port),
        }
    }
}

/// `EVOLUTION_TEST_NODE_DIR` (`scripts/services up node`), where pusher-js is installed.
pub fn node_dir() -> Result<PathBuf, Skip> {
    evolution_sink_testkit::node::node_dir("pusher-js")
}

/// `tests/node/<name>`, copied next to the installed node_modules.
pub fn node_script(name: &str) -> Result<PathBuf, Skip> {
    evolution_sink_testkit::node::node_script("pusher-js", name)
}

/// A running `pusher-probe.js`: a pusher-js client that subscribes to the channels it is told.
pub struct Probe {
    child: Child,
    stdin: tokio::sync::Mutex<ChildStdin>,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Probe {
    pub async fn start(server: &PusherServer) -> Result<Self, Skip> {
        let script = node_script("pusher-probe.js")?;
        let mut child = Command::new("node")
            .arg(&script)
            .arg(&server.host)
            .arg(server.port.to_string())
            .arg(&server.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Skip::new(format!("cannot run node: {e}")))?;
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
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
        let probe = Self {
            child,
            stdin: tokio::sync::Mutex::new(stdin),
            lines,
        };
        if !probe
            .wait_for(|l| l["type"] == "connected", Duration::from_secs(15))
            .await
        {
            return Err(Skip::new(format!(
                "pusher-js did not connect to {}:{}: {:?}",
                server.host,
                server.port,
                probe.lines()
            )));
        }
        Ok(probe)
    }

    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_for(&self, f: impl Fn(&Value) -> bool, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.lines().iter().any(&f) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Subscribes to `channel` and waits until the server confirmed it.
    pub async fn subscribe(&self, channel: &str) {
        let mut stdin = self.stdin.lock().await;
        stdin.write_all(format!("{channel}\n").as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
        drop(stdin);
        let ok = self
            .wait_for(
                |l| l["type"] == "subscribed" && l["channel"] == channel,
                Duration::from_secs(15),
            )
            .await;
        assert!(
            ok,
            "pusher-js could not subscribe to {channel}: {:?}",
            self.lines()
        );
    }

    /// The events received on `channel`, waiting until at least `expected` arrived or `within`
    /// passed.
    pub async fn events(&self, channel: &str, expected: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let events: Vec<Value> = self
                .lines()
                .into_iter()
                .filter(|l| l["type"] == "event" && l["channel"] == channel)
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
