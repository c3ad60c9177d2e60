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

/// A small tmpfs mounted for the test (root only, as in CI); unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Self {
        let path = common::temp_dir("small-disk");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root (CI runs as root)");
        Self { path }
    }

    /// Fills the free space with a file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let tail = vec![0u8; 512];
        while file.write_all(&tail).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status()
            .ok();
        std::fs::remove_dir_all(&self.path).ok();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_events_with_503_and_stores_nothing_half() {
    let disk = SmallDisk::mount(8);
    let receiver = Receiver::start().await;
    let server = Server::start(
        "full-disk",
        &[
            ("SERVER_DATA_DIR", disk.path.to_str().unwrap()),
            ("WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", "1"),
            ("WEBHOOK_RETRY_MAX_DELAY_SECONDS", "1"),
        ],
    )
    .await;
    let hook = json!({"url": receiver.url("/hook"), "events": ["MESSAGES_UPSERT"]});
    let (status, _) = server
        .call(
            "POST",
            "/instance/create",
            Some(API_KEY),
            Some(json!({"instanceName": "acme", "webhook": hook})),
        )
        .await;
    assert_eq!(status, 201);
    let mut accepted = Vec::new();
    let post = |n: usize| {
        let batch: Vec<Value> = (0..n)
            .map(|i| json!({"event": "MESSAGES_UPSERT", "data": {"n": i, "pad": "x".repeat(2000)}}))
            .collect();
        server
            .client
            .post(server.url("/events/acme"))
            .header("apikey", API_KEY)
            .json(&batch)
            .send()
    };
    let resp = post(20).await.unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    accepted.extend(
        body["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned()),
    );

    let filler = disk.fill();
    let mut refused = 0;
    for _ in 0..20 {
        let resp = post(50).await.unwrap();
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
                assert!(resp.headers().contains_key("retry-after"));
                let body: Value = resp.json().await.unwrap();
                assert!(
                    body["response"]["message"]
                        .to_string()
                        .contains("nothing was stored"),
                    "{body}"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", resp.text().await.unwrap()),
        }
    }
    assert!(refused > 0, "the full disk refused some batches");

    // Space again: new events are accepted and everything accepted is delivered, once each at least.
    std::fs::remove_file(filler).unwrap();
    let resp = post(10).await.unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    let body: Value = resp.json().await.unwrap();
    accepted.extend(
        body["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned()),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: std::collections::HashSet<String> = receiver
            .hits()
            .iter()
            .map(|h| h.body["id"].as_str().unwrap().to_owned())
            .collect();
        let missing = accepted.iter().filter(|id| !got.contains(*id)).count();
        if missing == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} accepted events were not delivered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The log has exactly the accepted events: nothing half-stored from the refused batches.
    let (_, log) = server
        .call("GET", "/deliveries/acme?limit=1000", Some(API_KEY), None)
        .await;
    let logged: std::collections::HashSet<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    let accepted_set: std::collections::HashSet<&str> = accepted.iter().map(String::as_str).collect();
    assert_eq!(logged, accepted_set);
    drop(server);
}
