//! AsyncAPI documents: `GET /asyncapi/{instance}` for an instance with all seven channels on and
//! `GET /asyncapi` for the global channels, in both naming profiles, validated by the official
//! parser (npm `@asyncapi/parser`, `tests/node/asyncapi-validate.mjs`); then consumers built only
//! from the instance's document (NATS subject, RabbitMQ exchange and routing key, Kafka topic, SQS
//! queue, webhook path) receive an event posted afterwards, its `event` the one the document's
//! message schema fixes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{API_KEY, Receiver, Server, seed_event, service_env, unique};
use futures_util::StreamExt as _;
use rdkafka::message::Message as _;
use serde_json::{Value, json};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);

struct Services {
    amqp: String,
    nats: String,
    kafka: String,
    sqs: String,
    node: PathBuf,
    pusher: (String, String, String, String, String),
}

fn services() -> Option<Services> {
    let node = service_env("EVOLUTION_TEST_NODE_DIR")?;
    let node = PathBuf::from(node);
    assert!(
        node.join("node_modules/@asyncapi/parser").is_dir(),
        "{} has no @asyncapi/parser: run scripts/services up node",
        node.display()
    );
    Some(Services {
        amqp: service_env("EVOLUTION_TEST_RABBITMQ_URI")?,
        nats: service_env("EVOLUTION_TEST_NATS_URL")?,
        kafka: service_env("EVOLUTION_TEST_KAFKA_BROKERS")?,
        sqs: service_env("EVOLUTION_TEST_SQS_ENDPOINT")?,
        node,
        pusher: (
            service_env("EVOLUTION_TEST_PUSHER_HOST")?,
            service_env("EVOLUTION_TEST_PUSHER_PORT")?,
            service_env("EVOLUTION_TEST_PUSHER_APP_ID")?,
            service_env("EVOLUTION_TEST_PUSHER_KEY")?,
            service_env("EVOLUTION_TEST_PUSHER_SECRET")?,
        ),
    })
}

/// Runs the official parser on `docs`; its verdict per document (errors, warnings, summary).
fn validate(node: &std::path::Path, docs: &[(&str, &Value)]) -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("asyncapi-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = docs
        .iter()
        .map(|(name, doc)| {
            let file = dir.join(format!("{name}.json"));
            std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
            file
        })
        .collect();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node/asyncapi-validate.mjs");
    let out = Command::new("node")
        .arg(script)
        .args(&files)
        .env("NODE_DIR", node)
        .output()
        .expect("run node (Node 20: scripts/services up node)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdicts: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        out.status.success() && verdicts.len() == docs.len(),
        "the AsyncAPI parser refused a document:\n{stdout}\n{}\n(documents in {})",
        String::from_utf8_lossy(&out.stderr),
        dir.display()
    );
    for verdict in &verdicts {
        assert_eq!(verdict["errors"], json!([]), "{verdict}");
    }
    verdicts
}

/// The channel of `doc` on servers named `server` (a prefix) that carries `kind`.
fn channel<'a>(doc: &'a Value, server: &str, kind: &str) -> &'a Value {
    doc["channels"]
        .as_object()
        .unwrap()
        .values()
        .find(|c| {
            c["servers"][0]["$ref"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("#/servers/{server}")))
                && c["messages"].get(kind).is_some()
        })
        .unwrap_or_else(|| panic!("no {server} channel for {kind} in {doc:#}"))
}

fn address(doc: &Value, server: &str, kind: &str) -> String {
    channel(doc, server, kind)["address"].as_str().unwrap().to_owned()
}

async fn wait_for<T>(what: &str, mut poll: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = poll() {
            return value;
        }
        assert!(Instant::now() < deadline, "nothing arrived on {what} in {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn kafka_payload(brokers: &str, topic: &str) -> Vec<u8> {
    let consumer = common::kafka_reader(brokers, topic);
    let message = tokio::time::timeout(WAIT, consumer.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing on Kafka topic {topic}"))
        .unwrap();
    message.payload().unwrap_or_default().to_vec()
}

async fn documents_validate_and_lead_to_working_consumers(profile: &str) {
    let Some(s) = services() else { return };
    let tag = unique();
    let instance = format!("doc-{tag}");
    let exchange = format!("evolution-asyncapi-{tag}");
    let receiver = Receiver::start().await;
    let (host, port, app_id, key, secret) = &s.pusher;
    let server = Server::start(
        &format!("asyncapi-{profile}"),
        &[
            ("EVENT_NAMING", profile),
            ("WEBSOCKET_ENABLED", "true"),
            ("WEBSOCKET_GLOBAL_EVENTS", "true"),
            ("WEBSOCKET_EVENTS_MESSAGES_UPSERT", "true"),
            ("WEBHOOK_GLOBAL_ENABLED", "true"),
            ("WEBHOOK_GLOBAL_URL", &receiver.url("/global")),
            ("WEBHOOK_EVENTS_MESSAGES_UPSERT", "true"),
            ("RABBITMQ_ENABLED", "true"),
            ("RABBITMQ_URI", &s.amqp),
            ("RABBITMQ_EXCHANGE_NAME", &exchange),
            ("RABBITMQ_GLOBAL_ENABLED", "true"),
            ("RABBITMQ_EVENTS_MESSAGES_UPSERT", "true"),
            ("NATS_ENABLED", "true"),
            ("NATS_URI", &s.nats),
            ("NATS_GLOBAL_ENABLED", "true"),
            ("NATS_PREFIX_KEY", &format!("global{tag}")),
            ("NATS_EVENTS_MESSAGES_UPSERT", "true"),
            ("KAFKA_ENABLED", "true"),
            ("KAFKA_BROKERS", &s.kafka),
            ("KAFKA_AUTO_CREATE_TOPICS", "true"),
            ("KAFKA_GLOBAL_ENABLED", "true"),
            ("KAFKA_EVENTS_MESSAGES_UPSERT", "true"),
            ("SQS_ENABLED", "true"),
            ("SQS_ENDPOINT", &s.sqs),
            ("SQS_REGION", "us-east-1"),
            ("SQS_ACCESS_KEY_ID", "test"),
            ("SQS_SECRET_ACCESS_KEY", "test"),
            ("PUSHER_ENABLED", "true"),
            ("PUSHER_HOST", host),
            ("PUSHER_PORT", port),
            ("PUSHER_GLOBAL_ENABLED", "true"),
            ("PUSHER_GLOBAL_APP_ID", app_id),
            ("PUSHER_GLOBAL_KEY", key),
            ("PUSHER_GLOBAL_SECRET", secret),
            ("PUSHER_GLOBAL_CLUSTER", "us2"),
            ("PUSHER_GLOBAL_USE_TLS", "false"),
            ("PUSHER_EVENTS_MESSAGES_UPSERT", "true"),
        ],
    )
    .await;
    let events = json!(["MESSAGES_UPSERT", "CONNECTION_UPDATE"]);
    let on = json!({"enabled": true, "events": events});
    let (status, created) = server
        .call(
            "POST",
            "/instance/create",
            Some(API_KEY),
            Some(json!({
                "instanceName": instance,
                "webhook": {"enabled": true, "url": receiver.url("/hook"), "byEvents": true, "events": events},
                "websocket": on, "rabbitmq": on, "nats": on, "kafka": on, "sqs": on,
                "pusher": {"enabled": true, "appId": app_id, "key": key, "secret": secret, "cluster": "us2",
                    "useTLS": false, "host": host, "port": port.parse::<u16>().unwrap(), "events": events},
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let token = created["hash"].as_str().unwrap();

    // The instance's token reads its own document; the global one needs the global key.
    let (status, doc) = server
        .call("GET", &format!("/asyncapi/{instance}"), Some(token), None)
        .await;
    assert_eq!(status, 200, "{doc}");
    let (status, global) = server.call("GET", "/asyncapi", Some(API_KEY), None).await;
    assert_eq!(status, 200, "{global}");
    let (status, refused) = server.call("GET", "/asyncapi", Some(token), None).await;
    assert_eq!(status, 403, "{refused}");
    let (status, _) = server.call("GET", "/asyncapi/nobody", Some(token), None).await;
    assert_eq!(status, 403);

    let verdicts = validate(&s.node, &[("instance", &doc), ("global", &global)]);
    // The parser's own model of the instance's document: every channel of the seven, each event
    // selected (and only those) on each.
    let mut protocols: Vec<String> = verdicts[0]["summary"]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let server = c["servers"][0].as_str().unwrap();
            server.split("://").next().unwrap().to_owned()
        })
        .collect();
    protocols.sort();
    protocols.dedup();
    assert_eq!(protocols, ["amqp", "http", "kafka", "nats", "sqs", "ws"]);
    let servers: Vec<&String> = doc["servers"].as_object().unwrap().keys().collect();
    assert_eq!(servers.len(), 7, "{servers:?}");
    for kind in ["MESSAGES_UPSERT", "CONNECTION_UPDATE"] {
        for server in [
            "webhook-", "socketio", "rabbitmq", "nats", "kafka", "sqs", "pusher-",
        ] {
            channel(&doc, server, kind);
        }
    }
    assert!(
        doc["channels"]
            .as_object()
            .unwrap()
            .values()
            .all(|c| c["messages"].get("CALL").is_none()),
        "CALL is not selected"
    );
    // The global document has the global channels, the instance a parameter of the addresses
    // that hold it.
    for server in ["webhook-", "socketio", "rabbitmq", "nats", "kafka", "pusher-"] {
        channel(&global, server, "MESSAGES_UPSERT");
    }
    for c in global["channels"].as_object().unwrap().values() {
        let templated = c["address"].as_str().unwrap().contains("{instance}");
        assert_eq!(templated, c["parameters"]["instance"].is_object(), "{c}");
    }
    if profile == "seed" {
        // evolution-v2's global subject has no instance in it; the seed profile's does.
        let nats_global = channel(&global, "nats", "MESSAGES_UPSERT");
        assert_eq!(
            nats_global["address"],
            format!("global{tag}.{{instance}}.messages.upsert")
        );
    }
    // Nothing secret in either document.
    for text in [doc.to_string(), global.to_string()] {
        for secret in [secret.as_str(), "guest:guest", token, API_KEY] {
            assert!(!text.contains(secret), "a secret in the document");
        }
    }

    // A consumer of each broker channel, from the instance's document alone.
    let kind = "MESSAGES_UPSERT";
    let event_name = doc["components"]["schemas"][kind]["properties"]["event"]["const"]
        .as_str()
        .unwrap()
        .to_owned();
    let nats = async_nats::connect(&s.nats).await.unwrap();
    let mut subscription = nats.subscribe(address(&doc, "nats", kind)).await.unwrap();
    nats.flush().await.unwrap();
    let amqp_channel = channel(&doc, "rabbitmq", kind);
    let got_amqp = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got_amqp);
    let _amqp = common::amqp_consumer(
        &s.amqp,
        amqp_channel["bindings"]["amqp"]["exchange"]["name"]
            .as_str()
            .unwrap(),
        amqp_channel["address"].as_str().unwrap(),
        move |d| sink.lock().unwrap().push(d.data),
    )
    .await;
    let posted = common::post_events(&server, &instance, seed_event(kind)).await;
    let check = |raw: &[u8], on: &str| {
        let body: Value = serde_json::from_slice(raw).unwrap();
        assert_eq!(body["id"], posted[0].as_str(), "{on}: {body}");
        assert_eq!(body["event"], event_name.as_str(), "{on}: {body}");
        assert_eq!(body["instance"], instance.as_str(), "{on}: {body}");
    };
    let message = tokio::time::timeout(WAIT, subscription.next())
        .await
        .unwrap()
        .unwrap();
    check(&message.payload, "NATS");
    let amqp = wait_for("RabbitMQ", || got_amqp.lock().unwrap().pop()).await;
    check(&amqp, "RabbitMQ");
    check(
        &kafka_payload(&s.kafka, &address(&doc, "kafka", kind)).await,
        "Kafka",
    );
    check(
        common::sqs_next(
            &common::sqs_client(&s.sqs).await,
            &address(&doc, "sqs", kind),
            WAIT,
        )
        .await
        .and_then(|m| m.body)
        .expect("nothing on the SQS queue of the document")
        .as_bytes(),
        "SQS",
    );
    let path = address(&doc, "webhook-", kind);
    let hit = wait_for("the webhook", || {
        receiver.hits().into_iter().find(|h| h.path == path)
    })
    .await;
    check(hit.raw.as_bytes(), "webhook");

    // In CloudEvents mode the document describes CloudEvents: binary mode puts the attributes in
    // each binding's headers and the data in the body; structured mode (and the channels without
    // a binary binding) carries the JSON event.
    let mut documents = Vec::new();
    for format in ["cloudevents", "cloudevents-structured"] {
        let (status, body) = server
            .call(
                "POST",
                &format!("/format/set/{instance}"),
                Some(token),
                Some(json!({"eventFormat": format})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, doc) = server
            .call("GET", &format!("/asyncapi/{instance}"), Some(token), None)
            .await;
        assert_eq!(status, 200, "{doc}");
        documents.push(doc);
    }
    validate(
        &s.node,
        &[("binary", &documents[0]), ("structured", &documents[1])],
    );
    let (binary, structured) = (&documents[0], &documents[1]);
    let schemas = &binary["components"]["schemas"];
    let kafka = &channel(binary, "kafka", kind)["messages"][kind];
    assert_eq!(kafka["payload"]["$ref"], "#/components/schemas/data");
    let headers = kafka["headers"]["$ref"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    for name in [
        "ce_id",
        "ce_type",
        "ce_specversion",
        "ce_sequence",
        "content-type",
    ] {
        assert!(
            schemas[headers]["properties"].get(name).is_some(),
            "{name} in {headers}"
        );
    }
    let amqp = &channel(binary, "rabbitmq", kind)["messages"][kind];
    let headers = amqp["headers"]["$ref"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    assert!(schemas[headers]["properties"].get("cloudEvents:id").is_some());
    let sqs = &channel(binary, "sqs", kind)["messages"][kind];
    assert_eq!(sqs["contentType"], "application/cloudevents+json");
    assert_eq!(
        schemas["cloudevent-MESSAGES_UPSERT"]["properties"]["type"]["const"],
        "evolution.messages.upsert"
    );
    let webhook = &channel(structured, "webhook-", kind)["messages"][kind];
    assert_eq!(webhook["contentType"], "application/cloudevents+json");
    assert_eq!(
        webhook["payload"]["$ref"],
        "#/components/schemas/cloudevent-MESSAGES_UPSERT"
    );
}

#[tokio::test]
async fn seed_profile_documents_validate_and_lead_to_working_consumers() {
    documents_validate_and_lead_to_working_consumers("seed").await;
}

#[tokio::test]
async fn evolution_v2_profile_documents_validate_and_lead_to_working_consumers() {
    documents_validate_and_lead_to_working_consumers("evolution-v2").await;
}
