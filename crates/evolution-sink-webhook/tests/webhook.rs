//! The webhook sink against a real HTTP receiver: what arrives on the wire, how answers are
//! classified, per-destination order and cross-destination concurrency, secrets.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use evolution_events::{
    Channel, Delivery, DeliveryReport, Destination, ErrorKind, EventKind, EventSink, NatsTarget, Retry,
    Sensitive, SinkError, WebhookTarget,
};
use evolution_sink_testkit::fixtures;
use evolution_sink_webhook::{DEFAULT_USER_AGENT, WebhookConfig, WebhookSink};
use serde_json::json;
use uuid::Uuid;

use common::{Receiver, Reply};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn sink() -> WebhookSink {
    WebhookSink::new(WebhookConfig {
        request_timeout: Duration::from_secs(10),
        ..loopback()
    })
    .unwrap()
}

fn target(url: String, headers: &[(&str, &str)]) -> Destination {
    Destination::Webhook(WebhookTarget {
        signing_secrets: Vec::new(),
        payload_destination: None,
        base64: true,
        url,
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), Sensitive::new(*v)))
            .collect(),
    })
}

fn delivery_for(instance: &str, destination: &Destination) -> Delivery {
    let envelope = fixtures::envelope(EventKind::MessagesUpsert, instance, json!({"text": "olá"}));
    fixtures::delivery(
        NEXT_ID.fetch_add(1, Ordering::Relaxed),
        Channel::Webhook,
        destination.clone(),
        envelope,
    )
}

fn delivery(destination: &Destination) -> Delivery {
    delivery_for("inst-a", destination)
}

async fn send(sink: &WebhookSink, batch: &[Delivery]) -> DeliveryReport {
    sink.send(batch).await.unwrap()
}

/// The failure of item `index`, if any.
fn failure(report: &DeliveryReport, index: usize) -> Option<&SinkError> {
    report
        .failures()
        .iter()
        .find(|(i, _)| *i == index)
        .map(|(_, e)| e)
}

fn failed(report: &DeliveryReport, index: usize) -> &SinkError {
    failure(report, index).unwrap_or_else(|| panic!("item {index} did not fail: {report:?}"))
}

#[tokio::test]
async fn headers_and_body_arrive() {
    let receiver = Receiver::start().await;
    let sink = sink();
    let destination = target(
        receiver.url("/in?src=test"),
        &[("X-Custom", "abc"), ("Authorization", "Bearer s3cr3t")],
    );
    let d = delivery(&destination);
    let report = send(&sink, std::slice::from_ref(&d)).await;
    assert!(report.is_success(), "{report:?}");

    let seen = receiver.requests("/in?src=test");
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("x-custom"), "abc");
    assert_eq!(r.header("authorization"), "Bearer s3cr3t");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("user-agent"), DEFAULT_USER_AGENT);
    assert!(r.header("user-agent").starts_with("evolution-events/"));
    assert_eq!(r.header("webhook-id").parse::<Uuid>().unwrap(), d.envelope.id());
    assert_eq!(r.body, d.payload());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["id"], d.envelope.id().to_string());

    // A retry carries the same idempotency key.
    let mut again = d.clone();
    again.attempt = 2;
    assert!(send(&sink, &[again]).await.is_success());
    let seen = receiver.requests("/in?src=test");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("webhook-id"), seen[0].header("webhook-id"));
}

#[tokio::test]
async fn answers_are_classified_end_to_end() {
    let receiver = Receiver::with(|r, _| match r.path.as_str() {
        "/s/200" => Reply::ok(),
        "/s/302" => Reply::status(302).header("location", "https://elsewhere.example/?token=leak"),
        "/s/404" => Reply::status(404).body("no such hook"),
        "/s/409" => Reply::status(409),
        "/s/429" => Reply::status(429).header("retry-after", "7"),
        "/s/503" => Reply::status(503),
        "/s/500" => Reply::status(500).body("internal kaboom"),
        _ => Reply::status(418),
    })
    .await;
    let sink = sink();
    let paths = [
        "/s/200", "/s/302", "/s/404", "/s/409", "/s/429", "/s/503", "/s/500",
    ];
    let batch: Vec<Delivery> = paths
        .iter()
        .map(|p| delivery(&target(receiver.url(p), &[])))
        .collect();
    let report = send(&sink, &batch).await;

    assert!(failure(&report, 0).is_none(), "{report:?}");
    let expect = [
        (1, ErrorKind::Rejected, Retry::Never, 302),
        (2, ErrorKind::Rejected, Retry::Backoff, 404),
        (3, ErrorKind::Rejected, Retry::Backoff, 409),
        (
            4,
            ErrorKind::RateLimited,
            Retry::After(Duration::from_secs(7)),
            429,
        ),
        (5, ErrorKind::Unavailable, Retry::Backoff, 503),
        (6, ErrorKind::Unavailable, Retry::Backoff, 500),
    ];
    for (index, kind, retry, status) in expect {
        let e = failed(&report, index);
        assert_eq!(
            (e.kind(), e.retry(), e.status()),
            (kind, retry, Some(status)),
            "{e}"
        );
    }
    assert_eq!(report.failures().len(), 6);
    let redirect = failed(&report, 1).to_string();
    assert!(
        redirect.contains("redirects are not followed (Location not shown)"),
        "{redirect}"
    );
    assert!(!redirect.contains("elsewhere"), "{redirect}");
    assert!(failed(&report, 2).to_string().contains("no such hook"));
    assert!(failed(&report, 6).to_string().contains("internal kaboom"));
    // The redirect was not followed: one request per path.
    for path in paths {
        assert_eq!(receiver.requests(path).len(), 1, "{path}");
    }
}

#[tokio::test]
async fn a_slow_receiver_times_out() {
    let receiver = Receiver::with(|_, _| Reply::ok().after(Duration::from_secs(2))).await;
    let sink = WebhookSink::new(WebhookConfig {
        request_timeout: Duration::from_millis(300),
        ..loopback()
    })
    .unwrap();
    let started = Instant::now();
    let report = send(&sink, &[delivery(&target(receiver.url("/slow"), &[]))]).await;
    let elapsed = started.elapsed();
    let e = failed(&report, 0);
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert_eq!(e.retry(), Retry::Backoff);
    assert_eq!(e.status(), None);
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
}

#[tokio::test]
async fn a_failure_holds_back_the_rest_of_its_destination() {
    let sink = sink();
    // Build the batch first so that the receiver can fail exactly the second event of inst-a.
    let placeholder = target("http://127.0.0.1:1/g".to_owned(), &[]);
    let a1 = delivery_for("inst-a", &placeholder);
    let a2 = delivery_for("inst-a", &placeholder);
    let b1 = delivery_for("inst-b", &placeholder);
    let a3 = delivery_for("inst-a", &placeholder);
    let fail_id = a2.envelope.id().to_string();
    let receiver = Receiver::with(move |r, _| {
        if r.header("webhook-id") == fail_id {
            Reply::status(500).body("second one fails")
        } else {
            Reply::ok()
        }
    })
    .await;
    let destination = Arc::new(target(receiver.url("/g"), &[]));
    let mut batch = vec![a1, a2, b1, a3];
    for d in &mut batch {
        d.destination = Arc::clone(&destination);
    }

    let report = send(&sink, &batch).await;
    assert_eq!(report.failures().len(), 2, "{report:?}");
    let second = failed(&report, 1);
    assert_eq!(
        (second.kind(), second.status()),
        (ErrorKind::Unavailable, Some(500))
    );
    let held = failed(&report, 3);
    assert_eq!(held.kind(), ErrorKind::Unavailable);
    assert!(held.is_retryable());
    assert_eq!(held.status(), None);
    assert!(
        held.message()
            .contains("not sent: an earlier event for this destination failed"),
        "{held}"
    );
    // Another instance on the same URL is not held back.
    assert!(failure(&report, 2).is_none());

    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = receiver.requests("/g");
    let ids: Vec<String> = seen.iter().map(|r| r.header("webhook-id").to_owned()).collect();
    let of = |d: &Delivery| d.envelope.id().to_string();
    assert_eq!(seen.len(), 3, "{ids:?}");
    assert!(ids.contains(&of(&batch[2])));
    let inst_a: Vec<&String> = ids.iter().filter(|id| **id != of(&batch[2])).collect();
    assert_eq!(
        inst_a,
        [&of(&batch[0]), &of(&batch[1])],
        "inst-a requests, in order"
    );
}

#[tokio::test]
async fn a_group_of_three_stops_after_the_failing_second() {
    let receiver = Receiver::with(|_, nth| if nth == 2 { Reply::status(503) } else { Reply::ok() }).await;
    let sink = sink();
    let destination = target(receiver.url("/three"), &[]);
    let batch: Vec<Delivery> = (0..3).map(|_| delivery(&destination)).collect();
    let report = send(&sink, &batch).await;

    assert!(failure(&report, 0).is_none(), "{report:?}");
    let e = failed(&report, 1);
    assert_eq!((e.kind(), e.status()), (ErrorKind::Unavailable, Some(503)));
    let e = failed(&report, 2);
    assert!(e.to_string().contains("not sent"), "{e}");
    assert!(e.is_retryable());

    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = receiver.requests("/three");
    assert_eq!(seen.len(), 2);
    assert!(seen[0].order < seen[1].order);
    assert_eq!(seen[0].header("webhook-id"), batch[0].envelope.id().to_string());
    assert_eq!(seen[1].header("webhook-id"), batch[1].envelope.id().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_urls_are_sent_concurrently() {
    let receiver = Receiver::with(|_, _| Reply::ok().after(Duration::from_millis(300))).await;
    let sink = sink();
    let batch: Vec<Delivery> = (0..10)
        .map(|i| delivery(&target(receiver.url(&format!("/c/{i}")), &[])))
        .collect();
    let started = Instant::now();
    let report = send(&sink, &batch).await;
    let elapsed = started.elapsed();
    assert!(report.is_success(), "{report:?}");
    assert!(elapsed < Duration::from_secs(2), "10 × 300 ms took {elapsed:?}");
    assert_eq!(receiver.all().len(), 10);
}

#[tokio::test]
async fn one_url_is_sent_in_batch_order() {
    let receiver = Receiver::with(|_, _| Reply::ok().after(Duration::from_millis(20))).await;
    let sink = sink();
    let destination = target(receiver.url("/ordered"), &[]);
    let batch: Vec<Delivery> = (0..10).map(|_| delivery(&destination)).collect();
    assert!(send(&sink, &batch).await.is_success());
    let ids: Vec<String> = receiver
        .requests("/ordered")
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    let sent: Vec<String> = batch.iter().map(|d| d.envelope.id().to_string()).collect();
    assert_eq!(ids, sent);
}

#[tokio::test]
async fn a_non_webhook_destination_fails_alone() {
    let receiver = Receiver::start().await;
    let sink = sink();
    let nats = Destination::Nats(NatsTarget {
        subject: "evolution.x".into(),
    });
    let batch = [
        delivery(&target(receiver.url("/ok"), &[])),
        delivery(&nats),
        delivery(&target(receiver.url("/ok2"), &[])),
    ];
    let report = send(&sink, &batch).await;
    assert_eq!(report.failures().len(), 1);
    let e = failed(&report, 1);
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
    assert!(!e.is_retryable());
    assert_eq!(receiver.all().len(), 2);
}

#[tokio::test]
async fn secrets_never_appear_in_errors() {
    const SECRET: &str = "s3cr3t-Header-Value";
    let receiver = Receiver::with(|r, _| match r.path.split('?').next().unwrap_or_default() {
        "/missing" => Reply::status(404),
        "/moved" => Reply::status(307).header("location", format!("https://x.example/?k={SECRET}")),
        "/slow" => Reply::ok().after(Duration::from_secs(2)),
        _ => Reply::ok(),
    })
    .await;
    let addr = receiver.base().trim_start_matches("http://").to_owned();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sink = WebhookSink::new(WebhookConfig {
        request_timeout: Duration::from_millis(500),
        ..loopback()
    })
    .unwrap();
    let headers = [("Authorization", SECRET), ("X-Api-Key", SECRET)];
    let secret_url = |host: &str, path: &str| format!("http://user:pw-{SECRET}@{host}{path}?token={SECRET}");
    let batch = [
        delivery(&target(secret_url(&addr, "/missing"), &headers)),
        delivery(&target(secret_url(&addr, "/moved"), &headers)),
        delivery(&target(secret_url(&addr, "/slow"), &headers)),
        delivery(&target(
            secret_url(&format!("127.0.0.1:{closed}"), "/refused"),
            &headers,
        )),
        delivery(&target(
            secret_url(&addr, "/bad-header"),
            &[("X-Api-Key", &format!("{SECRET}\r\nx-injected: 1"))],
        )),
        delivery(&target(
            format!("ftp://user:{SECRET}@x.example/?k={SECRET}"),
            &headers,
        )),
        delivery(&target(format!("not a url {SECRET}"), &headers)),
    ];
    let report = send(&sink, &batch).await;
    assert_eq!(report.failures().len(), batch.len(), "{report:?}");
    let kinds: Vec<ErrorKind> = report.failures().iter().map(|(_, e)| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            ErrorKind::Rejected,
            ErrorKind::Rejected,
            ErrorKind::Timeout,
            ErrorKind::Unavailable,
            ErrorKind::ConfigInvalid,
            ErrorKind::ConfigInvalid,
            ErrorKind::ConfigInvalid,
        ]
    );
    for (index, e) in report.failures() {
        for shown in [e.to_string(), format!("{e:?}"), e.duplicate().to_string()] {
            assert!(!shown.contains(SECRET), "item {index}: {shown}");
            assert!(!shown.contains("token="), "item {index}: {shown}");
            assert!(!shown.contains("user:"), "item {index}: {shown}");
        }
    }
    // The receiver did get the secrets (headers, query; an explicit Authorization header wins over
    // the URL's user info).
    let missing = receiver
        .all()
        .into_iter()
        .find(|r| r.path.starts_with("/missing"))
        .unwrap();
    assert_eq!(missing.header("x-api-key"), SECRET);
    assert_eq!(missing.header("authorization"), SECRET);
    assert!(missing.path.ends_with(&format!("token={SECRET}")));
}

#[tokio::test]
async fn health_check_uses_the_probe() {
    let receiver = Receiver::with(|r, _| match r.path.as_str() {
        "/up" => Reply::status(204),
        "/not-found" => Reply::status(404),
        "/down" => Reply::status(503).header("retry-after", "30"),
        _ => Reply::status(500),
    })
    .await;
    let probing = |url: String| {
        WebhookSink::new(WebhookConfig {
            probe_url: Some(url),
            ..loopback()
        })
        .unwrap()
    };
    probing(receiver.url("/up")).health_check().await.unwrap();
    probing(receiver.url("/not-found")).health_check().await.unwrap();
    let e = probing(receiver.url("/down")).health_check().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(e.status(), Some(503));
    assert_eq!(e.retry(), Retry::After(Duration::from_secs(30)));
    let probe = receiver.requests("/up");
    assert_eq!(probe[0].method, "GET");
    assert_eq!(probe[0].header("user-agent"), DEFAULT_USER_AGENT);

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = probing(format!("http://127.0.0.1:{closed}/health"))
        .health_check()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");

    // Without a probe there is nothing to check.
    sink().health_check().await.unwrap();
    let closed_sink = probing(receiver.url("/up"));
    closed_sink.shutdown().await.unwrap();
    assert_eq!(
        closed_sink.health_check().await.unwrap_err().kind(),
        ErrorKind::Closed
    );
}

#[tokio::test]
async fn private_targets_are_refused_permanently_unless_allowed() {
    let receiver = Receiver::start().await;
    let port = receiver.base().rsplit(':').next().unwrap().to_owned();
    let strict = WebhookSink::new(WebhookConfig::default()).unwrap();
    for url in [
        receiver.url("/x"),
        format!("http://localhost:{port}/x"),
        "http://10.0.0.1/x".to_owned(),
        "http://[::1]/x".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
    ] {
        let report = send(&strict, &[delivery(&target(url.clone(), &[]))]).await;
        let (_, e) = &report.failures()[0];
        assert_eq!(
            (e.kind(), e.retry()),
            (ErrorKind::Rejected, Retry::Never),
            "{url}: {e}"
        );
        assert!(e.message().contains("WEBHOOK_ALLOWED_NETWORKS"), "{e}");
    }
    assert!(receiver.all().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn signed_requests_verify_and_jwt_replaces_authorization() {
    let receiver = Receiver::start().await;
    let secret = Sensitive::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let mut t = target(receiver.url("/signed"), &[("jwt_key", "k3y")]);
    if let Destination::Webhook(w) = &mut t {
        w.signing_secrets = vec![secret.clone()];
    }
    let report = send(&sink(), &[delivery(&t)]).await;
    assert!(report.is_success(), "{report:?}");
    let got = receiver.requests("/signed");
    let r = &got[0];
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    let expected = evolution_sink_webhook::sign::signature(&[secret], r.header("webhook-id"), ts, &r.body);
    assert_eq!(r.header("webhook-signature"), expected);
    assert!(r.header("authorization").starts_with("Bearer "));
    assert!(r.headers.get("jwt_key").is_none());
}

/// The default settings, allowing the loopback receivers of these tests (SSRF protection refuses
/// them otherwise).
fn loopback() -> WebhookConfig {
    WebhookConfig {
        allowed_networks: evolution_sink_webhook::network::parse_networks("127.0.0.0/8").unwrap(),
        ..WebhookConfig::default()
    }
}
