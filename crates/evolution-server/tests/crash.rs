//! Crash safety: SIGKILL the server while 10 000 events are being accepted and delivered to a
//! local HTTP receiver, restart it on the same data directory, and check that every event whose
//! `POST /events` was acknowledged (202) reached the receiver — duplicates allowed, losses not.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{API_KEY, Receiver, Server};
use serde_json::{Value, json};

const EVENTS: usize = 10_000;
const PER_REQUEST: usize = 50;
const PRODUCERS: usize = 4;

/// Posts `EVENTS` events in batches from several producers until they are all acknowledged or
/// the server goes away; returns the acknowledged ids.
async fn produce(
    server_url: String,
    client: reqwest::Client,
    acked: Arc<Mutex<Vec<String>>>,
    batches: usize,
) {
    for _ in 0..batches {
        let events: Vec<Value> = (0..PER_REQUEST)
            .map(|i| json!({"event": "MESSAGES_UPSERT", "data": {"n": i, "text": "crash test"}}))
            .collect();
        let sent = client
            .post(format!("{server_url}/events/acme"))
            .header("apikey", API_KEY)
            .json(&events)
            .send()
            .await;
        let Ok(resp) = sent else { return };
        if resp.status().as_u16() != 202 {
            return;
        }
        let Ok(body) = resp.json::<Value>().await else {
            return;
        };
        let ids = body["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned());
        acked.lock().unwrap().extend(ids);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_loses_no_acknowledged_event() {
    let receiver = Receiver::start().await;
    let mut server = Server::start("crash", &[]).await;
    let webhook = json!({"enabled": true, "url": receiver.url("/hook"), "events": ["MESSAGES_UPSERT"]});
    let (status, _) = server
        .call(
            "POST",
            "/instance/create",
            Some(API_KEY),
            Some(json!({"instanceName": "acme", "webhook": webhook})),
        )
        .await;
    assert_eq!(status, 201);

    let acked = Arc::new(Mutex::new(Vec::new()));
    let batches = EVENTS / PER_REQUEST / PRODUCERS;
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            tokio::spawn(produce(
                server.url(""),
                server.client.clone(),
                Arc::clone(&acked),
                batches,
            ))
        })
        .collect();
    // Kill once a third is acknowledged and deliveries are under way.
    loop {
        let n = acked.lock().unwrap().len();
        if n >= EVENTS / 3 && !receiver.hits().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for p in producers {
        p.await.unwrap();
    }
    let acked_before = acked.lock().unwrap().len();
    let delivered_before = receiver.hits().len();
    assert!(acked_before < EVENTS, "the kill interrupted the producers");
    assert!(
        delivered_before < acked_before,
        "the kill interrupted delivery ({delivered_before} of {acked_before})"
    );

    // Restart on the same SQLite file and send the rest.
    let server = server.restart().await;
    let remaining = (EVENTS - acked_before).div_ceil(PER_REQUEST);
    produce(
        server.url(""),
        server.client.clone(),
        Arc::clone(&acked),
        remaining,
    )
    .await;
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(
        acked.len() >= EVENTS,
        "all batches acknowledged after the restart ({})",
        acked.len()
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let missing = loop {
        let got: HashSet<String> = receiver
            .hits()
            .iter()
            .filter_map(|h| h.body["id"].as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&String> = acked.iter().filter(|id| !got.contains(*id)).collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing.len();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let hits = receiver.hits().len();
    eprintln!(
        "acknowledged before the kill: {acked_before}, delivered before the kill: {delivered_before}, \
         acknowledged in all: {}, requests received: {hits} (duplicates: {})",
        acked.len(),
        hits.saturating_sub(acked.len())
    );
    assert_eq!(missing, 0, "acknowledged events lost after SIGKILL");
}
