//! The webhook channel end to end through the server: signatures checked by an independent
//! verifier, byEvents URLs, filters, retries with the seed's settings, SSRF refusal, 410.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::{API_KEY, Receiver, Server, post_events};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_2: &str = "whsec_c2Vjb25kLXNlY3JldC0xMjM0NTY3OA==";

async fn instance(server: &Server, name: &str, webhook: Value) {
    let (status, body) = server
        .call(
            "POST",
            "/instance/create",
            Some(API_KEY),
            Some(json!({"instanceName": name, "webhook": webhook})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn deliveries(server: &Server, instance: &str, status: &str) -> Vec<Value> {
    let path = format!("/deliveries/{instance}?status={status}");
    server
        .call("GET", &path, Some(API_KEY), None)
        .await
        .1
        .as_array()
        .unwrap()
        .clone()
}

async fn wait_dead(server: &Server, instance: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let dead = deliveries(server, instance, "dead").await;
        if dead.len() >= n || std::time::Instant::now() > deadline {
            return dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Python interpreter with PyPI `standardwebhooks` (`scripts/services up verifier`).
fn verifier() -> Option<String> {
    match std::env::var("EVOLUTION_TEST_PYTHON") {
        Ok(python) => Some(python),
        Err(_) if matches!(std::env::var("CI").as_deref(), Ok("true" | "1")) => {
            panic!("EVOLUTION_TEST_PYTHON is not set in CI: run `scripts/services up verifier`")
        }
        Err(_) => {
            eprintln!("skipped: set EVOLUTION_TEST_PYTHON (eval \"$(scripts/services env)\")");
            None
        }
    }
}

/// Verifies a request with the `standardwebhooks` package: Ok, or the verifier's error.
fn verify(python: &str, secret: &str, hit: &common::Hit, body: &str) -> Result<(), String> {
    let header = |name: &str| hit.headers[name].to_str().unwrap().to_owned();
    let headers = json!({
        "webhook-id": header("webhook-id"),
        "webhook-timestamp": header("webhook-timestamp"),
        "webhook-signature": header("webhook-signature"),
    });
    let script = "import json, sys\nfrom standardwebhooks.webhooks import Webhook\n\
                  secret, headers, body = sys.argv[1], json.loads(sys.argv[2]), sys.stdin.read()\n\
                  Webhook(secret).verify(body, headers)\nprint('verified')";
    let mut child = std::process::Command::new(python)
        .args(["-c", script, secret, &headers.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("verified") {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn signatures_verify_with_the_standardwebhooks_package() {
    let Some(python) = verifier() else { return };
    let receiver = Receiver::start().await;
    let server = Server::start("signed", &[("WEBHOOK_SIGNING_SECRET", SECRET)]).await;
    // One instance signed with the global secret, one with its own pair during a rotation.
    instance(
        &server,
        "global-secret",
        json!({"url": receiver.url("/a"), "events": ["MESSAGES_UPSERT"]}),
    )
    .await;
    instance(
        &server,
        "rotating",
        json!({"url": receiver.url("/b"), "events": ["MESSAGES_UPSERT"], "secret": [SECRET_2, SECRET]}),
    )
    .await;
    post_events(
        &server,
        "global-secret",
        json!({"event": "MESSAGES_UPSERT", "data": {"text": "olá 👋"}}),
    )
    .await;
    post_events(
        &server,
        "rotating",
        json!({"event": "MESSAGES_UPSERT", "data": {"text": "tchau"}}),
    )
    .await;
    let hits = receiver.wait_for(2, WAIT).await;
    assert_eq!(hits.len(), 2);
    let a = hits.iter().find(|h| h.path == "/a").unwrap();
    let b = hits.iter().find(|h| h.path == "/b").unwrap();
    verify(&python, SECRET, a, &a.raw).unwrap();
    assert_eq!(
        a.headers["webhook-id"].to_str().unwrap(),
        a.body["id"].as_str().unwrap()
    );
    verify(&python, SECRET_2, b, &b.raw).unwrap();
    verify(&python, SECRET, b, &b.raw).unwrap();
    // The verifier really checks: a changed body or another secret fails.
    let tampered = a.raw.replace("olá", "ola");
    assert!(verify(&python, SECRET, a, &tampered).is_err());
    assert!(verify(&python, SECRET_2, a, &a.raw).is_err());
    // The secrets never come back from the API.
    let (_, found) = server
        .call("GET", "/webhook/find/rotating", Some(API_KEY), None)
        .await;
    assert_eq!(found["secret"], json!(["**REDACTED**", "**REDACTED**"]));
    let (status, body) = server
        .call(
            "POST",
            "/webhook/set/rotating",
            Some(API_KEY),
            Some(json!({"webhook": {"enabled": true, "url": receiver.url("/b"), "secret": "not-a-secret"}})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("webhook.secret"), "{body}");
}

#[tokio::test]
async fn by_events_urls_headers_and_filters() {
    let receiver = Receiver::start().await;
    let server = Server::start("byevents", &[]).await;
    instance(
        &server,
        "acme",
        json!({"url": receiver.url("/hook/?token=abc"), "byEvents": true, "headers": {"X-Api": "k"}}),
    )
    .await;
    let all: Vec<Value> = evolution_events::EventKind::all()
        .filter(|k| *k != evolution_events::EventKind::InstanceCreate)
        .map(|k| json!({"event": k.wire(), "data": {}}))
        .collect();
    let n = all.len();
    post_events(&server, "acme", Value::Array(all)).await;
    let hits = receiver.wait_for(n + 1, WAIT).await;
    let mut paths: Vec<String> = hits.iter().map(|h| h.path.clone()).collect();
    paths.sort();
    let mut expected: Vec<String> = evolution_events::EventKind::all()
        .map(|k| format!("/hook/{}?token=abc", k.key()))
        .collect();
    expected.sort();
    assert_eq!(
        paths, expected,
        "one URL per event (INSTANCE_CREATE included), query kept"
    );
    assert!(hits.iter().all(|h| h.headers["x-api"] == "k"));

    // An event filter: only CALL.
    let (status, _) = server
        .call(
            "POST",
            "/webhook/set/acme",
            Some(API_KEY),
            Some(json!({"webhook": {"enabled": true, "url": receiver.url("/only"), "events": ["CALL"]}})),
        )
        .await;
    assert_eq!(status, 201);
    post_events(
        &server,
        "acme",
        json!([{"event": "MESSAGES_UPSERT"}, {"event": "CALL"}, {"event": "CHATS_SET"}]),
    )
    .await;
    let hits = receiver.wait_for(n + 2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all_hits = receiver.hits();
    let only: Vec<&str> = all_hits
        .iter()
        .filter(|h| h.path == "/only")
        .map(|h| h.body["event"].as_str().unwrap())
        .collect();
    assert_eq!(only, ["CALL"], "{hits:?}");
}

#[tokio::test]
async fn retries_follow_the_seed_settings_and_non_retryable_statuses_die_at_once() {
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let server = Server::start(
        "retries",
        &[
            ("WEBHOOK_RETRY_MAX_ATTEMPTS", "3"),
            ("WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_MAX_DELAY_SECONDS", "2"),
            ("WEBHOOK_RETRY_JITTER_FACTOR", "0"),
        ],
    )
    .await;
    instance(
        &server,
        "acme",
        json!({"url": receiver.url("/hook"), "events": ["CALL"]}),
    )
    .await;
    post_events(&server, "acme", json!({"event": "CALL"})).await;
    let dead = wait_dead(&server, "acme", 1).await;
    assert_eq!(dead.len(), 1, "three 500s, then dead");
    let log = dead[0]["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 3);
    assert!(
        log.iter()
            .all(|a| a["status"] == 500 && a["outcome"] != "delivered")
    );
    let at = |i: usize| chrono_ms(log[i]["at"].as_str().unwrap());
    let (first, second) = (at(1) - at(0), at(2) - at(1));
    assert!(
        (900..2000).contains(&first),
        "1 s after the first failure: {first} ms"
    );
    assert!(
        (1900..3000).contains(&second),
        "2 s (doubled, capped) after the second: {second} ms"
    );

    receiver.set_status(422);
    post_events(&server, "acme", json!({"event": "CALL"})).await;
    let dead = wait_dead(&server, "acme", 2).await;
    let newest = &dead[0];
    assert_eq!(
        newest["attempts"], 1,
        "422 is in WEBHOOK_RETRY_NON_RETRYABLE_STATUS_CODES: {newest}"
    );
}

fn chrono_ms(rfc3339: &str) -> i64 {
    let t: chrono::DateTime<chrono::Utc> = rfc3339.parse().unwrap();
    t.timestamp_millis()
}

#[tokio::test]
async fn a_receiver_that_is_down_for_a_while_then_receives_everything() {
    let port = common::free_port();
    let server = Server::start(
        "down",
        &[
            ("WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_MAX_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_MAX_ATTEMPTS", "60"),
        ],
    )
    .await;
    instance(
        &server,
        "acme",
        json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": ["MESSAGES_UPSERT"]}),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let batch: Vec<Value> = (0..10)
            .map(|j| json!({"event": "MESSAGES_UPSERT", "data": {"n": i * 10 + j}}))
            .collect();
        ids.extend(post_events(&server, "acme", Value::Array(batch)).await);
    }
    // Attempts fail while the receiver is down (waited for, not slept on: a busy machine is slow).
    let deadline = std::time::Instant::now() + WAIT;
    while deliveries(&server, "acme", "failed").await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no attempt failed while the receiver was down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let receiver = Receiver::start_on(port).await;
    let hits = receiver.wait_for(50, WAIT).await;
    let got: std::collections::HashSet<&str> = hits.iter().map(|h| h.body["id"].as_str().unwrap()).collect();
    assert!(
        ids.iter().all(|id| got.contains(id.as_str())),
        "every event arrived"
    );
    let seqs: Vec<u64> = hits
        .iter()
        .map(|h| h.body["sequence"].as_u64().unwrap())
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 50);
    let last_copy_order: Vec<u64> = {
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<u64> = seqs.iter().rev().filter(|s| seen.insert(**s)).copied().collect();
        out.reverse();
        out
    };
    assert!(
        last_copy_order.windows(2).all(|w| w[0] < w[1]),
        "in order per instance: {seqs:?}"
    );
}

/// A global webhook at a private address is a start-up error naming the variable and how to allow
/// it (not a server whose every global delivery goes dead); instances' URLs are refused when set.
#[tokio::test]
async fn private_targets_are_refused_at_start_and_at_set_time() {
    let receiver = Receiver::start().await;
    let global = receiver.url("/global");
    let data_dir = common::temp_dir("ssrf-start");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_evolution-server"))
        .env_clear()
        .envs([
            ("AUTHENTICATION_API_KEY", API_KEY),
            ("SERVER_PORT", &common::free_port().to_string()),
            ("SERVER_DATA_DIR", &data_dir.display().to_string()),
            ("WEBHOOK_GLOBAL_ENABLED", "true"),
            ("WEBHOOK_GLOBAL_URL", &global),
            ("WEBHOOK_EVENTS_CALL", "true"),
        ])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&data_dir).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("WEBHOOK_GLOBAL_URL: 127.0.0.1 is a loopback (127.0.0.0/8) address")
            && stderr.contains("WEBHOOK_ALLOWED_NETWORKS=127.0.0.1/32"),
        "{stderr}"
    );
    let server = Server::start("ssrf", &[("WEBHOOK_ALLOWED_NETWORKS", "")]).await;
    let (status, body) = server
        .call(
            "POST",
            "/instance/create",
            Some(API_KEY),
            Some(json!({"instanceName": "acme", "webhook": {"url": "http://127.0.0.1:9/x"}})),
        )
        .await;
    assert_eq!(status, 400);
    let message = body["response"]["message"].to_string();
    assert!(
        message.contains("webhook.url")
            && message.contains("127.0.0.1")
            && message.contains("WEBHOOK_ALLOWED_NETWORKS"),
        "{message}"
    );
    let (status, _) = server
        .call(
            "POST",
            "/instance/create",
            Some(API_KEY),
            Some(json!({"instanceName": "acme"})),
        )
        .await;
    assert_eq!(status, 201);
    for url in [
        "http://localhost:9/x",
        "http://10.1.2.3/x",
        "http://[::1]:9/x",
        "http://169.254.169.254/",
    ] {
        let (status, body) = server
            .call(
                "POST",
                "/webhook/set/acme",
                Some(API_KEY),
                Some(json!({"webhook": {"enabled": true, "url": url}})),
            )
            .await;
        assert_eq!(status, 400, "{url}: {body}");
    }
    assert!(receiver.hits().is_empty());
}

#[tokio::test]
async fn gone_disables_the_instance_webhook() {
    let receiver = Receiver::start().await;
    receiver.set_status(410);
    let server = Server::start("gone", &[]).await;
    instance(
        &server,
        "acme",
        json!({"url": receiver.url("/hook"), "events": ["CALL"]}),
    )
    .await;
    post_events(&server, "acme", json!({"event": "CALL"})).await;
    let dead = wait_dead(&server, "acme", 1).await;
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("webhook is disabled"),
        "{}",
        dead[0]
    );
    let mut found = Value::Null;
    for _ in 0..50 {
        found = server
            .call("GET", "/webhook/find/acme", Some(API_KEY), None)
            .await
            .1;
        if found["enabled"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found["enabled"], false, "{found}");
    assert_eq!(found["events"], json!(["CALL"]), "the settings are kept");
    receiver.set_status(200);
    post_events(&server, "acme", json!({"event": "CALL"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.hits().is_empty(), "nothing is sent to a gone receiver");
}

/// A receiver that answers every request after `delay`.
async fn slow_receiver(delay: Duration) -> String {
    let app = axum::Router::new().fallback(move || async move {
        tokio::time::sleep(delay).await;
        "late"
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_slow_receiver_does_not_hold_up_the_others() {
    for ordered in ["true", "false"] {
        let fast = Receiver::start().await;
        let slow = slow_receiver(Duration::from_secs(5)).await;
        let server = Server::start("isolation", &[("WEBHOOK_ORDERED", ordered)]).await;
        instance(&server, "slow", json!({"url": slow, "events": ["CALL"]})).await;
        instance(
            &server,
            "fast",
            json!({"url": fast.url("/fast"), "events": ["CALL"]}),
        )
        .await;
        let calls: Vec<Value> = (0..100)
            .map(|i| json!({"event": "CALL", "data": {"n": i}}))
            .collect();
        post_events(&server, "slow", Value::Array(calls.clone())).await;
        let start = std::time::Instant::now();
        post_events(&server, "fast", Value::Array(calls)).await;
        let hits = fast.wait_for(100, WAIT).await;
        assert_eq!(hits.len(), 100, "WEBHOOK_ORDERED={ordered}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "WEBHOOK_ORDERED={ordered}: the fast receiver waited {:?} behind the slow one",
            start.elapsed()
        );
    }
}

/// `EVENT_NAMING=evolution-v2`: the webhook body Evolution API sends (golden), its `destination`
/// the instance's webhook URL without the byEvents segment — on the global webhook's body too —
/// or, for an instance without a webhook, the global URL with the event's segment.
#[tokio::test]
async fn evolution_v2_webhook_body_is_evolution_api_s() {
    let receiver = Receiver::start().await;
    let global = receiver.url("/global");
    let server = Server::start(
        "v2-webhook",
        &[
            ("EVENT_NAMING", "evolution-v2"),
            ("SERVER_URL", common::GOLDEN_SERVER_URL),
            ("WEBHOOK_GLOBAL_ENABLED", "true"),
            ("WEBHOOK_GLOBAL_URL", &global),
            ("WEBHOOK_EVENTS_MESSAGES_UPSERT", "true"),
        ],
    )
    .await;
    let own = receiver.url("/wa");
    common::create_instance(
        &server,
        "acme",
        json!({"webhook": {"url": own, "byEvents": true, "events": ["MESSAGES_UPSERT"]}}),
    )
    .await;
    common::create_instance(&server, "bare", json!({})).await;
    let acme = post_events(&server, "acme", common::seed_event("MESSAGES_UPSERT")).await;
    let bare = post_events(&server, "bare", common::seed_event("MESSAGES_UPSERT")).await;
    let hits = receiver.wait_for(3, WAIT).await;
    let mut paths: Vec<&str> = hits.iter().map(|h| h.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/global", "/global", "/wa/messages-upsert"], "{paths:?}");
    for hit in &hits {
        let (instance, id, destination) = if hit.body["instance"] == "acme" {
            ("acme", &acme[0], own.clone())
        } else {
            ("bare", &bare[0], format!("{global}/messages-upsert"))
        };
        common::assert_golden(
            "webhook",
            hit.raw.as_bytes(),
            &[("INSTANCE", instance), ("ID", id), ("DESTINATION", &destination)],
        );
    }
}

/// A webhook with `base64: false` receives its payloads without the media's base64, one with
/// `true` with it; other channels' destinations (here the global webhook) as produced.
#[tokio::test]
async fn base64_false_leaves_the_media_out() {
    let receiver = Receiver::start().await;
    let server = Server::start(
        "base64",
        &[
            ("WEBHOOK_GLOBAL_ENABLED", "true"),
            ("WEBHOOK_GLOBAL_URL", &receiver.url("/global")),
            ("WEBHOOK_EVENTS_MESSAGES_UPSERT", "true"),
        ],
    )
    .await;
    for (instance, base64) in [("without", false), ("with", true)] {
        common::create_instance(
            &server,
            instance,
            json!({"webhook": {"url": receiver.url(&format!("/{instance}")), "base64": base64,
                               "events": ["MESSAGES_UPSERT"]}}),
        )
        .await;
    }
    let data = json!({"key": {"id": "M1"}, "messageType": "imageMessage",
                      "message": {"imageMessage": {"mimetype": "image/jpeg"}, "base64": "/9j/4AAQSkZJRg=="}});
    for instance in ["without", "with"] {
        post_events(
            &server,
            instance,
            json!({"event": "MESSAGES_UPSERT", "data": data}),
        )
        .await;
    }
    let hits = receiver.wait_for(4, WAIT).await;
    assert_eq!(hits.len(), 4);
    for hit in &hits {
        let media = &hit.body["data"]["message"]["base64"];
        let expected = if hit.path == "/without" {
            Value::Null
        } else {
            json!("/9j/4AAQSkZJRg==")
        };
        assert_eq!(media, &expected, "{}: {}", hit.path, hit.raw);
        assert_eq!(
            hit.body["data"]["message"]["imageMessage"]["mimetype"], "image/jpeg",
            "the rest is kept: {}",
            hit.raw
        );
    }
}

/// A client that reads its settings with `find` and sends them back to `set` with one change keeps
/// the secrets `find` showed redacted, in both naming profiles (Evolution API's rows too).
#[tokio::test]
async fn what_find_answered_sent_back_to_set_keeps_the_secrets() {
    let receiver = Receiver::start().await;
    for naming in ["seed", "evolution-v2"] {
        let server = Server::start(&format!("roundtrip-{naming}"), &[("EVENT_NAMING", naming)]).await;
        instance(
            &server,
            "acme",
            json!({"url": receiver.url(&format!("/{naming}/first")), "headers": {"Authorization": "Bearer kept-secret"}}),
        )
        .await;
        let (_, shown) = server
            .call("GET", "/webhook/find/acme", Some(API_KEY), None)
            .await;
        let text = shown.to_string();
        assert!(
            text.contains("**REDACTED**") && !text.contains("kept-secret"),
            "{shown}"
        );
        let mut sent = shown.clone();
        sent["url"] = receiver.url(&format!("/{naming}/moved")).into();
        let (status, body) = server
            .call(
                "POST",
                "/webhook/set/acme",
                Some(API_KEY),
                Some(json!({ "webhook": sent })),
            )
            .await;
        assert_eq!(status, 201, "{naming}: {body}");
        assert!(!body.to_string().contains("kept-secret"), "{body}");
        post_events(&server, "acme", json!({"event": "MESSAGES_UPSERT", "data": {}})).await;
        let deadline = std::time::Instant::now() + WAIT;
        let hit = loop {
            if let Some(hit) = receiver
                .hits()
                .into_iter()
                .find(|h| h.path == format!("/{naming}/moved"))
            {
                break hit;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{naming}: nothing reached /moved"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(hit.headers["authorization"], "Bearer kept-secret", "{naming}");
    }
}

#[tokio::test]
async fn filters_keep_what_does_not_match_off_the_wire_and_out_of_the_log() {
    let receiver = Receiver::start().await;
    let global = Receiver::start().await;
    let server = Server::start(
        "webhook-filter",
        &[
            ("WEBHOOK_GLOBAL_ENABLED", "true"),
            ("WEBHOOK_GLOBAL_URL", &global.url("/global")),
            ("WEBHOOK_EVENTS_MESSAGES_UPSERT", "true"),
            ("WEBHOOK_GLOBAL_FILTER", r#"{"data.key.fromMe": {"$eq": true}}"#),
        ],
    )
    .await;
    let settings = json!({"enabled": true, "url": receiver.url("/hook"), "events": ["MESSAGES_UPSERT"],
                          "filter": common::group_filter()});
    instance(&server, "filtered", settings.clone()).await;
    let (_, found) = server
        .call("GET", "/webhook/find/filtered", Some(API_KEY), None)
        .await;
    assert_eq!(found["filter"], common::group_filter(), "kept as given");
    let ids = common::post_filtered(&server, "filtered").await;

    receiver.wait_for(1, WAIT).await;
    global.wait_for(1, WAIT).await;
    // Long enough for anything the filters should have stopped to arrive too.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let instance_ids: Vec<String> = receiver
        .hits()
        .iter()
        .map(|h| h.body["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        instance_ids,
        [ids[2].clone()],
        "only the group message not sent by me"
    );
    let global_ids: Vec<String> = global
        .hits()
        .iter()
        .map(|h| h.body["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        global_ids,
        [ids[1].clone()],
        "WEBHOOK_GLOBAL_FILTER: only my message"
    );
    common::assert_only_logged(&server, "filtered", "webhook", &[&ids[1], &ids[2]]).await;
    common::assert_bad_filter_refused(
        &server,
        "filtered",
        "webhook",
        json!({"enabled": true, "url": receiver.url("/hook")}),
    )
    .await;

    // A bad global filter stops the start, naming the variable, the path and the operator.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_evolution-server"))
        .args(["config", "check"])
        .env_clear()
        .env("AUTHENTICATION_API_KEY", API_KEY)
        .env("NATS_GLOBAL_FILTER", r#"{"data.type": {"$in": "x"}}"#)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("NATS_GLOBAL_FILTER.data.type.$in: `$in` on path `data.type` takes an array"),
        "{text}"
    );
}

/// An instance webhook with `rateLimit: 10` receives 30 events at 10 per second (± 10 %), while
/// the global webhook of the same instance, without a limit, gets all 30 at once; waiting for its
/// slot is not an attempt.
#[tokio::test]
async fn a_rate_limited_destination_receives_at_its_limit_while_another_runs_at_full_speed() {
    let limited = Receiver::start().await;
    let free = Receiver::start().await;
    let server = Server::start(
        "webhook-rate",
        &[
            ("WEBHOOK_GLOBAL_ENABLED", "true"),
            ("WEBHOOK_GLOBAL_URL", &free.url("/free")),
            ("WEBHOOK_EVENTS_MESSAGES_UPSERT", "true"),
        ],
    )
    .await;
    let settings = json!({"enabled": true, "url": limited.url("/limited"), "events": ["MESSAGES_UPSERT"],
                          "rateLimit": 10});
    instance(&server, "paced", settings).await;
    let (_, found) = server
        .call("GET", "/webhook/find/paced", Some(API_KEY), None)
        .await;
    assert_eq!(found["rateLimit"], 10);
    let events: Vec<Value> = (0..30).map(|_| common::message(false, "1@g.us")).collect();
    post_events(&server, "paced", Value::Array(events)).await;

    let fast = free.wait_for(30, WAIT).await;
    assert_eq!(fast.len(), 30);
    let fast_done = fast[29].at;
    let slow = limited.wait_for(30, WAIT).await;
    assert_eq!(slow.len(), 30);
    let span = (slow[29].at - slow[0].at).as_secs_f64();
    let rate = 29.0 / span;
    eprintln!("rate-limited destination: 30 events in {span:.3} s = {rate:.2}/s");
    assert!(
        (9.0..=11.0).contains(&rate),
        "{rate:.2} events/s for rateLimit 10"
    );
    let limited_by_then = slow.iter().filter(|h| h.at <= fast_done).count();
    assert!(
        (fast_done - fast[0].at) < Duration::from_secs(1) && limited_by_then <= 12,
        "the free destination took {:?} and the limited one had {limited_by_then} by then",
        fast_done - fast[0].at
    );
    // Waiting for a slot is not an attempt. (The last settle may land just after its request.)
    let deadline = std::time::Instant::now() + WAIT;
    let log = loop {
        let log = deliveries(&server, "paced", "delivered").await;
        let settled = log
            .iter()
            .filter(|d| d["destination"].as_str().unwrap().ends_with("/limited"))
            .count();
        if settled >= 30 || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let paced: Vec<&Value> = log
        .iter()
        .filter(|d| d["destination"].as_str().unwrap().ends_with("/limited"))
        .collect();
    assert_eq!(paced.len(), 30);
    assert!(paced.iter().all(|d| d["attempts"] == 1), "{paced:?}");

    // A bad rate is refused, naming the field.
    let (status, body) = server
        .call(
            "POST",
            "/webhook/set/paced",
            Some(API_KEY),
            Some(json!({"webhook": {"enabled": true, "url": limited.url("/limited"), "rateLimit": 0}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("webhook.rateLimit"), "{body}");
}

/// A receiver that answers 429 with `Retry-After: 2` gets nothing more for 2 seconds — neither the
/// retry nor another instance's event to the same URL — and then everything.
#[tokio::test]
async fn a_429_with_retry_after_slows_the_destination_down_for_that_long() {
    let receiver = Receiver::start().await;
    let server = Server::start("webhook-429", &[]).await;
    let settings = json!({"enabled": true, "url": receiver.url("/hook"), "events": ["MESSAGES_UPSERT"]});
    instance(&server, "first", settings.clone()).await;
    instance(&server, "second", settings).await;
    receiver.answer_once(429, Some("2"));
    let first = post_events(&server, "first", common::message(false, "1@g.us")).await;
    let deadline = std::time::Instant::now() + WAIT;
    while receiver.refused().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused_at = receiver.refused()[0];
    let second = post_events(&server, "second", common::message(false, "1@g.us")).await;
    let hits = receiver.wait_for(2, WAIT).await;
    assert_eq!(hits.len(), 2, "both arrive in the end");
    let mut ids: Vec<&str> = hits.iter().map(|h| h.body["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut want = [first[0].as_str(), second[0].as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    for hit in &hits {
        let waited = hit.at - refused_at;
        assert!(
            waited >= Duration::from_millis(1900),
            "{} reached the receiver {waited:?} after its 429 with Retry-After: 2",
            hit.body["id"]
        );
    }
}

async fn health_of(server: &Server, instance: &str) -> Vec<Value> {
    let (status, list) = server
        .call(
            "GET",
            &format!("/deliveries/{instance}/destinations"),
            Some(API_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    list.as_array().unwrap().clone()
}

/// A receiver that fails every attempt for the window (2 s here; five days by default) is disabled:
/// an ERRORS event says so, the health route shows it, its waiting delivery is held, new events
/// are not routed to it; setting it enabled again redrives what waited.
#[tokio::test]
async fn a_receiver_that_always_fails_is_disabled_after_the_window_and_enabling_it_redrives() {
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let errors = Receiver::start().await;
    let server = Server::start(
        "webhook-disable",
        &[
            ("WEBHOOK_DISABLE_AFTER_SECONDS", "2"),
            ("WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_USE_EXPONENTIAL_BACKOFF", "false"),
            ("WEBHOOK_RETRY_JITTER_FACTOR", "0"),
            ("WEBHOOK_RETRY_MAX_ATTEMPTS", "100"),
            ("WEBHOOK_EVENTS_ERRORS", "true"),
            ("WEBHOOK_EVENTS_ERRORS_WEBHOOK", &errors.url("/errors")),
        ],
    )
    .await;
    let settings = json!({"enabled": true, "url": receiver.url("/hook"), "events": ["MESSAGES_UPSERT"]});
    instance(&server, "flaky", settings.clone()).await;
    let waited = post_events(&server, "flaky", common::message(false, "1@g.us")).await;

    let deadline = std::time::Instant::now() + WAIT;
    let disabled = loop {
        let list = health_of(&server, "flaky").await;
        if let Some(h) = list.iter().find(|h| h["state"] == "disabled") {
            break h.clone();
        }
        assert!(std::time::Instant::now() < deadline, "never disabled: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(disabled["channel"], "webhook");
    assert!(
        disabled["destination"].as_str().unwrap().ends_with("/hook"),
        "{disabled}"
    );
    assert!(
        disabled["consecutiveFailures"].as_u64().unwrap() >= 3,
        "{disabled}"
    );
    assert_eq!(disabled["lastSuccess"], Value::Null);
    assert!(
        disabled["lastError"].as_str().unwrap().contains("500"),
        "{disabled}"
    );

    // An ERRORS event says so, at the errors webhook (a real receiver).
    let said = errors
        .wait_for(1, WAIT)
        .await
        .into_iter()
        .find(|h| h.body["data"]["disabled"] == true)
        .expect("an ERRORS event about the disabled destination");
    assert_eq!(said.body["event"], "ERRORS");
    assert_eq!(said.body["instance"], "flaky");
    assert!(
        said.body["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("every attempt failed for 2 s"),
        "{}",
        said.body
    );
    let (_, found) = server
        .call("GET", "/webhook/find/flaky", Some(API_KEY), None)
        .await;
    assert_eq!(found["enabled"], false, "the instance's webhook is switched off");

    // What waited is held as a dead letter, without reaching the receiver again.
    let held = wait_dead(&server, "flaky", 1).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["event_id"], waited[0].as_str());
    assert!(
        held[0]["last_error"].as_str().unwrap().contains("disabled"),
        "{held:?}"
    );
    // While disabled, new events are not routed to it.
    let skipped = post_events(&server, "flaky", common::message(false, "1@g.us")).await;

    // The receiver is fixed; enabling the webhook again redrives what waited.
    receiver.set_status(200);
    let (status, body) = server
        .call(
            "POST",
            "/webhook/set/flaky",
            Some(API_KEY),
            Some(json!({ "webhook": settings })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let hits = receiver.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = receiver
        .hits()
        .iter()
        .map(|h| h.body["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [waited[0].clone()], "{hits:?}");
    assert!(!ids.contains(&skipped[0]));
    let after: Vec<Value> = health_of(&server, "flaky").await;
    let h = after
        .iter()
        .find(|h| h["destination"].as_str().unwrap().ends_with("/hook"))
        .unwrap();
    assert_eq!(h["state"], "healthy", "{h}");
    assert!(h["lastSuccess"].is_string(), "{h}");
    assert_eq!(h["consecutiveFailures"], 0);
}
