//! Test helpers: an SQS client of the test's own, and a receiver that drains a queue in the
//! background (receive, then delete), keeping every message in arrival order.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use evolution_events::Uuid;
use tokio::time::Instant;

/// One message as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub body: String,
    pub attributes: Vec<(String, String)>,
    pub group_id: Option<String>,
    pub deduplication_id: Option<String>,
}

impl Received {
    pub fn attribute(&self, name: &str) -> &str {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The `id` attribute as a UUID (nil when missing or malformed).
    pub fn id(&self) -> Uuid {
        self.attribute("id").parse().unwrap_or(Uuid::nil())
    }
}

/// A client of `endpoint` (moto accepts any credentials).
pub async fn client(endpoint: &str) -> Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(endpoint)
        .load()
        .await;
    Client::new(&config)
}

/// The URL of `queue`, or `None` if it does not exist (yet).
pub async fn queue_url(client: &Client, queue: &str) -> Option<String> {
    client
        .get_queue_url()
        .queue_name(queue)
        .send()
        .await
        .ok()
        .and_then(|o| o.queue_url)
}

/// Drains `queue` in the background (it may not exist yet), until dropped.
pub struct QueueWatcher {
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl QueueWatcher {
    pub fn start(client: Client, queue: &str) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let queue = queue.to_owned();
        let task = tokio::spawn(async move {
            let mut url = None;
            loop {
                if url.is_none() {
                    url = queue_url(&client, &queue).await;
                    if url.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
                let Some(u) = url.as_deref() else { continue };
                let answer = client
                    .receive_message()
                    .queue_url(u)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .message_attribute_names("All")
                    .message_system_attribute_names(MessageSystemAttributeName::All)
                    .send()
                    .await;
                let Ok(answer) = answer else {
                    // The server restarts, or the queue was deleted: look it up again.
                    url = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                for message in answer.messages() {
                    let mut attributes: Vec<(String, String)> = message
                        .message_attributes()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_owned()))
                                .collect()
                        })
                        .unwrap_or_default();
                    attributes.sort();
                    let system = message.attributes();
                    let get = |name: MessageSystemAttributeName| system.and_then(|a| a.get(&name)).cloned();
                    sink.lock().unwrap().push(Received {
                        body: message.body().unwrap_or_default().to_owned(),
                        attributes,
                        group_id: get(MessageSystemAttributeName::MessageGroupId),
                        deduplication_id: get(MessageSystemAttributeName::MessageDeduplicationId),
                    });
                    if let Some(handle) = message.receipt_handle() {
                        client
                            .delete_message()
                            .queue_url(u)
                            .receipt_handle(handle)
                            .send()
                            .await
                            .ok();
                    }
                }
            }
        });
        Self { received, task }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits until at least `expected` messages arrived (or `within` passed) and returns them.
    pub async fn wait(&self, expected: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        while self.len() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.received()
    }
}

impl Drop for QueueWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
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
