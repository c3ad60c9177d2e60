//! Test helpers: an independent consumer that reads a topic from the beginning (partition
//! assignment, no consumer group: tansu's group joins are slow), and a private tansu broker a test
//! can stop and restart.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evolution_events::Uuid;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::time::Instant;

/// One record as read back.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

impl Record {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    /// The `id` header as a UUID (nil when missing or malformed).
    pub fn id(&self) -> Uuid {
        self.header("id").parse().unwrap_or(Uuid::nil())
    }
}

/// A consumer reading `topic` from the beginning in the background, keeping every record (in
/// arrival order) until dropped.
pub struct TopicWatcher {
    records: Arc<Mutex<Vec<Record>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TopicWatcher {
    /// Starts reading partitions `0..partitions` of `topic` (one that does not exist yet reads as
    /// empty until it does).
    pub fn start(brokers: &str, topic: &str, partitions: i32) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("evolution-test-{}", Uuid::now_v7().simple()))
            .set("enable.auto.commit", "false")
            // A position the broker no longer knows (a restarted broker) reads again from the start.
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .set("topic.metadata.refresh.interval.ms", "500")
            .set("fetch.wait.max.ms", "100")
            .set("reconnect.backoff.max.ms", "500")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&records);
        let task = tokio::spawn(async move {
            loop {
                // Errors: the topic does not exist yet, the broker restarts: keep polling.
                let Ok(message) = consumer.recv().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let headers = message
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
                    .unwrap_or_default();
                let record = Record {
                    partition: message.partition(),
                    key: message.key().map(<[u8]>::to_vec),
                    headers,
                    payload: message.payload().unwrap_or_default().to_vec(),
                };
                sink.lock().unwrap().push(record);
            }
        });
        Self { records, task }
    }

    /// Every record read so far.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// How many records were read so far.
    pub fn len(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    /// Waits until at least `expected` records were read (or `within` passed) and returns them.
    pub async fn wait(&self, expected: usize, within: Duration) -> Vec<Record> {
        let deadline = Instant::now() + within;
        while self.len() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.records()
    }
}

impl Drop for TopicWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads every record of `topic` (partitions `0..partitions`) from the beginning until `expected`
/// arrived or `within` passed.
pub async fn read_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    within: Duration,
) -> Vec<Record> {
    TopicWatcher::start(brokers, topic, partitions)
        .wait(expected, within)
        .await
}

/// The brokers of the shared test server, or `None` (the test is skipped; in CI it fails).
pub fn shared_brokers() -> Option<String> {
    env_or_skip("EVOLUTION_TEST_KAFKA_BROKERS")
}

/// `name`'s value, or `None` with a `skipped:` line (outside CI; in CI a missing variable fails).
pub fn env_or_skip(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if strict() => panic!("{name} is not set in CI: run through scripts/test (scripts/services env)"),
        _ => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipped: set {name} (eval \"$(scripts/services env)\")");
            }
            None
        }
    }
}

fn strict() -> bool {
    ["CI", "EVOLUTION_CONTRACT_STRICT"].iter().any(|name| {
        std::env::var(name).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true"))
    })
}

/// A background process killed (SIGKILL) when dropped.
pub struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    pub fn spawn(program: &str, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Self {
            child: Some(child),
            log,
        }
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub async fn wait_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// How many partitions `topic` has (0 when it does not exist).
pub fn partitions(brokers: &str, topic: &str) -> i32 {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| i32::try_from(t.partitions().len()).unwrap())
}
