//! The operators' web console (`/console`) in a real browser: `tests/node/console.mjs` drives
//! Debian's Chromium (headless, through npm `playwright-core`) against the real server binary and
//! a real webhook receiver; this test then checks what reached the receiver and the server.
//!
//! Needs `EVOLUTION_TEST_CHROMIUM` and `EVOLUTION_TEST_NODE_DIR` (`scripts/services up browser`;
//! `eval "$(scripts/services env)"`): without them the test fails (it never skips). Screenshots of
//! each page: `target/tmp/console-screenshots/` (`CARGO_TARGET_TMPDIR`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::post;
use common::{API_KEY, Receiver, Server};
use serde_json::Value;

/// A browser-side dependency, required (the test fails without it, naming how to get it).
fn required(var: &str, check: impl Fn(&PathBuf) -> bool) -> PathBuf {
    let value = std::env::var(var).unwrap_or_default();
    let path = PathBuf::from(&value);
    assert!(
        !value.is_empty() && check(&path),
        "{var} is not set or does not hold what the console test needs ({value:?}): run `scripts/services up browser` \
         and `eval \"$(scripts/services env)\"` (Debian's chromium and npm playwright-core)"
    );
    path
}

/// Serves `POST /status/{code}`: sets what the receiver answers (how the browser script breaks
/// and fixes it).
async fn control(receiver: Receiver) -> String {
    async fn set(State(receiver): State<Receiver>, Path(code): Path<u16>) -> &'static str {
        receiver.set_status(code);
        "ok"
    }
    let app = axum::Router::new()
        .route("/status/{code}", post(set))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_scenario_in_a_real_browser() {
    let chromium = required("EVOLUTION_TEST_CHROMIUM", |p| p.is_file());
    let node_dir = required("EVOLUTION_TEST_NODE_DIR", |p| {
        p.join("node_modules/playwright-core").is_dir()
    });
    let receiver = Receiver::start().await;
    let control = control(receiver.clone()).await;
    let server = Server::start(
        "console",
        &[
            ("WEBSOCKET_ENABLED", "true"),
            // A broken receiver makes a dead letter within about a second.
            ("WEBHOOK_RETRY_MAX_ATTEMPTS", "2"),
            ("WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_MAX_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_JITTER_FACTOR", "0"),
        ],
    )
    .await;
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node/console.mjs");
    let base = server.url("");
    let webhook = receiver.url("/webhook");
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args([base.as_str(), API_KEY, webhook.as_str(), control.as_str()])
            .env("NODE_DIR", node_dir)
            .env("CHROMIUM", chromium)
            .env("SHOTS", &shots)
            .output()
            .expect("run node (Node 20: scripts/services up node)")
    });
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser scenario took more than 4 minutes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser scenario failed ({}); screenshots in {}:\n{stderr}",
        out.status,
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("console-screenshots")
            .display()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ids: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no result line from the browser ({e}): {stdout}\n{stderr}"));
    let instance = ids["instance"].as_str().unwrap();

    // What reached the receiver: every event posted or sent from the console, once (the failed
    // ones after their retry and redrive: the receiver records only what it answered 200), with
    // the header set in the form and saved back redacted.
    let hits = receiver.wait_for(6, Duration::from_secs(10)).await;
    for which in ["live", "paused", "test", "failed", "retried", "token"] {
        let id = ids[which].as_str().unwrap();
        let got: Vec<_> = hits.iter().filter(|h| h.body["id"] == id).collect();
        assert_eq!(
            got.len(),
            1,
            "{which} event {id} reached the receiver once: {hits:?}"
        );
        assert_eq!(got[0].body["instance"], instance);
        assert_eq!(
            got[0].headers.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer hidden-header-secret"),
            "the header kept through the console's second save"
        );
    }
    // The purged dead letter never reached it.
    let purged = ids["purged"].as_str().unwrap();
    assert!(
        hits.iter().all(|h| h.body["id"] != purged),
        "the purged event reached the receiver"
    );
    // The failed events: dead after the broken receiver's 500s, delivered after the retry (one)
    // and the redrive (the other); the purged one is gone from the log.
    let (status, log) = server
        .call(
            "GET",
            &format!("/deliveries/{instance}?channel=webhook"),
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{log}");
    let log = log.as_array().unwrap();
    assert!(
        log.iter().all(|d| d["event_id"] != purged),
        "the purged delivery is still in the log: {log:?}"
    );
    for which in ["failed", "retried"] {
        let delivery = log
            .iter()
            .find(|d| d["event_id"] == ids[which])
            .unwrap_or_else(|| panic!("no webhook delivery of the {which} event: {log:?}"));
        assert_eq!(delivery["status"], "delivered", "{delivery}");
        let attempts = delivery["attempt_log"].as_array().unwrap();
        let outcomes: Vec<&str> = attempts.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
        assert_eq!(outcomes, ["retry", "dead", "delivered"], "{delivery}");
        // (The first attempt of the second one may be held back behind the first: in order.)
        assert_eq!(
            attempts[1]["status"], 500,
            "the broken receiver's answer: {delivery}"
        );
    }
    // The instance deleted from the console is gone; the other one stays.
    let (_, list) = server
        .call("GET", "/instance/fetchInstances", Some(API_KEY), None)
        .await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["instanceName"].as_str())
        .collect();
    assert_eq!(names, [instance], "{list}");
}

/// The console's files and JSON routes over plain HTTP (no browser): the headers that keep the
/// page from running anything but its own files, who `session` says the key is, and the
/// settings route keeping a secret sent back redacted while taking a changed field.
#[tokio::test]
async fn console_routes_answer_with_their_headers_and_access() {
    let receiver = Receiver::start().await;
    let server = Server::start("console-http", &[]).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let bare = client.get(server.url("/console")).send().await.unwrap();
    assert_eq!(bare.status(), 308);
    assert_eq!(bare.headers()["location"], "/console/");
    for (path, kind) in [
        ("/console/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/console/socket.io.min.js", "text/javascript"),
        ("/console/socket.io-client.LICENSE", "text/plain"),
    ] {
        let r = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let headers = r.headers().clone();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}: {headers:?}"
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'")
                && !csp.contains("unsafe")
                && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(!r.text().await.unwrap().is_empty());
    }

    let token = "acme-token-0123456789";
    common::create_instance(
        &server,
        "acme",
        serde_json::json!({"token": token, "webhook": {"url": receiver.url("/hook"),
            "headers": {"Authorization": "Bearer kept-secret"}}}),
    )
    .await;
    let (status, global) = server
        .call("GET", "/console/api/session", Some(API_KEY), None)
        .await;
    assert_eq!(status, 200, "{global}");
    assert_eq!(global["access"], "global");
    assert!(global.get("instance").is_none(), "{global}");
    assert!(global["channels"].as_array().unwrap().contains(&"webhook".into()));
    assert!(
        global["events"]
            .as_array()
            .unwrap()
            .contains(&"MESSAGES_UPSERT".into())
    );
    assert_eq!(global["websocket"], false, "WEBSOCKET_ENABLED is off");
    let (status, own) = server
        .call("GET", "/console/api/session", Some(token), None)
        .await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(
        (&own["access"], &own["instance"]),
        (&"instance".into(), &"acme".into())
    );
    for key in [Some("wrong-key-0123456789"), None] {
        let (status, body) = server.call("GET", "/console/api/session", key, None).await;
        assert_eq!(status, 401, "{body}");
    }

    // The form sends back what `find` showed: the header stays, the URL changes.
    let (_, shown) = server.call("GET", "/webhook/find/acme", Some(token), None).await;
    assert_eq!(shown["headers"]["Authorization"], "**REDACTED**", "{shown}");
    let mut sent = shown.clone();
    sent["url"] = receiver.url("/moved").into();
    sent["enabled"] = true.into();
    let (status, saved) = server
        .call(
            "POST",
            "/console/api/settings/webhook/acme",
            Some(token),
            Some(serde_json::json!({ "webhook": sent })),
        )
        .await;
    assert_eq!(status, 201, "{saved}");
    assert_eq!(saved["webhook"]["headers"]["Authorization"], "**REDACTED**");
    common::post_events(&server, "acme", common::seed_event("MESSAGES_UPSERT")).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let hook = loop {
        let hits = receiver.hits();
        if let Some(hit) = hits.iter().find(|h| h.body["event"] == "MESSAGES_UPSERT") {
            break hit.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no MESSAGES_UPSERT reached the receiver: {hits:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(hook.path, "/moved");
    assert_eq!(hook.headers["authorization"], "Bearer kept-secret");
    // Its validation is the set route's: field errors named, nothing stored; another instance's
    // settings are refused to an instance token.
    let (status, refused) = server
        .call(
            "POST",
            "/console/api/settings/webhook/acme",
            Some(token),
            Some(serde_json::json!({"webhook": {"enabled": true, "url": "not a url"}})),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused.to_string().contains("webhook.url"), "{refused}");
    common::create_instance(&server, "other", serde_json::json!({})).await;
    let (status, body) = server
        .call(
            "POST",
            "/console/api/settings/webhook/other",
            Some(token),
            Some(serde_json::json!({"webhook": {"enabled": false, "url": receiver.url("/x")}})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
}
