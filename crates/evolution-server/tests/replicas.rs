//! Several replicas of the real binary on one PostgreSQL database (`EVOLUTION_TEST_POSTGRES`,
//! started or verified by `scripts/services`), each test in a schema of its own: events posted
//! round-robin reach a webhook receiver, RabbitMQ and NATS exactly once each and in sequence order;
//! a replica SIGKILLed mid-stream loses nothing; a PostgreSQL restarted mid-stream (a private
//! cluster of the test's own, so the shared one is never stopped) makes ingest answer 503 with
//! `Retry-After` and the replicas recover by themselves; a webhook set through one replica
//! applies on another within a second; a bad `DATABASE_CONNECTION_URI` stops the start with the
//! variable named and the password hidden.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{API_KEY, Receiver, Schema, Server, seed_event, service_env, unique};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

/// The outbox's lease in these tests: a killed replica's work is taken over this long after.
const LEASE: &str = "2s";

/// Starts `n` replicas on `url`'s database, schema `schema`, with `env` on top.
async fn replicas(n: usize, url: &str, schema: &str, env: &[(&str, &str)]) -> Vec<Server> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut vars = vec![
            ("DATABASE_CONNECTION_URI", url),
            ("OUTBOX_SCHEMA", schema),
            ("OUTBOX_LEASE", LEASE),
        ];
        vars.extend_from_slice(env);
        out.push(Server::start(&format!("replica-{i}"), &vars).await);
    }
    out
}

/// Posts one MESSAGES_UPSERT to `instance` on `server`: its id when acknowledged (202), the status
/// otherwise (and the `Retry-After` header's value).
async fn post_one(server: &Server, instance: &str) -> Result<String, (u16, Option<String>)> {
    let response = server
        .client
        .post(server.url(&format!("/events/{instance}")))
        .header("apikey", API_KEY)
        .json(&seed_event("MESSAGES_UPSERT"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let Ok(response) = response else {
        return Err((0, None));
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 202 {
        Ok(body["ids"][0].as_str().unwrap().to_owned())
    } else {
        Err((status, retry_after))
    }
}

/// What one consumer saw: (event id, sequence), in arrival order.
type Seen = Arc<Mutex<Vec<(String, u64)>>>;

fn id_and_sequence(payload: &[u8]) -> (String, u64) {
    let body: Value = serde_json::from_slice(payload).unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["sequence"].as_u64().unwrap(),
    )
}

fn webhook_seen(receiver: &Receiver) -> Vec<(String, u64)> {
    receiver
        .hits()
        .iter()
        .filter(|h| h.body["event"] == "MESSAGES_UPSERT")
        .map(|h| id_and_sequence(h.raw.as_bytes()))
        .collect()
}

/// Waits until `seen()` holds every id of `acked` (or `within` passed); the ids still missing.
async fn wait_all(seen: impl Fn() -> Vec<(String, u64)>, acked: &HashSet<String>, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let got: HashSet<String> = seen().into_iter().map(|(id, _)| id).collect();
        let missing = acked.iter().filter(|id| !got.contains(*id)).count();
        if missing == 0 || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every id at most once, and in increasing sequence order.
fn assert_once_in_order(channel: &str, seen: &[(String, u64)]) {
    let mut ids = HashSet::new();
    for (id, _) in seen {
        assert!(ids.insert(id.clone()), "{channel}: {id} arrived twice");
    }
    let sequences: Vec<u64> = seen.iter().map(|(_, s)| *s).collect();
    assert!(
        sequences.is_sorted(),
        "{channel}: events out of sequence order: {sequences:?}"
    );
}

/// First arrivals only, in arrival order: their sequences must still grow.
fn assert_first_arrivals_in_order(channel: &str, seen: &[(String, u64)]) {
    let mut ids = HashSet::new();
    let first: Vec<u64> = seen
        .iter()
        .filter(|(id, _)| ids.insert(id.clone()))
        .map(|(_, s)| *s)
        .collect();
    assert!(
        first.is_sorted(),
        "{channel}: first arrivals out of order: {first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_deliver_every_event_once_in_order_to_webhook_rabbitmq_and_nats() {
    let (Some(pg), Some(amqp), Some(nats)) = (
        service_env("EVOLUTION_TEST_POSTGRES"),
        service_env("EVOLUTION_TEST_RABBITMQ_URI"),
        service_env("EVOLUTION_TEST_NATS_URL"),
    ) else {
        return;
    };
    let tag = unique();
    let schema = Schema::new(&pg, &format!("replicas_{tag}"));
    let instance = format!("replicas-{tag}");
    let exchange = format!("evolution-replicas-{tag}");
    let nats_prefix = format!("evoreplicas{tag}");
    let receiver = Receiver::start().await;
    let rabbitmq: Seen = Arc::default();
    let sink = Arc::clone(&rabbitmq);
    let _amqp = common::amqp_consumer(&amqp, &exchange, &format!("evolution.{instance}.*"), move |d| {
        sink.lock().unwrap().push(id_and_sequence(&d.data));
    })
    .await;
    let nats_client = async_nats::connect(&nats).await.unwrap();
    let mut subscriber = nats_client
        .subscribe(format!("{nats_prefix}.{instance}.>"))
        .await
        .unwrap();
    let nats_seen: Seen = Arc::default();
    let sink = Arc::clone(&nats_seen);
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            sink.lock().unwrap().push(id_and_sequence(&message.payload));
        }
    });
    let servers = replicas(
        3,
        &pg,
        &schema.name,
        &[
            ("RABBITMQ_ENABLED", "true"),
            ("RABBITMQ_URI", &amqp),
            ("RABBITMQ_EXCHANGE_NAME", &exchange),
            ("RABBITMQ_QUEUE_TYPE", "classic"),
            ("NATS_ENABLED", "true"),
            ("NATS_URI", &nats),
            ("NATS_PREFIX_KEY", &nats_prefix),
        ],
    )
    .await;
    let events = json!(["MESSAGES_UPSERT"]);
    let (status, body) = servers[0]
        .call(
            "POST",
            "/instance/create",
            Some(API_KEY),
            Some(json!({
                "instanceName": instance,
                "webhook": {"enabled": true, "url": receiver.url("/hook"), "events": events},
                "rabbitmq": {"enabled": true, "events": events},
                "nats": {"enabled": true, "events": events},
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // The other replicas hear of the instance through NOTIFY.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut acked = HashSet::new();
    for round in 0..150 {
        let server = &servers[round % 3];
        acked.insert(post_one(server, &instance).await.unwrap());
    }
    let within = Duration::from_secs(60);
    assert_eq!(
        wait_all(|| webhook_seen(&receiver), &acked, within).await,
        0,
        "webhook"
    );
    assert_eq!(
        wait_all(|| rabbitmq.lock().unwrap().clone(), &acked, within).await,
        0,
        "rabbitmq"
    );
    assert_eq!(
        wait_all(|| nats_seen.lock().unwrap().clone(), &acked, within).await,
        0,
        "nats"
    );
    // Nothing more arrives late.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_once_in_order("webhook", &webhook_seen(&receiver));
    assert_once_in_order("rabbitmq", &rabbitmq.lock().unwrap());
    assert_once_in_order("nats", &nats_seen.lock().unwrap());
    // One sequence per event across the replicas, with no gap (the instance's first events may be
    // lifecycle events this webhook does not subscribe to).
    let mut sequences: Vec<u64> = webhook_seen(&receiver).iter().map(|(_, s)| *s).collect();
    sequences.sort_unstable();
    let first = sequences[0];
    assert_eq!(
        sequences,
        (first..first + 150).collect::<Vec<u64>>(),
        "gap-free sequences"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_loses_no_acknowledged_event() {
    let Some(pg) = service_env("EVOLUTION_TEST_POSTGRES") else {
        return;
    };
    let tag = unique();
    let schema = Schema::new(&pg, &format!("replicas_{tag}"));
    let instance = format!("kill-{tag}");
    let receiver = Receiver::start().await;
    let mut servers = replicas(3, &pg, &schema.name, &[]).await;
    common::create_instance(
        &servers[0],
        &instance,
        json!({"webhook": {"enabled": true, "url": receiver.url("/hook"), "events": ["MESSAGES_UPSERT"]}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut acked = HashSet::new();
    let mut killed = false;
    for round in 0..300 {
        if round == 120 {
            servers[1].kill9();
            killed = true;
        }
        let i = round % 3;
        if killed && i == 1 {
            continue;
        }
        if let Ok(id) = post_one(&servers[i], &instance).await {
            acked.insert(id);
        }
    }
    assert!(
        acked.len() >= 200,
        "most posts were acknowledged ({})",
        acked.len()
    );
    let missing = wait_all(|| webhook_seen(&receiver), &acked, Duration::from_secs(60)).await;
    let seen = webhook_seen(&receiver);
    let distinct: HashSet<&String> = seen.iter().map(|(id, _)| id).collect();
    eprintln!(
        "acknowledged {}, received {} ({} duplicates)",
        acked.len(),
        seen.len(),
        seen.len() - distinct.len()
    );
    assert_eq!(missing, 0, "acknowledged events lost with the killed replica");
    assert_first_arrivals_in_order("webhook", &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_set_through_one_replica_applies_on_another_within_a_second() {
    let Some(pg) = service_env("EVOLUTION_TEST_POSTGRES") else {
        return;
    };
    let tag = unique();
    let schema = Schema::new(&pg, &format!("replicas_{tag}"));
    let instance = format!("set-{tag}");
    let receiver = Receiver::start().await;
    let servers = replicas(2, &pg, &schema.name, &[]).await;
    common::create_instance(&servers[0], &instance, json!({})).await;
    let (status, body) = servers[0]
        .call(
            "POST",
            &format!("/webhook/set/{instance}"),
            Some(API_KEY),
            Some(json!({"webhook": {"enabled": true, "url": receiver.url("/hook"), "events": ["MESSAGES_UPSERT"]}})),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let set_at = Instant::now();
    // Posted to the other replica as soon as its cache has the change; it must within 1 s.
    let id = loop {
        let found = servers[1]
            .call("GET", &format!("/webhook/find/{instance}"), Some(API_KEY), None)
            .await;
        if found.1["enabled"] == true {
            break post_one(&servers[1], &instance).await.unwrap();
        }
        assert!(
            set_at.elapsed() < Duration::from_secs(1),
            "replica B still did not see the webhook set through A after 1 s: {}",
            found.1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "replica B saw the change {:?} after it was made",
        set_at.elapsed()
    );
    let hits = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].body["id"], id.as_str());
}

/// A PostgreSQL cluster of the test's own (initdb into a temporary directory, a free port), so
/// that it can be stopped and started without touching the shared server.
struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// As whom to run PostgreSQL (it refuses to run as root).
    user: Option<&'static str>,
}

impl PrivatePostgres {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries under /usr/lib/postgresql (Debian's postgresql package)")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("initdb under /usr/lib/postgresql/*/bin");
        let dir = common::temp_dir("private-postgres");
        let user = is_root().then_some("postgres");
        if let Some(user) = user {
            assert!(
                Command::new("chown")
                    .args(["-R", user])
                    .arg(&dir)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let port = common::free_port();
        let this = Self { bin, dir, port, user };
        let data = this.dir.join("data");
        this.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        this.pg_ctl("start");
        this
    }

    fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let status = match self.user {
            Some(user) => Command::new("runuser")
                .args(["-u", user, "--"])
                .arg(&path)
                .args(args)
                .stdout(std::process::Stdio::null())
                .status(),
            None => Command::new(&path)
                .args(args)
                .stdout(std::process::Stdio::null())
                .status(),
        }
        .unwrap();
        assert!(status.success(), "{program} {args:?} failed");
    }

    fn pg_ctl(&self, action: &str) {
        let data = self.dir.join("data");
        let log = self.dir.join("postgres.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let mut args = vec![
            action,
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-o",
            &options,
        ];
        if action == "stop" {
            args.extend(["-m", "immediate"]);
        }
        args.push("-w");
        self.run("pg_ctl", &args);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let path = self.bin.join("pg_ctl");
        let mut command = match self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        command
            .args(["stop", "-D", data.to_str().unwrap(), "-m", "immediate"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .ok();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_stream_gives_503_then_recovers_losing_nothing() {
    // The shared database must be there (CI fails without it), though this test brings its own.
    if service_env("EVOLUTION_TEST_POSTGRES").is_none() {
        return;
    }
    let postgres = PrivatePostgres::start();
    let url = postgres.url();
    let tag = unique();
    let instance = format!("restart-{tag}");
    let receiver = Receiver::start().await;
    let servers = replicas(2, &url, "evolution_events", &[]).await;
    common::create_instance(
        &servers[0],
        &instance,
        json!({"webhook": {"enabled": true, "url": receiver.url("/hook"), "events": ["MESSAGES_UPSERT"]}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let refusals: Arc<Mutex<HashMap<u16, usize>>> = Arc::default();
    let retry_after_missing = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let servers = Arc::new(servers);
    let producer = {
        let (acked, refusals, retry_after_missing, stop, servers, instance) = (
            Arc::clone(&acked),
            Arc::clone(&refusals),
            Arc::clone(&retry_after_missing),
            Arc::clone(&stop),
            Arc::clone(&servers),
            instance.clone(),
        );
        tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.load(Ordering::SeqCst) {
                match post_one(&servers[round % 2], &instance).await {
                    Ok(id) => {
                        acked.lock().unwrap().insert(id);
                    }
                    Err((status, retry_after)) => {
                        *refusals.lock().unwrap().entry(status).or_default() += 1;
                        if status == 503 && retry_after.is_none() {
                            retry_after_missing.store(true, Ordering::SeqCst);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                round += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.pg_ctl("stop");
    let down_at = acked.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = acked.lock().unwrap().len();
    postgres.pg_ctl("start");
    // The replicas recover by themselves: ingest is acknowledged again.
    let back = Instant::now();
    loop {
        let now = acked.lock().unwrap().len();
        if now > during + 20 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "ingest never recovered after PostgreSQL came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    let refusals = refusals.lock().unwrap().clone();
    eprintln!(
        "acknowledged {} ({down_at} before the stop, {during} after 8 s down); refusals {refusals:?}",
        acked.lock().unwrap().len()
    );
    assert!(
        during <= down_at + 2,
        "events were acknowledged while PostgreSQL was down"
    );
    assert!(
        refusals.get(&503).copied().unwrap_or(0) > 0,
        "ingest answered 503 while PostgreSQL was down: {refusals:?}"
    );
    assert_eq!(
        refusals.keys().filter(|s| **s != 503).count(),
        0,
        "only 503 while PostgreSQL was down: {refusals:?}"
    );
    assert!(
        !retry_after_missing.load(Ordering::SeqCst),
        "a 503 came without Retry-After"
    );
    let acked = acked.lock().unwrap().clone();
    let missing = wait_all(|| webhook_seen(&receiver), &acked, Duration::from_secs(60)).await;
    assert_eq!(
        missing, 0,
        "acknowledged events lost across the PostgreSQL restart"
    );
}

#[tokio::test]
async fn a_bad_database_uri_is_a_clear_start_up_error_without_the_password() {
    let dir = common::temp_dir("bad-uri");
    for (uri, expect) in [
        (
            "postgresql://evo:s3cret-pw@127.0.0.1:1/evolution",
            "could not connect to PostgreSQL at postgres://evo@127.0.0.1:1/evolution",
        ),
        (
            "postgresql://evo:s3cret-pw@[::1/evolution",
            "not a valid PostgreSQL URI",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_evolution-server"))
            .env_clear()
            .env("SERVER_DATA_DIR", &dir)
            .env("SERVER_PORT", common::free_port().to_string())
            .env("AUTHENTICATION_API_KEY", API_KEY)
            .env("DATABASE_CONNECTION_URI", uri)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "started with {uri}: {text}");
        assert!(
            text.contains("DATABASE_CONNECTION_URI"),
            "the variable is not named: {text}"
        );
        assert!(text.contains(expect), "expected `{expect}` in: {text}");
        assert!(!text.contains("s3cret-pw"), "the password leaked: {text}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
