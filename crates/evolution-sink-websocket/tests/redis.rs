//! Socket.IO across replicas: two sinks on socketioxide's Redis adapter, each serving its own
//! endpoint, share one real Redis server (a private `redis-server` on a free port, so that it can
//! be stopped and started again); real Socket.IO clients (node socket.io-client) connected to one
//! replica receive what the other emits. Needs `redis-server` on the PATH (Debian `redis-server`)
//! and `EVOLUTION_TEST_NODE_DIR` (`scripts/services up node`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Endpoint, GLOBAL_KEY, INSTANCE, INSTANCE_TOKEN, OTHER_TOKEN, Probe, deliveries, names, ready, send,
};
use evolution_events::naming::GLOBAL_EVENT;
use evolution_events::{ErrorKind, EventSink, Retry};
use evolution_sink_testkit::fixtures::closed_port;
use evolution_sink_websocket::{RedisConfig, RedisUrl, WebsocketConfig, WebsocketSink};

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(700);
const PASSWORD: &str = "redis-test-s3cret";

/// A private `redis-server` (no persistence) on a fixed port, with a password.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// `None` (a skip) outside CI when `redis-server` is not installed; a panic in CI.
    async fn start() -> Option<Self> {
        let mut redis = Self {
            port: closed_port(),
            child: None,
        };
        match redis.spawn().await {
            Ok(()) => Some(redis),
            Err(e) if matches!(std::env::var("CI").as_deref(), Ok("true" | "1")) => {
                panic!("redis-server is required in CI (apt-get install redis-server): {e}")
            }
            Err(e) => {
                eprintln!("skipped: cannot run redis-server (apt-get install redis-server): {e}");
                None
            }
        }
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--requirepass", PASSWORD])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.answers() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "redis-server did not answer on port {} within 10 s",
            self.port
        ))
    }

    /// Whether it answers `AUTH` + `PING`.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok();
        if stream
            .write_all(format!("AUTH {PASSWORD}\r\nPING\r\n").as_bytes())
            .is_err()
        {
            return false;
        }
        let mut reply = Vec::new();
        let mut buf = [0_u8; 64];
        while !String::from_utf8_lossy(&reply).contains("+PONG") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
        true
    }

    fn url(&self) -> RedisUrl {
        RedisUrl::parse(&format!("redis://:{PASSWORD}@127.0.0.1:{}/0", self.port)).unwrap()
    }

    /// Stops it (SIGKILL: every connection drops at once).
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

/// A replica's sink configuration on `redis`, with a prefix of its own per test.
fn replica(redis: &PrivateRedis, prefix: &str) -> WebsocketConfig {
    WebsocketConfig {
        redis: Some(RedisConfig {
            prefix: prefix.to_owned(),
            timeout: Duration::from_secs(2),
            ..RedisConfig::new(redis.url())
        }),
        ..WebsocketConfig::default()
    }
}

fn unique_prefix() -> String {
    format!("test-{}", uuid::Uuid::now_v7())
}

/// The events of one envelope a probe received (by the `id` of their payload).
async fn of_envelope(probe: &Probe, id: &str, expected: usize, within: Duration) -> Vec<serde_json::Value> {
    let id = id.to_owned();
    probe
        .events(expected, within, move |l| {
            l["raw"]
                .as_str()
                .is_some_and(|raw| raw.contains(&format!("\"id\":\"{id}\"")))
        })
        .await
}

#[tokio::test]
async fn emissions_of_one_replica_reach_the_clients_of_the_other_once() {
    if !ready() {
        return;
    }
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let prefix = unique_prefix();
    let a = Endpoint::connect(replica(&redis, &prefix)).await;
    let b = Endpoint::connect(replica(&redis, &prefix)).await;
    assert_eq!((a.sink.adapter(), b.sink.adapter()), ("redis", "redis"));
    a.sink.health_check().await.unwrap();
    // A third deployment on the same Redis, with another prefix, must not hear them.
    let stranger = Endpoint::connect(replica(&redis, &unique_prefix())).await;

    let own_ns = format!("/{INSTANCE}");
    let global = Probe::start(&a.url(), Some(GLOBAL_KEY), &["/", &own_ns])
        .await
        .unwrap();
    let own = Probe::start(&a.url(), Some(INSTANCE_TOKEN), &["/"])
        .await
        .unwrap();
    let other = Probe::start(&a.url(), Some(OTHER_TOKEN), &["/"]).await.unwrap();
    let strangers = Probe::start(&stranger.url(), Some(GLOBAL_KEY), &["/", &own_ns])
        .await
        .unwrap();
    global.connected(2).await;
    own.connected(1).await;
    other.connected(1).await;
    strangers.connected(2).await;

    // B has no client at all, and had no namespace /{instance} before this emission.
    let (envelope, batch) = deliveries(INSTANCE, true);
    send(&b, &batch).await;
    let id = envelope.id().to_string();
    let received = of_envelope(&global, &id, 3, WAIT).await;
    assert_eq!(
        names(&received),
        [
            format!("/ {GLOBAL_EVENT}"),
            format!("/ {INSTANCE}"),
            format!("{own_ns} messages.upsert")
        ],
        "the global key on A gets each emission of B once"
    );
    let received = of_envelope(&own, &id, 1, WAIT).await;
    assert_eq!(
        names(&received),
        [format!("/ {INSTANCE}")],
        "rooms hold across replicas"
    );

    // And A's own emissions still reach its clients once (not once more through Redis).
    let (envelope, batch) = deliveries(INSTANCE, true);
    send(&a, &batch).await;
    let mine = envelope.id().to_string();
    assert_eq!(of_envelope(&global, &mine, 3, WAIT).await.len(), 3);

    tokio::time::sleep(QUIET).await;
    assert_eq!(
        of_envelope(&global, &id, 3, Duration::ZERO).await.len(),
        3,
        "no duplicates"
    );
    assert_eq!(
        of_envelope(&global, &mine, 3, Duration::ZERO).await.len(),
        3,
        "no duplicates"
    );
    assert_eq!(
        of_envelope(&own, &id, 1, Duration::ZERO).await.len(),
        1,
        "no duplicates"
    );
    assert!(
        other.lines().iter().all(|l| l["type"] != "event"),
        "another instance's token received something: {:?}",
        other.lines()
    );
    assert!(
        strangers.lines().iter().all(|l| l["type"] != "event"),
        "a deployment with another CACHE_REDIS_PREFIX_KEY received something: {:?}",
        strangers.lines()
    );

    // Deleting the instance on B cuts off the connections its token opened on A.
    b.sink
        .disconnect_instance(&evolution_events::InstanceName::new(INSTANCE).unwrap())
        .await;
    let deadline = Instant::now() + WAIT;
    while !own.lines().iter().any(|l| l["type"] == "disconnect") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        own.lines().iter().any(|l| l["type"] == "disconnect"),
        "{:?}",
        own.lines()
    );
}

#[tokio::test]
async fn while_redis_is_down_health_and_emissions_fail_retryably_then_recover() {
    if !ready() {
        return;
    }
    let Some(mut redis) = PrivateRedis::start().await else {
        return;
    };
    let prefix = unique_prefix();
    let a = Endpoint::connect(replica(&redis, &prefix)).await;
    let b = Endpoint::connect(replica(&redis, &prefix)).await;
    let global = Probe::start(&a.url(), Some(GLOBAL_KEY), &["/"]).await.unwrap();
    global.connected(1).await;

    redis.stop();
    let down = b.sink.health_check().await.unwrap_err();
    assert_eq!(down.kind(), ErrorKind::Unavailable, "{down}");
    let text = down.to_string();
    assert!(
        text.contains("CACHE_REDIS_URI") && text.contains("***@127.0.0.1"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
    let (_, batch) = deliveries(INSTANCE, true);
    let report = b.sink.send(&batch).await.unwrap();
    let failures = report.failures();
    assert_eq!(
        failures.len(),
        batch.len(),
        "nothing may count as emitted: {failures:?}"
    );
    for (_, e) in failures {
        assert_eq!(
            (e.kind(), e.retry()),
            (ErrorKind::Unavailable, Retry::Backoff),
            "{e}"
        );
        assert!(!e.to_string().contains(PASSWORD), "{e}");
    }

    // Redis comes back (same port, empty): both replicas reconnect and subscribe again by
    // themselves, without an emission of their own.
    redis.spawn().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (a.sink.health_check().await.is_err() || b.sink.health_check().await.is_err())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.sink.health_check().await.unwrap();
    a.sink.health_check().await.unwrap();
    // A's subscriptions come back with its connection; until then B's emissions reach nobody on A.
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let (envelope, batch) = deliveries(INSTANCE, true);
        let id = envelope.id().to_string();
        if b.sink.send(&batch).await.is_ok_and(|r| r.is_success())
            && !of_envelope(&global, &id, 2, Duration::from_millis(500))
                .await
                .is_empty()
        {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "A's client never heard B again after Redis came back: {:?}",
            global.lines()
        );
    };
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        names(&of_envelope(&global, &id, 2, Duration::ZERO).await),
        [format!("/ {GLOBAL_EVENT}"), format!("/ {INSTANCE}")],
        "once each after the recovery"
    );
}

#[tokio::test]
async fn an_unreachable_redis_stops_the_start_and_keeps_the_password() {
    let port = closed_port(); // nothing listens there
    let url = RedisUrl::parse(&format!("redis://user:{PASSWORD}@127.0.0.1:{port}/0")).unwrap();
    let config = WebsocketConfig {
        redis: Some(RedisConfig {
            timeout: Duration::from_secs(2),
            ..RedisConfig::new(url)
        }),
        ..WebsocketConfig::default()
    };
    let started = Instant::now();
    let Err(e) = WebsocketSink::connect(config.clone(), common::authorize).await else {
        panic!("a sink started without its Redis");
    };
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("CACHE_REDIS_URI") && text.contains(&format!("redis://***@127.0.0.1:{port}/0")),
        "{text}"
    );
    assert!(!text.contains(PASSWORD) && !text.contains("user:"), "{text}");
    let Err(e) = WebsocketSink::new(config, common::authorize) else {
        panic!("new must refuse a Redis configuration");
    };
    assert!(e.to_string().contains("WebsocketSink::connect"), "{e}");
}
