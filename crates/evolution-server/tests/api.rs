//! The REST API end to end: the real binary, a real SQLite file, a real HTTP receiver.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{API_KEY, Receiver, Server};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

async fn create(server: &Server, body: Value) -> (u16, Value) {
    server
        .call("POST", "/instance/create", Some(API_KEY), Some(body))
        .await
}

fn messages(body: &Value) -> String {
    body["response"]["message"].to_string()
}

#[tokio::test]
async fn create_set_post_and_receive_the_seed_payload() {
    let receiver = Receiver::start().await;
    let server = Server::start("flow", &[("SERVER_URL", "https://api.example.com")]).await;
    let (status, body) = create(&server, json!({"instanceName": "minha-instancia"})).await;
    assert_eq!(status, 201, "{body}");
    let token = body["hash"].as_str().unwrap().to_owned();
    assert_eq!(body["instance"]["instanceName"], "minha-instancia");
    assert_eq!(body["instance"]["status"], "created");

    let webhook = json!({"webhook": {
        "enabled": true, "url": receiver.url("/webhook"),
        "events": ["MESSAGES_UPSERT", "INSTANCE_DELETE", "REMOVE_INSTANCE"],
        "headers": {"Authorization": "Bearer token"}, "base64": true, "byEvents": false
    }});
    let (status, body) = server
        .call(
            "POST",
            "/webhook/set/minha-instancia",
            Some(&token),
            Some(webhook),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["webhook"]["headers"]["Authorization"], "**REDACTED**");

    let event = json!({"event": "MESSAGES_UPSERT", "sender": "5511999999999@s.whatsapp.net", "data": {
        "key": {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": false, "id": "MESSAGE_ID"},
        "message": {"conversation": "olá 👋"}, "messageTimestamp": "1234567890"}});
    let (status, body) = server
        .call("POST", "/events/minha-instancia", Some(&token), Some(event))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["ids"][0].as_str().unwrap().to_owned();

    let hits = receiver.wait_for(1, WAIT).await;
    assert_eq!(
        hits.len(),
        1,
        "only MESSAGES_UPSERT is selected (INSTANCE_CREATE went before the webhook)"
    );
    let hit = &hits[0];
    assert_eq!(hit.path, "/webhook");
    assert_eq!(hit.headers["authorization"], "Bearer token");
    assert_eq!(hit.headers["webhook-id"], id.as_str());
    let keys: Vec<&str> = hit.body.as_object().unwrap().keys().map(String::as_str).collect();
    let mut order: Vec<(usize, &str)> = keys
        .iter()
        .map(|k| (hit.raw.find(&format!("\"{k}\":")).unwrap(), *k))
        .collect();
    order.sort_unstable();
    let order: Vec<&str> = order.into_iter().map(|(_, k)| k).collect();
    assert_eq!(
        order,
        [
            "id",
            "event",
            "instance",
            "data",
            "date_time",
            "sender",
            "server_url",
            "apikey",
            "sequence"
        ]
    );
    assert_eq!(hit.body["event"], "MESSAGES_UPSERT");
    assert_eq!(hit.body["instance"], "minha-instancia");
    assert_eq!(hit.body["data"]["message"]["conversation"], "olá 👋");
    assert_eq!(hit.body["server_url"], "https://api.example.com");
    assert_eq!(hit.body["sender"], "5511999999999@s.whatsapp.net");
    assert_eq!(
        hit.body["apikey"],
        Value::Null,
        "the token is not exposed by default"
    );
    let date = hit.body["date_time"].as_str().unwrap();
    assert!(
        date.ends_with('Z') && date.len() == 24,
        "RFC 3339 UTC with milliseconds: {date}"
    );

    // Deleting emits INSTANCE_DELETE then REMOVE_INSTANCE, both delivered with the instance's settings.
    let (status, body) = server
        .call("DELETE", "/instance/delete/minha-instancia", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let hits = receiver.wait_for(3, WAIT).await;
    let events: Vec<&str> = hits.iter().map(|h| h.body["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["MESSAGES_UPSERT", "INSTANCE_DELETE", "REMOVE_INSTANCE"]);
    assert_eq!(hits[2].body["data"], Value::Null);
    let (status, _) = server
        .call("GET", "/webhook/find/minha-instancia", Some(API_KEY), None)
        .await;
    assert_eq!(status, 404, "deleted");
}

#[tokio::test]
async fn global_webhook_by_events_and_lifecycle_events() {
    let receiver = Receiver::start().await;
    let base = receiver.url("/global/");
    let server = Server::start(
        "global",
        &[
            ("WEBHOOK_GLOBAL_ENABLED", "true"),
            ("WEBHOOK_GLOBAL_URL", &base),
            ("WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS", "true"),
            ("WEBHOOK_EVENTS_APPLICATION_STARTUP", "true"),
            ("WEBHOOK_EVENTS_INSTANCE_CREATE", "true"),
            ("WEBHOOK_EVENTS_MESSAGES_UPSERT", "true"),
        ],
    )
    .await;
    let (status, _) = create(&server, json!({"instanceName": "acme"})).await;
    assert_eq!(status, 201);
    let (status, _) = server
        .call(
            "POST",
            "/events/acme",
            Some(API_KEY),
            Some(json!([{"event": "messages.upsert", "data": {"n": 1}}, {"event": "CALL", "data": {}}])),
        )
        .await;
    assert_eq!(status, 202);
    let hits = receiver.wait_for(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut paths: Vec<String> = receiver.hits().iter().map(|h| h.path.clone()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/global/APPLICATION_STARTUP",
            "/global/INSTANCE_CREATE",
            "/global/MESSAGES_UPSERT"
        ],
        "CALL is not selected globally; {hits:?}"
    );
}

#[tokio::test]
async fn apikey_rules() {
    let server = Server::start("auth", &[]).await;
    let (_, a) = create(&server, json!({"instanceName": "a"})).await;
    let (_, b) = create(&server, json!({"instanceName": "b", "token": "token-of-b-123"})).await;
    let token_a = a["hash"].as_str().unwrap();
    assert_eq!(b["hash"], "token-of-b-123");
    let paths = [
        ("GET", "/webhook/find/b"),
        ("POST", "/webhook/set/b"),
        ("POST", "/events/b"),
        ("GET", "/events/b/01934b5e-7c3a-7a00-8000-000000000000"),
        ("GET", "/deliveries/b"),
        ("POST", "/deliveries/b/redrive"),
        ("DELETE", "/deliveries/b/dead"),
        ("DELETE", "/instance/delete/b"),
    ];
    for (method, path) in paths {
        let body = Some(json!({"webhook": {"enabled": false, "url": ""}, "event": "CALL"}));
        let (status, resp) = server.call(method, path, Some(token_a), body.clone()).await;
        assert_eq!(status, 403, "{method} {path} with a's token: {resp}");
        assert!(messages(&resp).contains("another instance"), "{resp}");
        let (status, _) = server.call(method, path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a key");
        let (status, _) = server.call(method, path, Some("wrong"), body).await;
        assert_eq!(status, 401, "{method} {path} with a wrong key");
    }
    // Another instance's token does not learn whether an instance exists.
    let (status, _) = server
        .call("GET", "/webhook/find/nope", Some(token_a), None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .call("GET", "/webhook/find/nope", Some(API_KEY), None)
        .await;
    assert_eq!(status, 404);
    let (status, own) = server
        .call("GET", "/instance/fetchInstances", Some(token_a), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(own.as_array().unwrap().len(), 1);
    assert_eq!(own[0]["instanceName"], "a");
    assert!(own[0].get("token").is_none(), "tokens are not exposed by default");
    let (_, all) = server
        .call("GET", "/instance/fetchInstances", Some(API_KEY), None)
        .await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (status, _) = server
        .call(
            "POST",
            "/instance/create",
            Some(token_a),
            Some(json!({"instanceName": "c"})),
        )
        .await;
    assert_eq!(status, 403, "an instance token cannot create instances");
    let (status, _) = server.call("GET", "/webhook/find/a", Some(token_a), None).await;
    assert_eq!(status, 200, "its own instance");
}

#[tokio::test]
async fn bad_input_gets_a_4xx_naming_the_field_and_stores_nothing() {
    let server = Server::start(
        "bad",
        &[("EVENTS_MAX_BODY_BYTES", "4096"), ("EVENTS_MAX_PER_REQUEST", "3")],
    )
    .await;
    let (status, _) = create(&server, json!({"instanceName": "acme"})).await;
    assert_eq!(status, 201);
    let bad_creates = [
        (json!({"instanceName": "a.b"}), "instanceName"),
        (json!({"instanceName": ""}), "instanceName"),
        (json!({"instanceName": "x".repeat(65)}), "instanceName"),
        (json!({"instanceName": "a b*"}), "instanceName"),
        (json!({}), "instanceName: is required"),
        (
            json!({"instanceName": "ok1", "webhook": {"url": "ftp://x"}}),
            "webhook.url",
        ),
        (
            json!({"instanceName": "ok2", "webhook": {"url": "http://h/", "events": ["NOPE"]}}),
            "webhook.events[0]",
        ),
        (
            json!({"instanceName": "ok3", "rabbitmq": {"enabled": true}}),
            "RABBITMQ_ENABLED",
        ),
        (
            json!({"instanceName": "ok4", "colour": "red"}),
            "colour: unknown field",
        ),
        (json!({"instanceName": "acme"}), "already exists"),
        (json!(["not", "an", "object"]), "expected a JSON object"),
    ];
    for (body, needle) in bad_creates {
        let (status, resp) = create(&server, body.clone()).await;
        assert!((400..500).contains(&status), "{body} → {status}");
        assert!(messages(&resp).contains(needle), "{body}: {resp}");
        assert!(resp["error"].as_str().is_some(), "{resp}");
    }
    let (_, all) = server
        .call("GET", "/instance/fetchInstances", Some(API_KEY), None)
        .await;
    assert_eq!(
        all.as_array().unwrap().len(),
        1,
        "no instance half-created: {all}"
    );

    let good = json!({"webhook": {"enabled": true, "url": "http://127.0.0.1:9/x", "events": ["CALL"]}});
    assert_eq!(
        server
            .call("POST", "/webhook/set/acme", Some(API_KEY), Some(good))
            .await
            .0,
        201
    );
    let bad_sets = [
        (
            json!({"webhook": {"enabled": "yes", "url": "http://h/"}}),
            "webhook.enabled",
        ),
        (
            json!({"webhook": {"enabled": true, "url": "javascript:alert(1)"}}),
            "webhook.url",
        ),
        (
            json!({"webhook": {"enabled": true, "url": "http://h/", "events": ["MESSAGES_UPSERT", "FOO"]}}),
            "MESSAGES_UPSERT",
        ),
        (
            json!({"webhook": {"enabled": true, "url": "http://h/", "extra": 1}}),
            "webhook.extra",
        ),
        (json!({"nats": {"enabled": true}}), "webhook: is required"),
        (
            json!({"webhook": {"enabled": true, "url": "http://h/"}, "nats": {}}),
            "nats: unknown field",
        ),
    ];
    for (body, needle) in bad_sets {
        let (status, resp) = server
            .call("POST", "/webhook/set/acme", Some(API_KEY), Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert!(messages(&resp).contains(needle), "{body}: {resp}");
    }
    let (_, stored) = server
        .call("GET", "/webhook/find/acme", Some(API_KEY), None)
        .await;
    assert_eq!(stored["url"], "http://127.0.0.1:9/x", "unchanged: {stored}");
    assert_eq!(stored["events"], json!(["CALL"]));

    let (status, resp) = server
        .call("POST", "/nope/set/acme", Some(API_KEY), Some(json!({})))
        .await;
    assert_eq!(status, 404, "{resp}");

    let (status, resp) = server
        .raw("POST", "/events/acme", b"{\"event\": \"CALL\", ")
        .await;
    assert_eq!(status, 400, "{resp}");
    let (status, resp) = server
        .call(
            "POST",
            "/events/acme",
            Some(API_KEY),
            Some(json!({"event": "NOPE", "data": {}})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        messages(&resp).contains("STATUS_INSTANCE"),
        "lists the valid names: {resp}"
    );
    let (status, resp) = server
        .call(
            "POST",
            "/events/acme",
            Some(API_KEY),
            Some(json!({"event": "CALL", "dato": {}})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(messages(&resp).contains("dato"), "{resp}");
    let big = json!({"event": "CALL", "data": {"x": "y".repeat(5000)}});
    let (status, resp) = server
        .call("POST", "/events/acme", Some(API_KEY), Some(big))
        .await;
    assert_eq!(status, 413, "{resp}");
    let four: Vec<Value> = (0..4).map(|_| json!({"event": "CALL"})).collect();
    let (status, resp) = server
        .call("POST", "/events/acme", Some(API_KEY), Some(Value::Array(four)))
        .await;
    assert_eq!(status, 413, "{resp}");
    assert!(messages(&resp).contains("EVENTS_MAX_PER_REQUEST"));
    let mixed = json!([{"event": "CALL"}, {"event": "BAD"}]);
    let (status, resp) = server
        .call("POST", "/events/acme", Some(API_KEY), Some(mixed))
        .await;
    assert_eq!(status, 400);
    assert!(messages(&resp).contains("[1].event"), "{resp}");
    let (_, log) = server.call("GET", "/deliveries/acme", Some(API_KEY), None).await;
    assert_eq!(log.as_array().unwrap().len(), 0, "nothing was stored: {log}");
    let (status, resp) = server
        .call("GET", "/deliveries/acme?status=bogus", Some(API_KEY), None)
        .await;
    assert_eq!(status, 400, "{resp}");
    let (status, resp) = server
        .call("GET", "/events/acme/not-a-uuid", Some(API_KEY), None)
        .await;
    assert_eq!(status, 400, "{resp}");
    assert!(
        messages(&resp).contains("id: `not-a-uuid` is not an event id"),
        "{resp}"
    );
    let (status, resp) = server
        .call(
            "GET",
            "/events/acme/01934b5e-7c3a-7a00-8000-000000000000",
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(status, 404, "{resp}");
    assert!(messages(&resp).contains("id: no event"), "{resp}");
}

/// A server whose instance `acme` posted one `CALL` event to a receiver answering 404: its delivery
/// and the `ERRORS` event that follows both die (404 is non-retryable; the dead delivery of an
/// `ERRORS` event raises nothing, so no loop). Returns once both are in the dead letters.
async fn two_dead_deliveries(name: &str) -> (Receiver, Server, Vec<Value>) {
    let receiver = Receiver::start().await;
    receiver.set_status(404);
    let server = Server::start(name, &[]).await;
    let webhook = json!({"enabled": true, "url": receiver.url("/hook"), "events": ["CALL", "ERRORS"]});
    let (status, _) = create(&server, json!({"instanceName": "acme", "webhook": webhook})).await;
    assert_eq!(status, 201);
    let (status, _) = server
        .call(
            "POST",
            "/events/acme",
            Some(API_KEY),
            Some(json!({"event": "CALL", "data": {}})),
        )
        .await;
    assert_eq!(status, 202);
    let mut dead = Value::Null;
    for _ in 0..200 {
        dead = server
            .call("GET", "/deliveries/acme?status=dead", Some(API_KEY), None)
            .await
            .1;
        if dead.as_array().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = dead.as_array().unwrap().clone();
    assert_eq!(dead.len(), 2, "{dead:?}");
    (receiver, server, dead)
}

#[tokio::test]
async fn dead_deliveries_are_logged_raise_errors_and_can_be_retried() {
    let (receiver, server, dead) = two_dead_deliveries("dead").await;
    let call = dead.iter().find(|d| d["event"] == "CALL").unwrap();
    assert_eq!(call["attempts"], 1);
    assert_eq!(call["attempt_log"][0]["status"], 404);
    assert!(
        call["last_error"].as_str().unwrap().contains("non-retryable"),
        "{call}"
    );
    assert!(dead.iter().any(|d| d["event"] == "ERRORS"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, again) = server
        .call("GET", "/deliveries/acme?status=dead", Some(API_KEY), None)
        .await;
    assert_eq!(again.as_array().unwrap().len(), 2, "no ERRORS loop");

    receiver.set_status(200);
    let id = call["id"].as_u64().unwrap();
    let (status, resp) = server
        .call("POST", &format!("/deliveries/{id}/retry"), Some(API_KEY), None)
        .await;
    assert_eq!((status, resp["redriven"].as_u64()), (200, Some(1)));
    let hits = receiver.wait_for(1, WAIT).await;
    assert_eq!(hits[0].body["event"], "CALL");
    let (status, resp) = server
        .call(
            "POST",
            "/deliveries/acme/redrive",
            Some(API_KEY),
            Some(json!({"channel": "webhook"})),
        )
        .await;
    assert_eq!((status, resp["redriven"].as_u64()), (200, Some(1)), "{resp}");
    let hits = receiver.wait_for(2, WAIT).await;
    assert_eq!(hits[1].body["event"], "ERRORS");
    assert_eq!(hits[1].body["data"]["event"], "CALL");
    let (status, _) = server
        .call("POST", &format!("/deliveries/{id}/retry"), Some(API_KEY), None)
        .await;
    assert_eq!(status, 404, "no longer dead");
    let (_, delivered) = server
        .call("GET", "/deliveries/acme?status=delivered", Some(API_KEY), None)
        .await;
    assert_eq!(delivered.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn dead_deliveries_can_be_purged() {
    let (_receiver, server, _) = two_dead_deliveries("purge").await;
    let (status, resp) = server
        .call(
            "DELETE",
            "/deliveries/acme/dead",
            Some(API_KEY),
            Some(json!({"channel": "bogus"})),
        )
        .await;
    assert_eq!(status, 400, "{resp}");
    assert!(messages(&resp).contains("channel"), "{resp}");
    let (status, resp) = server
        .call(
            "DELETE",
            "/deliveries/acme/dead?channel=nats",
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(
        (status, resp["purged"].as_u64()),
        (200, Some(0)),
        "another channel: {resp}"
    );
    let (status, resp) = server
        .call("DELETE", "/deliveries/acme/dead", Some(API_KEY), None)
        .await;
    assert_eq!((status, resp["purged"].as_u64()), (200, Some(2)), "{resp}");
    let (_, list) = server
        .call("GET", "/deliveries/acme?status=dead", Some(API_KEY), None)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 0, "purged for good: {list}");
    let (status, resp) = server
        .call("POST", "/deliveries/acme/redrive", Some(API_KEY), None)
        .await;
    assert_eq!(
        (status, resp["redriven"].as_u64()),
        (200, Some(0)),
        "nothing left to redrive"
    );
}

#[tokio::test]
async fn health_ready_metrics_and_graceful_shutdown() {
    let mut server = Server::start("ops", &[]).await;
    let (status, body) = server.call("GET", "/health", None, None).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = server.call("GET", "/ready", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["webhook"], "ok");
    create(&server, json!({"instanceName": "acme"})).await;
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("evolution_events_accepted_total 2"),
        "APPLICATION_STARTUP + INSTANCE_CREATE:\n{metrics}"
    );
    assert!(
        metrics.contains("evolution_queue_depth{channel=\"webhook\",state=\"pending\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("evolution_delivery_latency_seconds_bucket{channel=\"webhook\",le=\"+Inf\"}"));
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
}

#[tokio::test]
async fn configuration_errors_and_config_check() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_evolution-server"))
        .env_clear()
        .env("WEBHOOK_GLOBAL_ENABLED", "TRUE1")
        .env("SERVER_PORT", "http")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WEBHOOK_GLOBAL_ENABLED=`TRUE1`") && err.contains("SERVER_PORT"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_evolution-server"))
        .args(["config", "check"])
        .env_clear()
        .env("AUTHENTICATION_API_KEY", "super-secret-key")
        .env("WEBHOOK_GLOBAL_URL", "https://user:pw@h.example/x?token=abc")
        .output()
        .unwrap();
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("AUTHENTICATION_API_KEY=**REDACTED**"), "{report}");
    assert!(
        !report.contains("super-secret-key") && !report.contains("pw@") && !report.contains("abc"),
        "{report}"
    );
    assert!(report.contains("WEBHOOK_RETRY_MAX_ATTEMPTS=10"));
}

#[tokio::test]
async fn an_api_key_is_generated_once_and_kept() {
    let dir = common::temp_dir("apikey");
    let run = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_evolution-server"))
            .env_clear()
            .env("SERVER_DATA_DIR", &dir)
            .env("SERVER_PORT", port.to_string())
            .env("SERVER_HOST", "127.0.0.1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let port = common::free_port();
    let mut child = run(port);
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..300 {
        if client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up);
    let key = std::fs::read_to_string(dir.join("api-key")).unwrap();
    let status = client
        .get(format!("http://127.0.0.1:{port}/instance/fetchInstances"))
        .header("apikey", key.trim())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(key.trim()),
        "printed once at first start: {printed}"
    );
    let port = common::free_port();
    let mut child = run(port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(key.trim()),
        "not printed again"
    );
    assert_eq!(std::fs::read_to_string(dir.join("api-key")).unwrap(), key, "kept");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn every_documented_operation_exists() {
    let server = Server::start("openapi", &[]).await;
    let (status, doc) = server.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    create(&server, json!({"instanceName": "acme"})).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12);
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{channel}", "webhook")
                .replace("{instance}", "acme")
                .replace("{id}", "1");
            let (status, body) = server
                .call(&method.to_uppercase(), &concrete, Some(API_KEY), None)
                .await;
            assert!(
                !messages(&body).contains("no such route"),
                "{method} {path} is documented but not served"
            );
            assert_ne!(status, 405, "{method} {path}");
        }
    }
}
