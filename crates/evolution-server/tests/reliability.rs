//! Promises under stress, through the real binary: overload answers 503 with `Retry-After` and
//! loses nothing it accepted; no configured secret ever appears in logs, error bodies or `find`
//! answers.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{API_KEY, Receiver, Server};
use serde_json::{Value, json};

#[tokio::test]
async fn overload_is_refused_with_retry_after_and_accepted_events_are_delivered() {
    let port = common::free_port();
    let server = Server::start(
        "overload",
        &[
            ("EVENTS_MAX_BACKLOG", "100"),
            ("WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_MAX_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_MAX_ATTEMPTS", "100"),
        ],
    )
    .await;
    let hook = json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": ["MESSAGES_UPSERT"]});
    let (status, _) = server
        .call(
            "POST",
            "/instance/create",
            Some(API_KEY),
            Some(json!({"instanceName": "acme", "webhook": hook})),
        )
        .await;
    assert_eq!(status, 201);
    // The receiver is down: deliveries pile up until the backlog limit.
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..30 {
        let batch: Vec<Value> = (0..10)
            .map(|j| json!({"event": "MESSAGES_UPSERT", "data": {"n": i * 10 + j}}))
            .collect();
        let resp = server
            .client
            .post(server.url("/events/acme"))
            .header("apikey", API_KEY)
            .json(&batch)
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            202 => {
                let body: Value = resp.json().await.unwrap();
                accepted.extend(
                    body["ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_owned()),
                );
            }
            503 => {
                assert_eq!(resp.headers()["retry-after"], "1");
                let body: Value = resp.json().await.unwrap();
                assert!(
                    body["response"]["message"]
                        .to_string()
                        .contains("nothing was stored"),
                    "{body}"
                );
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(accepted.len(), 100, "exactly the backlog limit was accepted");
    assert_eq!(refused, 20);
    let receiver = Receiver::start_on(port).await;
    let hits = receiver.wait_for(100, Duration::from_secs(30)).await;
    let got: std::collections::HashSet<&str> = hits.iter().map(|h| h.body["id"].as_str().unwrap()).collect();
    assert!(
        accepted.iter().all(|id| got.contains(id.as_str())),
        "every accepted event was delivered"
    );
    // With the backlog drained, events are accepted again.
    let (status, _) = server
        .call(
            "POST",
            "/events/acme",
            Some(API_KEY),
            Some(json!({"event": "MESSAGES_UPSERT"})),
        )
        .await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn configured_secrets_never_appear_in_logs_errors_or_find_answers() {
    const SIGNING: &str = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTAwMDAwMDAw";
    const HEADER: &str = "Bearer header-secret-4242";
    const TOKEN: &str = "instance-token-secret-7777";
    const JWT_KEY: &str = "jwt-key-secret-9999";
    const URL_TOKEN: &str = "url-token-secret-5555";
    let receiver = Receiver::start().await;
    receiver.set_status(401);
    let dir = common::temp_dir("secrets-log");
    let log = dir.join("server.log");
    let global = format!(
        "http://user:{URL_TOKEN}@127.0.0.1:{}/global?token={URL_TOKEN}",
        receiver.addr.port()
    );
    let server = Server::start(
        "secrets",
        &[
            ("EVOLUTION_TEST_LOG", log.to_str().unwrap()),
            ("LOG_LEVEL", "trace"),
            ("WEBHOOK_SIGNING_SECRET", SIGNING),
            ("WEBHOOK_GLOBAL_ENABLED", "true"),
            ("WEBHOOK_GLOBAL_URL", &global),
            ("WEBHOOK_EVENTS_CALL", "true"),
        ],
    )
    .await;
    let mut answers = Vec::new();
    let hook = json!({"url": receiver.url(&format!("/hook?key={URL_TOKEN}")), "events": ["CALL", "ERRORS"],
        "headers": {"Authorization": HEADER, "jwt_key": JWT_KEY}, "secret": SIGNING});
    // The creation answer hands the instance its token ("hash"): the one place a token is shown.
    let (status, created) = server
        .call(
            "POST",
            "/instance/create",
            Some(API_KEY),
            Some(json!({"instanceName": "acme", "token": TOKEN, "webhook": hook})),
        )
        .await;
    assert_eq!((status, created["hash"].as_str()), (201, Some(TOKEN))); // Failures of every kind: bad input echoing a secret, unauthorized receivers, dead letters.
    let bad = json!({"webhook": {"enabled": true, "url": "ftp://x", "headers": {"Authorization": HEADER}, "secret": "whsec_bad"}});
    answers.push(
        server
            .call("POST", "/webhook/set/acme", Some(TOKEN), Some(bad))
            .await
            .1,
    );
    answers.push(
        server
            .call(
                "POST",
                "/events/acme",
                Some(TOKEN),
                Some(json!({"event": "CALL", "data": {}})),
            )
            .await
            .1,
    );
    answers.push(
        server
            .call("GET", "/webhook/find/acme", Some(TOKEN), None)
            .await
            .1,
    );
    answers.push(
        server
            .call("GET", "/instance/fetchInstances", Some(API_KEY), None)
            .await
            .1,
    );
    answers.push(
        server
            .call("GET", "/webhook/find/acme", Some("wrong-key"), None)
            .await
            .1,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    answers.push(
        server
            .call("GET", "/deliveries/acme", Some(API_KEY), None)
            .await
            .1,
    );
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ready = server.call("GET", "/ready", None, None).await.1;
    drop(server);
    let logs = std::fs::read_to_string(&log).unwrap();
    let mut everything = logs.clone();
    for answer in &answers {
        everything.push_str(&answer.to_string());
    }
    everything.push_str(&metrics);
    everything.push_str(&ready.to_string());
    assert!(
        logs.contains("delivery is dead") || logs.contains("DEBUG"),
        "the logs are real: {logs:.300}"
    );
    for secret in [
        API_KEY,
        SIGNING,
        HEADER,
        "header-secret-4242",
        TOKEN,
        JWT_KEY,
        URL_TOKEN,
    ] {
        assert!(
            !everything.contains(secret),
            "`{secret}` leaked:\n{}",
            excerpt(&everything, secret)
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn excerpt(text: &str, needle: &str) -> String {
    let at = text.find(needle).unwrap_or(0);
    let start = at.saturating_sub(200);
    text.chars().skip(start).take(400).collect()
}
