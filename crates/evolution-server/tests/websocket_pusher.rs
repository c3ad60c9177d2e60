//! The WebSocket (Socket.IO) and Pusher channels end to end through the server, with the seed's
//! own client snippets (`tests/node/seed-socketio.mjs`, `tests/node/seed-pusher.js`) and real
//! clients (node socket.io-client and pusher-js) against a real Pusher-protocol server (soketi),
//! and Socket.IO across two servers through a real Redis (`CACHE_REDIS_*`), on SQLite and on one
//! PostgreSQL database. Needs `EVOLUTION_TEST_NODE_DIR`, `EVOLUTION_TEST_PUSHER_*`,
//! `EVOLUTION_TEST_REDIS_URI` and `EVOLUTION_TEST_POSTGRES` (`scripts/services up node pusher redis
//! postgres`, then `eval "$(scripts/services env)"`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{API_KEY, Server};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(800);

/// The seed's example data of a `MESSAGES_UPSERT`.
fn seed_data() -> Value {
    json!({
        "key": {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": false, "id": "MESSAGE_ID"},
        "message": {"conversation": "olá"},
        "messageTimestamp": "1234567890"
    })
}

fn required(what: &str) -> Option<()> {
    if matches!(std::env::var("CI").as_deref(), Ok("true" | "1")) {
        panic!("{what} is required in CI: run `scripts/services up node pusher`");
    }
    eprintln!("skipped: {what} (scripts/services up node pusher; eval \"$(scripts/services env)\")");
    None
}

/// `EVOLUTION_TEST_NODE_DIR` with socket.io-client and pusher-js installed.
fn node_dir() -> Option<PathBuf> {
    match std::env::var("EVOLUTION_TEST_NODE_DIR") {
        Ok(dir) if PathBuf::from(&dir).join("node_modules/socket.io-client").is_dir() => Some(dir.into()),
        _ => required("EVOLUTION_TEST_NODE_DIR").map(|()| PathBuf::new()),
    }
}

/// Writes `tests/node/<name>` with `replacements` applied next to the installed node_modules,
/// under a unique name; returns its path.
fn node_script(dir: &std::path::Path, name: &str, replacements: &[(&str, &str)]) -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/node")
        .join(name);
    let mut text = std::fs::read_to_string(&source).unwrap();
    for (from, to) in replacements {
        assert!(text.contains(from), "{name} has no `{from}`");
        text = text.replace(from, to);
    }
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let (stem, ext) = name.rsplit_once('.').unwrap();
    let unique = format!(
        "{stem}-{}-{}.{ext}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let path = scripts.join(unique);
    std::fs::write(&path, text).unwrap();
    path
}

/// A node process whose stdout JSON lines are collected.
struct Node {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<Value>>>,
    script: Option<PathBuf>,
}

impl Node {
    fn run(script: PathBuf, args: &[&str], temporary: bool) -> Self {
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
        Self {
            child,
            stdin,
            lines,
            script: temporary.then_some(script),
        }
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until `n` lines match `f` (or `within` passed) and returns those.
    async fn wait(&self, n: usize, within: Duration, f: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let found: Vec<Value> = self.lines().into_iter().filter(|l| f(l)).collect();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
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
        if let Some(script) = &self.script {
            std::fs::remove_file(script).ok();
        }
    }
}

/// `sio-probe.mjs`: a socket.io-client connected with `key` to `namespaces`.
fn sio_probe(dir: &std::path::Path, server: &Server, key: &str, namespaces: &[&str]) -> Node {
    let script = node_script(dir, "sio-probe.mjs", &[]);
    let url = server.url("");
    let mut args = vec![url.as_str(), key];
    args.extend_from_slice(namespaces);
    Node::run(script, &args, true)
}

async fn create(server: &Server, body: Value) {
    let (status, answer) = server
        .call("POST", "/instance/create", Some(API_KEY), Some(body))
        .await;
    assert_eq!(status, 201, "{answer}");
}

async fn post_event(server: &Server, key: &str, instance: &str, data: Value) -> String {
    let (status, body) = server
        .call(
            "POST",
            &format!("/events/{instance}"),
            Some(key),
            Some(json!({"event": "MESSAGES_UPSERT", "data": data, "sender": "5511999999999@s.whatsapp.net"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["ids"][0].as_str().unwrap().to_owned()
}

fn assert_seed_payload(payload: &Value, id: &str, instance: &str) {
    assert_eq!(payload["id"], id, "{payload}");
    assert_eq!(payload["event"], "MESSAGES_UPSERT");
    assert_eq!(payload["instance"], instance);
    assert_eq!(payload["data"], seed_data());
    assert_eq!(payload["sender"], "5511999999999@s.whatsapp.net");
    assert!(payload["date_time"].as_str().unwrap().ends_with('Z'));
}

/// `EVENT_NAMING=evolution-v2` on Socket.IO: Evolution API's namespace, event and message
/// (golden).
#[tokio::test]
async fn evolution_v2_socketio_message_is_evolution_api_s() {
    let Some(dir) = node_dir() else { return };
    let server = Server::start(
        "v2-websocket",
        &[
            ("EVENT_NAMING", "evolution-v2"),
            ("SERVER_URL", common::GOLDEN_SERVER_URL),
            ("WEBSOCKET_ENABLED", "true"),
            ("WEBSOCKET_ALLOWED_HOSTS", ""),
        ],
    )
    .await;
    create(
        &server,
        json!({"instanceName": "acme", "websocket": {"enabled": true, "events": ["MESSAGES_UPSERT"]}}),
    )
    .await;
    let client = sio_probe(&dir, &server, API_KEY, &["/acme"]);
    assert_eq!(
        client.wait(1, WAIT, |l| l["type"] == "connect").await.len(),
        1,
        "{:?}",
        client.lines()
    );
    let id = common::post_events(&server, "acme", common::seed_event("MESSAGES_UPSERT")).await[0].clone();
    let got = client.wait(1, WAIT, |l| l["type"] == "event").await;
    assert_eq!(got.len(), 1, "{:?}", client.lines());
    assert_eq!(
        (got[0]["ns"].as_str(), got[0]["event"].as_str()),
        (Some("/acme"), Some("messages.upsert"))
    );
    common::assert_golden(
        "websocket",
        got[0]["raw"].as_str().unwrap().as_bytes(),
        &[("INSTANCE", "acme"), ("ID", &id)],
    );
}

/// `EVENT_NAMING=evolution-v2` on Pusher: Evolution API's channel, event and data, `destination`
/// the app id (golden).
#[tokio::test]
async fn evolution_v2_pusher_event_is_evolution_api_s() {
    let Some(dir) = node_dir() else { return };
    let Some([host, port, app_id, key, secret]) = pusher_server() else {
        return;
    };
    let instance = format!("v2-{}", common::unique());
    let mut env = pusher_env(&host, &port, &app_id, &key, &secret);
    env.extend([
        ("EVENT_NAMING", "evolution-v2"),
        ("SERVER_URL", common::GOLDEN_SERVER_URL),
    ]);
    let server = Server::start("v2-pusher", &env).await;
    create(&server, json!({"instanceName": instance})).await;
    let mut probe = Node::run(
        node_script(&dir, "pusher-probe.js", &[]),
        &[&host, &port, &key],
        true,
    );
    assert_eq!(probe.wait(1, WAIT, |l| l["type"] == "connected").await.len(), 1);
    probe.send_line(&instance);
    assert_eq!(probe.wait(1, WAIT, |l| l["type"] == "subscribed").await.len(), 1);
    let id = common::post_events(&server, &instance, common::seed_event("MESSAGES_UPSERT")).await[0].clone();
    let got = probe.wait(1, WAIT, |l| l["type"] == "event").await;
    assert_eq!(got.len(), 1, "{:?}", probe.lines());
    assert_eq!(got[0]["event"], "messages.upsert");
    assert_eq!(got[0]["channel"], instance.as_str());
    common::assert_golden(
        "pusher",
        got[0]["raw"].as_str().unwrap().as_bytes(),
        &[("INSTANCE", &instance), ("ID", &id), ("DESTINATION", &app_id)],
    );
}

/// `WEBSOCKET_EVENTS_<EVENT>`: the global stream carries only the events set to true.
#[tokio::test]
async fn socketio_global_stream_follows_its_event_toggles() {
    let Some(dir) = node_dir() else { return };
    let server = Server::start(
        "websocket-toggles",
        &[
            ("WEBSOCKET_ENABLED", "true"),
            ("WEBSOCKET_GLOBAL_EVENTS", "true"),
            ("WEBSOCKET_EVENTS_CALL", "true"),
            ("WEBSOCKET_EVENTS_MESSAGES_UPSERT", "false"),
            ("WEBSOCKET_ALLOWED_HOSTS", ""),
        ],
    )
    .await;
    create(&server, json!({"instanceName": "acme"})).await;
    let client = sio_probe(&dir, &server, API_KEY, &["/"]);
    let connected = client.wait(1, WAIT, |l| l["type"] == "connect").await;
    assert_eq!(connected.len(), 1, "{:?}", client.lines());
    let upsert = post_event(&server, API_KEY, "acme", seed_data()).await;
    let (status, body) = server
        .call(
            "POST",
            "/events/acme",
            Some(API_KEY),
            Some(json!({"event": "CALL", "data": {}})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let call = body["ids"][0].as_str().unwrap().to_owned();
    let got = client
        .wait(1, WAIT, |l| {
            l["type"] == "event" && l["raw"].as_str().is_some_and(|r| r.contains(&call))
        })
        .await;
    assert_eq!(got.len(), 1, "{:?}", client.lines());
    assert_eq!(got[0]["event"], "*");
    tokio::time::sleep(QUIET).await;
    assert!(
        client
            .lines()
            .iter()
            .all(|l| !l["raw"].as_str().is_some_and(|r| r.contains(&upsert))),
        "MESSAGES_UPSERT is switched off on the global stream: {:?}",
        client.lines()
    );
}

/// The seed's snippet, unchanged but for its URL, receives the seed payload on
/// `socket.on('minha-instancia')` and, in global mode, on `socket.on('*')`; an instance token sees
/// its instance but not the global stream; another instance's token sees nothing of it and cannot
/// join its namespace; namespaces exist before any event.
#[tokio::test]
async fn socketio_seed_snippet_and_access() {
    let Some(dir) = node_dir() else { return };
    // The seed's placeholder key is the global key here, so the snippet runs as written.
    let server = Server::start(
        "websocket-e2e",
        &[
            ("AUTHENTICATION_API_KEY", "sua-api-key"),
            ("WEBSOCKET_ENABLED", "true"),
            ("WEBSOCKET_GLOBAL_EVENTS", "true"),
            ("WEBSOCKET_ALLOWED_HOSTS", ""),
        ],
    )
    .await;
    let global = "sua-api-key";
    let (status, body) = server
        .call(
            "POST",
            "/instance/create",
            Some(global),
            Some(
                json!({"instanceName": "minha-instancia", "token": "token-minha-instancia",
                        "websocket": {"enabled": true, "events": ["MESSAGES_UPSERT"]}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .call(
            "POST",
            "/instance/create",
            Some(global),
            Some(
                json!({"instanceName": "outra-instancia", "token": "token-outra-instancia",
                        "websocket": {"enabled": true}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let base = server.url("");
    let snippet = Node::run(
        node_script(&dir, "seed-socketio.mjs", &[("http://localhost:8080", &base)]),
        &[],
        true,
    );
    let own = sio_probe(&dir, &server, "token-minha-instancia", &["/", "/minha-instancia"]);
    let other = sio_probe(
        &dir,
        &server,
        "token-outra-instancia",
        &["/", "/outra-instancia", "/minha-instancia"],
    );
    let connected = snippet.wait(1, WAIT, |l| l["label"] == "connected").await;
    assert_eq!(
        connected.len(),
        1,
        "the seed snippet did not connect: {:?}",
        snippet.lines()
    );
    let answers = |l: &Value| matches!(l["type"].as_str(), Some("connect" | "connect_error"));
    assert_eq!(
        own.wait(2, WAIT, answers)
            .await
            .iter()
            .filter(|a| a["type"] == "connect")
            .count(),
        2
    );
    let other_answers = other.wait(3, WAIT, answers).await;
    let refused: Vec<&Value> = other_answers
        .iter()
        .filter(|a| a["type"] == "connect_error")
        .collect();
    assert_eq!(refused.len(), 1, "{other_answers:?}");
    assert_eq!(refused[0]["ns"], "/minha-instancia");
    assert!(
        refused[0]["message"]
            .as_str()
            .unwrap()
            .contains("belongs to another instance"),
        "{refused:?}"
    );

    let id = post_event(&server, global, "minha-instancia", seed_data()).await;
    let received = snippet.wait(2, WAIT, |l| l["data"]["id"] == id).await;
    let mut labels: Vec<&str> = received.iter().map(|l| l["label"].as_str().unwrap()).collect();
    labels.sort_unstable();
    assert_eq!(labels, ["Evento global:", "Evento recebido:"], "{received:?}");
    for line in &received {
        assert_seed_payload(&line["data"], &id, "minha-instancia");
    }

    let own_events = own.wait(2, WAIT, |l| l["type"] == "event").await;
    let mut seen: Vec<String> = own_events
        .iter()
        .map(|e| format!("{} {}", e["ns"].as_str().unwrap(), e["event"].as_str().unwrap()))
        .collect();
    seen.sort();
    assert_eq!(seen, ["/ minha-instancia", "/minha-instancia messages.upsert"]);
    let payload: Value = serde_json::from_str(own_events[0]["raw"].as_str().unwrap()).unwrap();
    assert_seed_payload(&payload, &id, "minha-instancia");
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        own.lines().iter().filter(|l| l["type"] == "event").count(),
        2,
        "an instance token does not get the global `*` stream"
    );
    assert!(
        other.lines().iter().all(|l| l["type"] != "event"),
        "another instance's token received something: {:?}",
        other.lines()
    );

    // Deleting the instance cuts off the connections its token opened.
    let (status, _) = server
        .call("DELETE", "/instance/delete/minha-instancia", Some(global), None)
        .await;
    assert_eq!(status, 200);
    let gone = own.wait(2, WAIT, |l| l["type"] == "disconnect").await;
    assert_eq!(gone.len(), 2, "{:?}", own.lines());
}

/// The test Pusher server from `EVOLUTION_TEST_PUSHER_*`: host, port, app id, key, secret.
fn pusher_server() -> Option<[String; 5]> {
    let var = |n: &str| std::env::var(n).ok();
    match (
        var("EVOLUTION_TEST_PUSHER_HOST"),
        var("EVOLUTION_TEST_PUSHER_PORT"),
        var("EVOLUTION_TEST_PUSHER_APP_ID"),
        var("EVOLUTION_TEST_PUSHER_KEY"),
        var("EVOLUTION_TEST_PUSHER_SECRET"),
    ) {
        (Some(h), Some(p), Some(a), Some(k), Some(s)) => Some([h, p, a, k, s]),
        _ => required("EVOLUTION_TEST_PUSHER_*").map(|()| Default::default()),
    }
}

/// The server's settings for the test Pusher server as the global app, `MESSAGES_UPSERT` on.
fn pusher_env<'a>(
    host: &'a str,
    port: &'a str,
    app_id: &'a str,
    key: &'a str,
    secret: &'a str,
) -> Vec<(&'static str, &'a str)> {
    vec![
        ("PUSHER_ENABLED", "true"),
        ("PUSHER_GLOBAL_ENABLED", "true"),
        ("PUSHER_GLOBAL_APP_ID", app_id),
        ("PUSHER_GLOBAL_KEY", key),
        ("PUSHER_GLOBAL_SECRET", secret),
        ("PUSHER_GLOBAL_CLUSTER", "us2"),
        ("PUSHER_GLOBAL_USE_TLS", "false"),
        ("PUSHER_HOST", host),
        ("PUSHER_PORT", port),
        ("PUSHER_EVENTS_MESSAGES_UPSERT", "true"),
    ]
}

/// The seed's pusher-js snippet (pointed at the local server) receives `MESSAGES_UPSERT` on
/// `evolution.minha-instancia` from the global app and from a per-instance app; an event over
/// Pusher's 10 KB limit is dead with the reason, not dropped.
#[tokio::test]
async fn pusher_seed_snippet_and_oversize() {
    let Some(dir) = node_dir() else { return };
    let Some([host, port, app_id, key, secret]) = pusher_server() else {
        return;
    };
    let server = Server::start("pusher-e2e", &pusher_env(&host, &port, &app_id, &key, &secret)).await;
    let (status, ready) = server.call("GET", "/ready", None, None).await;
    assert_eq!(
        status, 200,
        "the Pusher health check (signed GET /apps/{{id}}/channels): {ready}"
    );
    create(&server, json!({"instanceName": "minha-instancia"})).await;
    // Another instance delivers through its own app settings (the same test app here).
    create(
        &server,
        json!({"instanceName": "outra-instancia", "pusher": {
            "enabled": true, "appId": app_id, "key": key, "secret": secret, "cluster": "us2",
            "useTLS": false, "host": host, "port": port.parse::<u16>().unwrap(), "events": ["MESSAGES_UPSERT"]}}),
    )
    .await;

    let options = format!(
        "encrypted: true,\n  wsHost: '{host}', wsPort: {port}, forceTLS: false, enabledTransports: ['ws'], disableStats: true\n}});"
    );
    let snippet = Node::run(
        node_script(
            &dir,
            "seed-pusher.js",
            &[
                ("'your-key'", &format!("'{key}'")),
                ("encrypted: true\n});", &options),
            ],
        ),
        &[],
        true,
    );
    let subscribed = snippet.wait(1, WAIT, |l| l["label"] == "subscribed").await;
    assert_eq!(
        subscribed.len(),
        1,
        "the seed snippet did not subscribe: {:?}",
        snippet.lines()
    );
    let mut probe = Node::run(
        node_script(&dir, "pusher-probe.js", &[]),
        &[&host, &port, &key],
        true,
    );
    assert_eq!(probe.wait(1, WAIT, |l| l["type"] == "connected").await.len(), 1);
    probe.send_line("evolution.outra-instancia");
    assert_eq!(probe.wait(1, WAIT, |l| l["type"] == "subscribed").await.len(), 1);

    let id = post_event(&server, API_KEY, "minha-instancia", seed_data()).await;
    let received = snippet.wait(1, WAIT, |l| l["label"] == "Nova mensagem:").await;
    let log = server
        .call(
            "GET",
            "/deliveries/minha-instancia?channel=pusher",
            Some(API_KEY),
            None,
        )
        .await
        .1;
    assert_eq!(received.len(), 1, "{:?}\ndeliveries: {log}", snippet.lines());
    assert_seed_payload(&received[0]["data"], &id, "minha-instancia");

    let other_id = post_event(&server, API_KEY, "outra-instancia", seed_data()).await;
    let events = probe.wait(1, WAIT, |l| l["type"] == "event").await;
    assert_eq!(events.len(), 1, "{:?}", probe.lines());
    assert_eq!(events[0]["event"], "MESSAGES_UPSERT");
    let payload: Value = serde_json::from_str(events[0]["raw"].as_str().unwrap()).unwrap();
    assert_seed_payload(&payload, &other_id, "outra-instancia");

    // Over Pusher's 10 KB: never sent, never dropped silently — dead, with the reason.
    let big = json!({"key": {"id": "BIG"}, "pad": "x".repeat(12_000)});
    let big_id = post_event(&server, API_KEY, "minha-instancia", big).await;
    let deadline = Instant::now() + WAIT;
    let dead = loop {
        let (_, list) = server
            .call(
                "GET",
                "/deliveries/minha-instancia?status=dead&channel=pusher",
                Some(API_KEY),
                None,
            )
            .await;
        let list = list.as_array().cloned().unwrap_or_default();
        if !list.is_empty() || Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 1, "{dead:?}");
    let text = dead[0].to_string();
    assert!(text.contains(&big_id), "{text}");
    assert!(text.contains("over the Pusher limit of 10240 bytes"), "{text}");
    tokio::time::sleep(QUIET).await;
    assert!(
        snippet.lines().iter().all(|l| l["data"]["id"] != big_id.as_str()),
        "the oversize event must not reach the client"
    );
}

/// With `PUSHER_OVERSIZE=reference` an event over Pusher's 10 KB reaches the pusher-js client as
/// `{id, event, instance, truncated: true}`, and `GET /events/{instance}/{id}` gives it whole, to
/// its own instance's token only.
#[tokio::test]
async fn pusher_oversize_reference_resolves_through_rest() {
    let Some(dir) = node_dir() else { return };
    let Some([host, port, app_id, key, secret]) = pusher_server() else {
        return;
    };
    let mut env = pusher_env(&host, &port, &app_id, &key, &secret);
    env.push(("PUSHER_OVERSIZE", "reference"));
    let server = Server::start("pusher-reference", &env).await;
    create(
        &server,
        json!({"instanceName": "ref-instancia", "token": "ref-token"}),
    )
    .await;
    create(
        &server,
        json!({"instanceName": "ref-outra", "token": "ref-outra-token"}),
    )
    .await;
    let mut probe = Node::run(
        node_script(&dir, "pusher-probe.js", &[]),
        &[&host, &port, &key],
        true,
    );
    assert_eq!(probe.wait(1, WAIT, |l| l["type"] == "connected").await.len(), 1);
    probe.send_line("evolution.ref-instancia");
    assert_eq!(probe.wait(1, WAIT, |l| l["type"] == "subscribed").await.len(), 1);

    let pad = "x".repeat(12_000);
    let big = json!({"key": {"id": "BIG"}, "pad": pad});
    let big_id = post_event(&server, "ref-token", "ref-instancia", big).await;
    let events = probe.wait(1, WAIT, |l| l["type"] == "event").await;
    assert_eq!(events.len(), 1, "{:?}", probe.lines());
    assert_eq!(events[0]["event"], "MESSAGES_UPSERT");
    let reference: Value = serde_json::from_str(events[0]["raw"].as_str().unwrap()).unwrap();
    assert_eq!(
        reference,
        json!({"id": big_id, "event": "MESSAGES_UPSERT", "instance": "ref-instancia", "truncated": true})
    );

    // The client resolves it with the instance's token.
    let path = format!("/events/ref-instancia/{big_id}");
    let (status, whole) = server.call("GET", &path, Some("ref-token"), None).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["id"], big_id.as_str());
    assert_eq!(whole["event"], "MESSAGES_UPSERT");
    assert_eq!(whole["instance"], "ref-instancia");
    assert_eq!(whole["data"]["pad"], pad.as_str());
    // Another instance's token gets nothing of it; unknown and malformed ids are named.
    let (status, body) = server.call("GET", &path, Some("ref-outra-token"), None).await;
    assert!(matches!(status, 401 | 403), "{status} {body}");
    let (status, body) = server
        .call(
            "GET",
            &format!("/events/ref-outra/{big_id}"),
            Some("ref-outra-token"),
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.to_string().contains("id: no event"), "{body}");
    let (status, body) = server
        .call("GET", "/events/ref-instancia/not-a-uuid", Some("ref-token"), None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("id: `not-a-uuid`"), "{body}");

    // The delivery itself succeeded: nothing is dead.
    let (_, dead) = server
        .call(
            "GET",
            "/deliveries/ref-instancia?status=dead",
            Some("ref-token"),
            None,
        )
        .await;
    assert_eq!(dead, json!([]), "{dead}");
}

/// A Socket.IO client that connects with `auth.lastEventId` gets, in order, the events it missed
/// that it may see, then a `replay` summary, then live events; another instance's token replays
/// nothing of it; an id that is not a UUID is refused at connection.
#[tokio::test]
async fn socketio_replays_missed_events_after_last_event_id() {
    let Some(dir) = node_dir() else { return };
    let server = Server::start(
        "websocket-replay",
        &[("WEBSOCKET_ENABLED", "true"), ("WEBSOCKET_ALLOWED_HOSTS", "")],
    )
    .await;
    create(
        &server,
        json!({"instanceName": "replay-a", "token": "replay-a-token",
               "websocket": {"enabled": true, "events": ["MESSAGES_UPSERT"]}}),
    )
    .await;
    create(
        &server,
        json!({"instanceName": "replay-b", "token": "replay-b-token", "websocket": {"enabled": true}}),
    )
    .await;
    // Three events while nobody is connected.
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(post_event(&server, API_KEY, "replay-a", json!({"n": n})).await);
    }
    let replay = |key: &str, after: &str, namespaces: &[&str]| {
        let script = node_script(&dir, "sio-probe.mjs", &[]);
        let url = server.url("");
        let flag = format!("--last-event-id={after}");
        let mut args = vec![flag.as_str(), url.as_str(), key];
        args.extend_from_slice(namespaces);
        Node::run(script, &args, true)
    };
    let summary = |node: &Node| {
        node.lines()
            .into_iter()
            .find(|l| l["type"] == "event" && l["event"] == "replay")
            .map(|l| serde_json::from_str::<Value>(l["raw"].as_str().unwrap()).unwrap())
    };

    // The instance's token on `/`: the two events after the first, in order, on
    // `socket.on('replay-a')`, then the summary.
    let own = replay("replay-a-token", &ids[0], &["/"]);
    own.wait(1, WAIT, |l| l["event"] == "replay").await;
    let got: Vec<Value> = own
        .lines()
        .into_iter()
        .filter(|l| l["type"] == "event" && l["event"] == "replay-a")
        .map(|l| serde_json::from_str(l["raw"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(
        got.iter().map(|p| p["id"].as_str().unwrap()).collect::<Vec<_>>(),
        [ids[1].as_str(), ids[2].as_str()],
        "{:?}",
        own.lines()
    );
    assert_eq!(got[0]["data"]["n"], 1);
    assert_eq!(
        summary(&own).unwrap(),
        json!({"after": ids[0], "replayed": 2, "complete": true})
    );
    // Then live events as usual.
    let live = post_event(&server, API_KEY, "replay-a", json!({"n": 3})).await;
    let seen = own
        .wait(1, WAIT, |l| {
            l["event"] == "replay-a" && l["raw"].as_str().is_some_and(|r| r.contains(&live))
        })
        .await;
    assert_eq!(seen.len(), 1, "{:?}", own.lines());

    // The global key on the instance's namespace: the three after the first (`messages.upsert`).
    let global = replay(API_KEY, &ids[0], &["/replay-a"]);
    global.wait(1, WAIT, |l| l["event"] == "replay").await;
    let replayed = global
        .lines()
        .iter()
        .filter(|l| l["event"] == "messages.upsert")
        .count();
    assert_eq!(replayed, 3, "{:?}", global.lines());
    assert_eq!(summary(&global).unwrap()["replayed"], 3);

    // Another instance's token cannot replay this instance's events, nor learn they exist.
    let other = replay("replay-b-token", &ids[0], &["/"]);
    other.wait(1, WAIT, |l| l["event"] == "replay").await;
    let s = summary(&other).unwrap();
    assert_eq!(
        (s["replayed"].clone(), s["complete"].clone()),
        (json!(0), json!(false)),
        "{s}"
    );
    assert!(s["error"].as_str().unwrap().contains("not kept"), "{s}");
    assert!(
        other.lines().iter().all(|l| l["event"] != "replay-a"),
        "{:?}",
        other.lines()
    );

    // Not a UUID: refused, naming it.
    let bad = replay("replay-a-token", "nope", &["/"]);
    let refused = bad.wait(1, WAIT, |l| l["type"] == "connect_error").await;
    assert_eq!(refused.len(), 1, "{:?}", bad.lines());
    assert!(
        refused[0]["message"]
            .as_str()
            .unwrap()
            .contains("lastEventId `nope` is not an event id"),
        "{:?}",
        refused[0]
    );
}

/// `EVOLUTION_TEST_REDIS_URI` (`scripts/services up redis`).
fn redis_uri() -> Option<String> {
    common::service_env("EVOLUTION_TEST_REDIS_URI")
}

/// A `CACHE_REDIS_PREFIX_KEY` of this test alone, so that tests running at once on the one Redis
/// (and any other deployment on it) never hear each other.
fn unique_prefix(test: &str) -> String {
    format!("evo-test-{test}-{}", common::unique())
}

/// Two servers (their own SQLite data directories, the same API key) on one Redis: a Socket.IO
/// client connected to server A with the global key receives every event posted to server B, and
/// to A, exactly once on each of its destinations (`/` event `{instance}`, `/` event `*`,
/// `/{instance}` event `messages.upsert`); another instance's token on A sees none of them.
#[tokio::test]
async fn socketio_clients_of_one_server_get_the_events_of_another_through_redis() {
    let Some(dir) = node_dir() else { return };
    let Some(redis) = redis_uri() else { return };
    let prefix = unique_prefix("replicas");
    let env = [
        ("WEBSOCKET_ENABLED", "true"),
        ("WEBSOCKET_GLOBAL_EVENTS", "true"),
        ("WEBSOCKET_ALLOWED_HOSTS", ""),
        ("CACHE_REDIS_ENABLED", "true"),
        ("CACHE_REDIS_URI", redis.as_str()),
        ("CACHE_REDIS_PREFIX_KEY", prefix.as_str()),
    ];
    let a = Server::start("redis-replica-a", &env).await;
    let b = Server::start("redis-replica-b", &env).await;
    // Each server has its own database (SQLite): the instance exists on both, with one token.
    for server in [&a, &b] {
        create(
            server,
            json!({"instanceName": "replicated", "token": "replicated-token",
                   "websocket": {"enabled": true, "events": ["MESSAGES_UPSERT"]}}),
        )
        .await;
        create(
            server,
            json!({"instanceName": "bystander", "token": "bystander-token", "websocket": {"enabled": true}}),
        )
        .await;
    }
    let global = sio_probe(&dir, &a, API_KEY, &["/", "/replicated"]);
    let bystander = sio_probe(&dir, &a, "bystander-token", &["/", "/bystander"]);
    let connected = |l: &Value| l["type"] == "connect";
    assert_eq!(
        global.wait(2, WAIT, connected).await.len(),
        2,
        "{:?}",
        global.lines()
    );
    assert_eq!(
        bystander.wait(2, WAIT, connected).await.len(),
        2,
        "{:?}",
        bystander.lines()
    );

    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(post_event(&b, API_KEY, "replicated", json!({"n": n, "via": "b"})).await);
        ids.push(post_event(&a, API_KEY, "replicated", json!({"n": n, "via": "a"})).await);
    }
    let ours = |l: &Value| {
        l["type"] == "event"
            && l["raw"]
                .as_str()
                .is_some_and(|raw| ids.iter().any(|id| raw.contains(id.as_str())))
    };
    let expected = ids.len() * 3;
    let received = global.wait(expected, WAIT, ours).await;
    assert_eq!(received.len(), expected, "{:?}", global.lines());
    tokio::time::sleep(QUIET).await;
    let mut seen: Vec<(String, String, String)> = global
        .lines()
        .iter()
        .filter(|l| ours(l))
        .map(|l| {
            let payload: Value = serde_json::from_str(l["raw"].as_str().unwrap()).unwrap();
            (
                payload["id"].as_str().unwrap().to_owned(),
                l["ns"].as_str().unwrap().to_owned(),
                l["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let mut wanted: Vec<(String, String, String)> = ids
        .iter()
        .flat_map(|id| {
            [
                (id.clone(), "/".to_owned(), "*".to_owned()),
                (id.clone(), "/".to_owned(), "replicated".to_owned()),
                (id.clone(), "/replicated".to_owned(), "messages.upsert".to_owned()),
            ]
        })
        .collect();
    wanted.sort();
    assert_eq!(
        seen, wanted,
        "each event once on each destination, from B as from A"
    );
    let payload: Value = serde_json::from_str(received[0]["raw"].as_str().unwrap()).unwrap();
    assert_eq!(payload["instance"], "replicated", "{payload}");
    assert!(
        bystander.lines().iter().all(|l| l["type"] != "event"),
        "another instance's token received something: {:?}",
        bystander.lines()
    );
    for server in [&a, &b] {
        let (status, ready) = server.call("GET", "/ready", None, None).await;
        assert_eq!(status, 200, "{ready}");
    }
}

/// A `CACHE_REDIS_URI` the server cannot use stops it at start with a message naming the variable
/// and never showing the password: malformed (a configuration error, exit 2), or a Redis that does
/// not answer (exit 1). `config check` shows the URI redacted.
#[tokio::test]
async fn a_bad_cache_redis_uri_stops_the_start_without_its_password() {
    let run = |uri: &str, args: &[&str]| {
        let data = common::temp_dir("redis-bad-uri");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_evolution-server"))
            .args(args)
            .env_clear()
            .env("AUTHENTICATION_API_KEY", API_KEY)
            .env("SERVER_HOST", "127.0.0.1")
            .env("SERVER_PORT", common::free_port().to_string())
            .env("SERVER_DATA_DIR", &data)
            .env("WEBSOCKET_ENABLED", "true")
            .env("CACHE_REDIS_ENABLED", "true")
            .env("CACHE_REDIS_URI", uri)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&data).ok();
        out
    };
    let out = run("redis://:hunter2@127.0.0.1:6379/zero", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("CACHE_REDIS_URI: `/zero` is not a database number"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let port = common::free_port(); // nothing listens there
    let out = run(&format!("redis://default:hunter2@127.0.0.1:{port}/0"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("CACHE_REDIS_URI: cannot reach Redis at")
            && err.contains(&format!("redis://***@127.0.0.1:{port}/0")),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let out = run(
        "redis://default:hunter2@redis.internal:6379/6",
        &["config", "check"],
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("CACHE_REDIS_URI=redis://***@redis.internal:6379/6"),
        "{report}"
    );
    assert!(report.contains("CACHE_REDIS_PREFIX_KEY=evolution"), "{report}");
    assert!(!report.contains("hunter2"), "{report}");
}

/// A `redis-server` of one test on a free port (no persistence), to stop and start again.
struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    async fn start() -> Self {
        let mut redis = Self {
            port: common::free_port(),
            child: None,
        };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian redis-server; scripts/services up redis installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Redis stops while two servers run (a private redis-server, killed): `/ready` says so, events
/// are still accepted (202), and once Redis is back every one of them reaches the Socket.IO client
/// on the other server exactly once — nothing accepted is lost, nothing counted as delivered that
/// was not.
#[tokio::test]
async fn socketio_events_accepted_while_redis_is_down_arrive_once_it_is_back() {
    let Some(dir) = node_dir() else { return };
    if redis_uri().is_none() {
        return; // redis-server comes with the `redis` service
    }
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let env = [
        ("WEBSOCKET_ENABLED", "true"),
        ("WEBSOCKET_ALLOWED_HOSTS", ""),
        ("CACHE_REDIS_ENABLED", "true"),
        ("CACHE_REDIS_URI", url.as_str()),
    ];
    let a = Server::start("redis-outage-a", &env).await;
    let b = Server::start("redis-outage-b", &env).await;
    create(
        &b,
        json!({"instanceName": "outage", "token": "outage-token",
               "websocket": {"enabled": true, "events": ["MESSAGES_UPSERT"]}}),
    )
    .await;
    let client = sio_probe(&dir, &a, API_KEY, &["/outage"]);
    assert_eq!(
        client.wait(1, WAIT, |l| l["type"] == "connect").await.len(),
        1,
        "{:?}",
        client.lines()
    );
    let before = post_event(&b, API_KEY, "outage", json!({"n": "before"})).await;
    assert_eq!(
        client
            .wait(1, WAIT, |l| l["raw"]
                .as_str()
                .is_some_and(|r| r.contains(&before)))
            .await
            .len(),
        1
    );

    redis.stop();
    let deadline = Instant::now() + WAIT;
    let ready = loop {
        let (status, ready) = b.call("GET", "/ready", None, None).await;
        if status == 503 || Instant::now() > deadline {
            break (status, ready);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready.0, 503, "{}", ready.1);
    let why = ready.1["checks"]["websocket"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("Redis at redis://127.0.0.1"), "{}", ready.1);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(post_event(&b, API_KEY, "outage", json!({"n": n})).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    redis.spawn().await;
    let ours = |l: &Value| {
        l["type"] == "event"
            && l["raw"]
                .as_str()
                .is_some_and(|raw| ids.iter().any(|id| raw.contains(id.as_str())))
    };
    let arrived = client.wait(ids.len(), Duration::from_secs(60), ours).await;
    assert_eq!(arrived.len(), ids.len(), "{:?}", client.lines());
    tokio::time::sleep(QUIET).await;
    let mut seen: Vec<String> = client
        .lines()
        .iter()
        .filter(|l| ours(l))
        .map(|l| {
            let payload: Value = serde_json::from_str(l["raw"].as_str().unwrap()).unwrap();
            payload["id"].as_str().unwrap().to_owned()
        })
        .collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "each event accepted during the outage arrives once");
    let (status, ready) = b.call("GET", "/ready", None, None).await;
    assert_eq!(status, 200, "{ready}");
}

/// Two replicas on one PostgreSQL database and one Redis (issue 14's whole setup): an instance
/// created through A, events posted to B; a client of the instance's token that connects to A with
/// `lastEventId` gets the events it missed from the shared outbox (replay works on any replica),
/// then B's next event live through Redis, once.
#[tokio::test]
async fn socketio_replay_and_live_events_on_any_replica_with_postgres_and_redis() {
    let Some(dir) = node_dir() else { return };
    let Some(redis) = redis_uri() else { return };
    let Some(postgres) = common::service_env("EVOLUTION_TEST_POSTGRES") else {
        return;
    };
    let schema = common::Schema::new(&postgres, &format!("websocket_redis_{}", common::unique()));
    let prefix = unique_prefix("replay");
    let env = [
        ("DATABASE_CONNECTION_URI", postgres.as_str()),
        ("OUTBOX_SCHEMA", schema.name.as_str()),
        ("WEBSOCKET_ENABLED", "true"),
        ("WEBSOCKET_ALLOWED_HOSTS", ""),
        ("CACHE_REDIS_ENABLED", "true"),
        ("CACHE_REDIS_URI", redis.as_str()),
        ("CACHE_REDIS_PREFIX_KEY", prefix.as_str()),
    ];
    let a = Server::start("redis-pg-a", &env).await;
    let b = Server::start("redis-pg-b", &env).await;
    create(
        &a,
        json!({"instanceName": "everywhere", "token": "everywhere-token",
               "websocket": {"enabled": true, "events": ["MESSAGES_UPSERT"]}}),
    )
    .await;
    // B learns of the instance through the database's notifications.
    let deadline = Instant::now() + WAIT;
    let first = loop {
        let (status, body) = b
            .call(
                "POST",
                "/events/everywhere",
                Some(API_KEY),
                Some(json!({"event": "MESSAGES_UPSERT", "data": {"n": 0}})),
            )
            .await;
        if status == 202 {
            break body["ids"][0].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "B never saw the instance created on A: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut missed = Vec::new();
    for n in 1..3 {
        missed.push(post_event(&b, API_KEY, "everywhere", json!({"n": n})).await);
    }
    // Delivered (to nobody) before the client comes.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let script = node_script(&dir, "sio-probe.mjs", &[]);
    let url = a.url("");
    let flag = format!("--last-event-id={first}");
    let client = Node::run(
        script,
        &[flag.as_str(), url.as_str(), "everywhere-token", "/"],
        true,
    );
    let summary = client
        .wait(1, WAIT, |l| l["type"] == "event" && l["event"] == "replay")
        .await;
    assert_eq!(summary.len(), 1, "{:?}", client.lines());
    let summary: Value = serde_json::from_str(summary[0]["raw"].as_str().unwrap()).unwrap();
    assert_eq!(summary, json!({"after": first, "replayed": 2, "complete": true}));
    let replayed: Vec<String> = client
        .lines()
        .iter()
        .filter(|l| l["type"] == "event" && l["event"] == "everywhere")
        .map(|l| {
            let payload: Value = serde_json::from_str(l["raw"].as_str().unwrap()).unwrap();
            payload["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        replayed, missed,
        "the events accepted by B, replayed by A in order"
    );

    let live = post_event(&b, API_KEY, "everywhere", json!({"n": 3})).await;
    let is_live = |l: &Value| l["raw"].as_str().is_some_and(|r| r.contains(&live));
    assert_eq!(
        client.wait(1, WAIT, is_live).await.len(),
        1,
        "{:?}",
        client.lines()
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(client.lines().iter().filter(|l| is_live(l)).count(), 1, "once");
}
