//! CloudEvents mode end to end: a server with `EVENT_FORMAT=cloudevents-structured` and all seven
//! channels on real servers; an instance that follows it, then switches to binary mode
//! (`POST /format/set`, `eventFormat: cloudevents`), then back to the Evolution envelope. What
//! every channel delivered is read by independent consumers and decoded with the official
//! CloudEvents Rust SDK (`cloudevents-sdk`: its HTTP binding for the webhook, its JSON event
//! format for structured messages, its binary-mode deserializer for the Kafka, AMQP and NATS
//! headers), and every attribute is checked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudevents::event::{ExtensionValue, SpecVersion};
use cloudevents::message::{BinaryDeserializer, BinarySerializer, MessageAttributeValue};
use cloudevents::{AttributesReader, Data, Event};
use common::{API_KEY, Receiver, Server, service_env, unique};
use futures_util::StreamExt as _;
use rdkafka::message::Message as _;
use serde_json::{Value, json};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);
const SERVER_URL: &str = "https://api.example.com";
const SENDER: &str = "5511999999999@s.whatsapp.net";

/// A message in a binding's binary content mode: the attributes under `prefix`, the content type,
/// the body; decoded by the SDK's binary-mode visitor.
struct Binary {
    prefix: &'static str,
    headers: Vec<(String, String)>,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl BinaryDeserializer for Binary {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(
        self,
        mut visitor: V,
    ) -> cloudevents::message::Result<R> {
        let attribute = |name: &str| {
            self.headers
                .iter()
                .find(|(k, _)| k.strip_prefix(self.prefix) == Some(name))
                .map(|(_, v)| v.clone())
        };
        let spec = SpecVersion::try_from(attribute("specversion").unwrap_or_default().as_str())?;
        let names = spec.attribute_names();
        visitor = visitor.set_spec_version(spec)?;
        for (key, value) in &self.headers {
            let Some(name) = key.strip_prefix(self.prefix) else {
                continue;
            };
            if name == "specversion" {
                continue;
            }
            let value = MessageAttributeValue::String(value.clone());
            visitor = if names.contains(&name) {
                visitor.set_attribute(name, value)?
            } else {
                visitor.set_extension(name, value)?
            };
        }
        if let Some(content_type) = self.content_type {
            visitor =
                visitor.set_attribute("datacontenttype", MessageAttributeValue::String(content_type))?;
        }
        visitor.end_with_data(self.body)
    }
}

fn data_json(event: &Event) -> Value {
    match event.data() {
        Some(Data::Json(v)) => v.clone(),
        Some(Data::Binary(b)) => serde_json::from_slice(b).unwrap(),
        Some(Data::String(s)) => serde_json::from_str(s).unwrap(),
        None => Value::Null,
    }
}

fn extension(event: &Event, name: &str) -> Option<String> {
    match event.extension(name)? {
        ExtensionValue::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Every attribute of a CloudEvent the server wrote for event `id` of `instance`; its sequence.
fn check(event: &Event, id: &str, instance: &str, data: &Value, on: &str) -> u64 {
    assert_eq!(event.specversion(), SpecVersion::V10, "{on}");
    assert_eq!(event.id(), id, "{on}");
    assert_eq!(event.source().to_string(), SERVER_URL, "{on}");
    assert_eq!(event.ty(), "evolution.messages.upsert", "{on}");
    assert_eq!(event.subject(), Some(instance), "{on}");
    assert_eq!(event.datacontenttype(), Some("application/json"), "{on}");
    let time = event.time().copied().unwrap_or_else(|| panic!("{on}: no time"));
    let age = chrono::Utc::now() - time;
    assert!(age.num_seconds().abs() < 120, "{on}: time {time}");
    assert_eq!(extension(event, "sender").as_deref(), Some(SENDER), "{on}");
    assert!(
        extension(event, "traceparent").is_some_and(|t| t.starts_with("00-")),
        "{on}: the distributed-tracing extension"
    );
    assert_eq!(&data_json(event), data, "{on}");
    let sequence = extension(event, "sequence").unwrap_or_else(|| panic!("{on}: no sequence"));
    assert_eq!(
        sequence.len(),
        20,
        "{on}: the sequence is zero-padded: {sequence}"
    );
    sequence.parse().unwrap()
}

fn structured(raw: &[u8], on: &str) -> Event {
    serde_json::from_slice(raw).unwrap_or_else(|e| {
        panic!(
            "{on}: not a CloudEvent in JSON ({e}): {}",
            String::from_utf8_lossy(raw)
        )
    })
}

/// A node process (socket.io-client or pusher-js probe) whose JSON lines are collected.
struct Node {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Node {
    fn run(node_dir: &Path, name: &str, args: &[&str]) -> Self {
        let scripts = node_dir.join("scripts");
        std::fs::create_dir_all(&scripts).unwrap();
        let (stem, ext) = name.rsplit_once('.').unwrap();
        let script = scripts.join(format!("{stem}-ce-{}.{ext}", unique()));
        std::fs::copy(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/node")
                .join(name),
            &script,
        )
        .unwrap();
        let mut child = Command::new("node")
            .arg(&script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run node");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        Self { child, stdin, lines }
    }

    async fn wait(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self.lines.lock().unwrap().iter().find(|l| f(l)) {
                return found.clone();
            }
            assert!(Instant::now() < deadline, "{what}: nothing in {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Kafka records of `topic` (partition 0 from the beginning): headers and value.
type KafkaRecords = Arc<Mutex<Vec<(Vec<(String, String)>, Vec<u8>)>>>;

fn kafka_watch(brokers: &str, topic: &str) -> (KafkaRecords, tokio::task::JoinHandle<()>) {
    let consumer = common::kafka_reader(brokers, topic);
    let records: KafkaRecords = Arc::default();
    let sink = Arc::clone(&records);
    let task = tokio::spawn(async move {
        loop {
            let Ok(message) = consumer.recv().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let headers = common::kafka_headers_of(&message).into_iter().collect();
            sink.lock()
                .unwrap()
                .push((headers, message.payload().unwrap_or_default().to_vec()));
        }
    });
    (records, task)
}

async fn wait_for<T>(what: &str, mut poll: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = poll() {
            return value;
        }
        assert!(Instant::now() < deadline, "nothing on {what} in {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn amqp_headers(d: &lapin::message::Delivery) -> Vec<(String, String)> {
    d.properties
        .headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        lapin::types::AMQPValue::LongString(s) => s.to_string(),
                        other => format!("{other:?}"),
                    };
                    (k.to_string(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[allow(clippy::too_many_lines)]
#[tokio::test]
async fn every_channel_carries_cloudevents_in_both_modes_read_by_the_sdk() {
    let (Some(amqp), Some(nats_url), Some(brokers), Some(sqs), Some(node)) = (
        service_env("EVOLUTION_TEST_RABBITMQ_URI"),
        service_env("EVOLUTION_TEST_NATS_URL"),
        service_env("EVOLUTION_TEST_KAFKA_BROKERS"),
        service_env("EVOLUTION_TEST_SQS_ENDPOINT"),
        service_env("EVOLUTION_TEST_NODE_DIR"),
    ) else {
        return;
    };
    let (Some(p_host), Some(p_port), Some(app_id), Some(key), Some(secret)) = (
        service_env("EVOLUTION_TEST_PUSHER_HOST"),
        service_env("EVOLUTION_TEST_PUSHER_PORT"),
        service_env("EVOLUTION_TEST_PUSHER_APP_ID"),
        service_env("EVOLUTION_TEST_PUSHER_KEY"),
        service_env("EVOLUTION_TEST_PUSHER_SECRET"),
    ) else {
        return;
    };
    let node = PathBuf::from(node);
    let tag = unique();
    let instance = format!("ce-{tag}");
    let exchange = format!("evolution-ce-{tag}");
    let receiver = Receiver::start().await;
    let server = Server::start(
        "cloudevents",
        &[
            ("EVENT_FORMAT", "cloudevents-structured"),
            ("SERVER_URL", SERVER_URL),
            ("WEBSOCKET_ENABLED", "true"),
            ("RABBITMQ_ENABLED", "true"),
            ("RABBITMQ_URI", &amqp),
            ("RABBITMQ_EXCHANGE_NAME", &exchange),
            ("NATS_ENABLED", "true"),
            ("NATS_URI", &nats_url),
            ("KAFKA_ENABLED", "true"),
            ("KAFKA_BROKERS", &brokers),
            ("KAFKA_AUTO_CREATE_TOPICS", "true"),
            ("SQS_ENABLED", "true"),
            ("SQS_ENDPOINT", &sqs),
            ("SQS_REGION", "us-east-1"),
            ("SQS_ACCESS_KEY_ID", "test"),
            ("SQS_SECRET_ACCESS_KEY", "test"),
            ("PUSHER_ENABLED", "true"),
            ("PUSHER_HOST", &p_host),
            ("PUSHER_PORT", &p_port),
        ],
    )
    .await;
    let on = json!({"enabled": true, "events": ["MESSAGES_UPSERT"]});
    common::create_instance(
        &server,
        &instance,
        json!({
            "webhook": {"enabled": true, "url": receiver.url("/hook"), "events": ["MESSAGES_UPSERT"]},
            "websocket": on, "rabbitmq": on, "nats": on, "kafka": on, "sqs": on,
            "pusher": {"enabled": true, "appId": app_id, "key": key, "secret": secret, "cluster": "us2",
                "useTLS": false, "host": p_host, "port": p_port.parse::<u16>().unwrap(), "events": ["MESSAGES_UPSERT"]},
        }),
    )
    .await;

    // Consumers of every channel.
    let amqp_got = Arc::new(Mutex::new(Vec::new()));
    let amqp_sink = Arc::clone(&amqp_got);
    let _amqp = common::amqp_consumer(&amqp, &exchange, &format!("evolution.{instance}.*"), move |d| {
        amqp_sink.lock().unwrap().push(d);
    })
    .await;
    let nats = async_nats::connect(&nats_url).await.unwrap();
    let mut nats_sub = nats.subscribe(format!("evolution.{instance}.>")).await.unwrap();
    nats.flush().await.unwrap();
    let (kafka, kafka_task) = kafka_watch(&brokers, &format!("evolution.{instance}.messages-upsert"));
    let sqs_client = common::sqs_client(&sqs).await;
    let sqs_queue = format!("evolution-{instance}-messages-upsert");
    let sio = Node::run(
        &node,
        "sio-probe.mjs",
        &[&server.url(""), API_KEY, &format!("/{instance}")],
    );
    sio.wait("Socket.IO connect", |l| l["type"] == "connect").await;
    let mut pusher = Node::run(&node, "pusher-probe.js", &[&p_host, &p_port, &key]);
    pusher.wait("Pusher connect", |l| l["type"] == "connected").await;
    pusher.send_line(&format!("evolution.{instance}"));
    pusher
        .wait("Pusher subscribe", |l| l["type"] == "subscribed")
        .await;

    let mut sequences = Vec::new();
    for (phase, format) in ["structured", "binary", "evolution"].into_iter().enumerate() {
        match format {
            "binary" => set_format(&server, &instance, json!("cloudevents")).await,
            "evolution" => set_format(&server, &instance, json!("evolution")).await,
            _ => {}
        }
        let data = json!({"message": {"conversation": format!("olá {format} 👋")}, "n": phase});
        let id = common::post_events(
            &server,
            &instance,
            json!({"event": "MESSAGES_UPSERT", "data": data, "sender": SENDER}),
        )
        .await
        .remove(0);
        let mut events: Vec<(String, Option<Event>)> = Vec::new();
        let mut evolution: Vec<(String, Value)> = Vec::new();
        let mut read = |on: &str, ce: Option<Event>, raw: Option<&[u8]>| match format {
            "evolution" => evolution.push((on.to_owned(), serde_json::from_slice(raw.unwrap()).unwrap())),
            _ => events.push((on.to_owned(), ce)),
        };

        // Webhook: the SDK's HTTP binding reads either mode from the headers and the body.
        let hit = wait_for("the webhook", || receiver.hits().get(phase).cloned()).await;
        let content_type = hit.headers["content-type"].to_str().unwrap().to_owned();
        match format {
            "structured" => assert_eq!(content_type, "application/cloudevents+json"),
            _ => assert_eq!(content_type, "application/json"),
        }
        if format == "binary" {
            assert!(hit.headers.contains_key("ce-id") && hit.headers.contains_key("ce-specversion"));
        }
        let ce = (format != "evolution").then(|| {
            cloudevents::binding::http::to_event(&hit.headers, hit.raw.clone().into_bytes())
                .unwrap_or_else(|e| panic!("webhook ({format}): {e}"))
        });
        read("webhook", ce, Some(hit.raw.as_bytes()));

        // Kafka: `content-type` and `ce_` headers (binary), or the JSON event (structured).
        let (headers, value) = wait_for("Kafka", || kafka.lock().unwrap().get(phase).cloned()).await;
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let ce = match format {
            "binary" => {
                assert_eq!(header("content-type").as_deref(), Some("application/json"));
                Some(
                    Binary {
                        prefix: "ce_",
                        headers: headers.clone(),
                        content_type: header("content-type"),
                        body: value.clone(),
                    }
                    .into_event()
                    .unwrap(),
                )
            }
            "structured" => {
                assert_eq!(
                    header("content-type").as_deref(),
                    Some("application/cloudevents+json")
                );
                assert!(header("ce_id").is_none());
                Some(structured(&value, "Kafka"))
            }
            _ => None,
        };
        read("kafka", ce, Some(&value));

        // RabbitMQ: `cloudEvents:` application properties (binary), or the JSON event.
        let delivery = wait_for("RabbitMQ", || {
            let mut got = amqp_got.lock().unwrap();
            (!got.is_empty()).then(|| got.remove(0))
        })
        .await;
        let content_type = delivery
            .properties
            .content_type()
            .as_ref()
            .map(ToString::to_string);
        let ce = match format {
            "binary" => Some(
                Binary {
                    prefix: "cloudEvents:",
                    headers: amqp_headers(&delivery),
                    content_type: content_type.clone(),
                    body: delivery.data.clone(),
                }
                .into_event()
                .unwrap(),
            ),
            "structured" => {
                assert_eq!(content_type.as_deref(), Some("application/cloudevents+json"));
                Some(structured(&delivery.data, "RabbitMQ"))
            }
            _ => None,
        };
        read("rabbitmq", ce, Some(&delivery.data));

        // NATS: `ce-` headers (binary), or the JSON event.
        let message = tokio::time::timeout(WAIT, nats_sub.next())
            .await
            .unwrap()
            .unwrap();
        let nats_headers: Vec<(String, String)> = message
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.as_str().to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let nats_content_type = nats_headers
            .iter()
            .find(|(k, _)| k == "Content-Type")
            .map(|(_, v)| v.clone());
        let ce = match format {
            "binary" => Some(
                Binary {
                    prefix: "ce-",
                    headers: nats_headers.clone(),
                    content_type: nats_content_type,
                    body: message.payload.to_vec(),
                }
                .into_event()
                .unwrap(),
            ),
            "structured" => Some(structured(&message.payload, "NATS")),
            _ => None,
        };
        read("nats", ce, Some(&message.payload));

        // SQS, Socket.IO and Pusher carry the structured event in both CloudEvents modes.
        let body = common::sqs_next(&sqs_client, &sqs_queue, WAIT)
            .await
            .and_then(|m| m.body)
            .unwrap_or_else(|| panic!("nothing on SQS queue {sqs_queue}"));
        let ce = (format != "evolution").then(|| structured(body.as_bytes(), "SQS"));
        read("sqs", ce, Some(body.as_bytes()));
        let line = sio
            .wait("Socket.IO event", |l| {
                l["type"] == "event" && l["raw"].as_str().is_some_and(|r| r.contains(&id))
            })
            .await;
        let raw = line["raw"].as_str().unwrap().to_owned();
        let ce = (format != "evolution").then(|| structured(raw.as_bytes(), "Socket.IO"));
        read("socket.io", ce, Some(raw.as_bytes()));
        let line = pusher
            .wait("Pusher event", |l| {
                l["type"] == "event" && l["raw"].as_str().is_some_and(|r| r.contains(&id))
            })
            .await;
        let raw = line["raw"].as_str().unwrap().to_owned();
        let ce = (format != "evolution").then(|| structured(raw.as_bytes(), "Pusher"));
        read("pusher", ce, Some(raw.as_bytes()));

        if format == "evolution" {
            for (on, body) in &evolution {
                assert_eq!(body["id"], id.as_str(), "{on}: {body}");
                assert_eq!(body["event"], "MESSAGES_UPSERT", "{on}: {body}");
                assert_eq!(body["data"], data, "{on}: {body}");
                assert!(body.get("specversion").is_none(), "{on}: {body}");
            }
            assert_eq!(evolution.len(), 7);
        } else {
            assert_eq!(events.len(), 7);
            let mut seen = HashMap::new();
            for (on, event) in &events {
                let event = event.as_ref().unwrap();
                seen.insert(
                    on.clone(),
                    check(event, &id, &instance, &data, &format!("{on} ({format})")),
                );
            }
            let sequence = seen["webhook"];
            assert!(seen.values().all(|s| *s == sequence), "{seen:?}");
            sequences.push(sequence);
        }
    }
    assert!(sequences[1] > sequences[0], "{sequences:?}");
    kafka_task.abort();
}

async fn set_format(server: &Server, instance: &str, format: Value) {
    let (status, body) = server
        .call(
            "POST",
            &format!("/format/set/{instance}"),
            Some(API_KEY),
            Some(json!({"eventFormat": format})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["eventFormat"], format);
    let (status, found) = server
        .call("GET", &format!("/format/find/{instance}"), Some(API_KEY), None)
        .await;
    assert_eq!((status, &found["effective"]), (200, &format), "{found}");
}

#[tokio::test]
async fn a_bad_event_format_is_refused_naming_the_field() {
    let server = Server::start("cloudevents-bad", &[]).await;
    let (status, body) = server
        .call(
            "POST",
            "/instance/create",
            Some(API_KEY),
            Some(json!({"instanceName": format!("bad-{}", unique()), "eventFormat": "xml"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("eventFormat"), "{body}");
    let instance = format!("ok-{}", unique());
    common::create_instance(&server, &instance, json!({})).await;
    let (status, body) = server
        .call(
            "POST",
            &format!("/format/set/{instance}"),
            Some(API_KEY),
            Some(json!({"eventFormat": 3})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("eventFormat"), "{body}");
    let (status, found) = server
        .call("GET", &format!("/format/find/{instance}"), Some(API_KEY), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(found, json!({"eventFormat": null, "effective": "evolution"}));
    let out = Command::new(env!("CARGO_BIN_EXE_evolution-server"))
        .args(["config", "check"])
        .env_clear()
        .env("EVENT_FORMAT", "avro")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("EVENT_FORMAT") && stderr.contains("cloudevents"),
        "{stderr}"
    );
}
