//! Socket.IO across replicas: socketioxide's Redis adapter over a driver of our own, built on
//! `redis`'s [`ConnectionManager`] so that a Redis restart is survived (reconnection, then the
//! adapter's channels subscribed again) instead of leaving the adapter on a dead connection, as
//! the adapter's own `redis` driver (a plain multiplexed connection) would.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use evolution_events::{ErrorKind, SinkError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, PushInfo, PushKind};
use socketioxide::adapter::Emitter;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::classify::error;
use crate::config::RedisConfig;

/// The adapter of a sink that shares its emissions through Redis.
pub(crate) type RedisAdapter = CustomRedisAdapter<Emitter, RedisDriver>;

/// Messages of one channel that may wait for the adapter (each is one emission of another
/// replica); beyond that they are dropped and counted (Redis Pub/Sub is at most once anyway).
const STREAM_BUFFER: usize = 8192;

/// How often the connection is exercised, so that it is re-established (and the adapter's
/// channels subscribed again) soon after Redis comes back even when this replica emits nothing.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);

/// How long a replica holds its emissions after its connection to Redis came back: the other
/// replicas reconnect (and subscribe again) within about 2 s of Redis returning — the manager's
/// reconnection delays are capped at 2 s, and the keepalive pings every second — and an emission
/// published before they are subscribed again would reach none of their clients.
const SETTLE: Duration = Duration::from_secs(3);

type Handlers = HashMap<String, mpsc::Sender<ChanItem>>;

/// What the push handler and the driver share.
#[derive(Default)]
struct Shared {
    handlers: RwLock<Handlers>,
    /// Messages of other replicas dropped because the adapter did not keep up.
    dropped: AtomicU64,
    /// The connection dropped and has not subscribed again yet.
    down: AtomicBool,
    /// When the connection last subscribed again after dropping.
    back_at: Mutex<Option<Instant>>,
}

impl Shared {
    /// Why emissions must wait now: the connection is down, or came back less than [`SETTLE`]
    /// ago (the other replicas may not listen again yet).
    fn holding(&self) -> Option<String> {
        if self.down.load(Ordering::Acquire) {
            return Some("the connection to Redis dropped; it is being re-established".to_owned());
        }
        let back_at = *self.back_at.lock().unwrap_or_else(PoisonError::into_inner);
        let since = back_at?.elapsed();
        (since < SETTLE).then(|| {
            format!(
                "Redis came back {since:.1?} ago; emissions wait {SETTLE:?} for the other replicas to subscribe \
                 again, or their clients would miss them"
            )
        })
    }
}

/// socketioxide-redis [`Driver`] over one [`ConnectionManager`] (RESP3: messages arrive as push
/// frames on the same connection, and the manager subscribes again after it reconnects).
#[derive(Clone)]
pub(crate) struct RedisDriver {
    conn: ConnectionManager,
    shared: Arc<Shared>,
    /// Scrubbed from every error text (the client's errors are not known to carry it; cheap to
    /// be sure).
    password: Option<Arc<str>>,
}

impl fmt::Debug for RedisDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDriver")
            .field("dropped", &self.shared.dropped.load(Ordering::Relaxed))
            .field("down", &self.shared.down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// An error of the Redis client, with the password of the URL scrubbed from its text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RedisError(String);

impl RedisError {
    fn new(e: &redis::RedisError, password: Option<&str>) -> Self {
        Self(scrub(&e.to_string(), password))
    }
}

/// `text` without `password` in it.
fn scrub(text: &str, password: Option<&str>) -> String {
    match password {
        Some(p) if !p.is_empty() => text.replace(p, evolution_events::REDACTED),
        _ => text.to_owned(),
    }
}

impl RedisDriver {
    /// Connects (waiting at most `config.timeout`) and checks that the server answers.
    async fn connect(config: &RedisConfig) -> Result<Self, SinkError> {
        let unreachable = |why: String| {
            error(
                ErrorKind::Unavailable,
                format!(
                    "CACHE_REDIS_URI: cannot reach Redis at {}: {why}; start Redis, fix the URI, or set \
                     CACHE_REDIS_ENABLED=false to serve this replica's Socket.IO clients only",
                    config.url
                ),
            )
        };
        let password = config.url.password();
        let info = redis::IntoConnectionInfo::into_connection_info(config.url.expose())
            .map_err(|e| unreachable(scrub(&e.to_string(), password)))?;
        // RESP3: subscriptions share the connection with commands, as push frames.
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(|e| unreachable(scrub(&e.to_string(), password)))?;
        let shared: Arc<Shared> = Arc::default();
        let pushes = Arc::clone(&shared);
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_max_delay(Duration::from_secs(2))
            .set_push_sender(move |push: PushInfo| {
                route(push, &pushes);
                Ok::<(), Infallible>(())
            })
            .set_automatic_resubscription();
        let conn = tokio::time::timeout(
            config.timeout,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        .map_err(|_| unreachable(format!("no connection within {:?}", config.timeout)))?
        .map_err(|e| unreachable(scrub(&e.to_string(), password)))?;
        let driver = Self {
            conn,
            shared,
            password: password.map(Arc::from),
        };
        driver
            .ping(config.timeout)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(driver)
    }

    fn error(&self, e: &redis::RedisError) -> RedisError {
        RedisError::new(e, self.password.as_deref())
    }

    /// One `PING` round trip, at most `within`.
    async fn ping(&self, within: Duration) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(within, redis::cmd("PING").query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.error(&e)),
            Err(_) => Err(RedisError(format!("no answer to PING within {within:?}"))),
        }
    }
}

/// Hands a Pub/Sub message to the adapter stream of its channel, and follows the connection: a
/// `Disconnection` push marks it down; the first subscription confirmed after that (the manager
/// subscribes again as soon as it has reconnected) marks it back.
fn route(push: PushInfo, shared: &Shared) {
    match push.kind {
        PushKind::Message => {}
        PushKind::Disconnection => {
            shared.down.store(true, Ordering::Release);
            return;
        }
        PushKind::Subscribe => {
            if shared.down.swap(false, Ordering::AcqRel) {
                *shared.back_at.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                tracing::info!(
                    "subscribed to Redis again after the connection dropped; emissions wait {SETTLE:?} for the \
                     other replicas to do the same"
                );
            }
            return;
        }
        _ => return,
    }
    let mut data = push.data.into_iter();
    let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
        return;
    };
    let (Ok(channel), Ok(payload)) = (
        redis::from_redis_value::<String>(channel),
        redis::from_redis_value::<Vec<u8>>(payload),
    ) else {
        tracing::warn!("an unreadable Redis Pub/Sub message was ignored");
        return;
    };
    let handlers = shared.handlers.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(tx) = handlers.get(&channel)
        && let Err(e) = tx.try_send((channel, payload))
    {
        let total = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            total, error = %e,
            "a Socket.IO emission of another replica was dropped: the adapter is not keeping up"
        );
    }
}

impl Driver for RedisDriver {
    type Error = RedisError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        if let Some(why) = self.shared.holding() {
            return Err(RedisError(why));
        }
        let mut conn = self.conn.clone();
        conn.publish::<_, _, ()>(chan, val)
            .await
            .map_err(|e| self.error(&e))
    }

    async fn subscribe(&self, chan: String, size: usize) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        // Registered first: a message may follow the subscription's confirmation at once.
        self.shared
            .handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(chan.clone(), tx);
        let mut conn = self.conn.clone();
        conn.subscribe(chan.as_str()).await.map_err(|e| self.error(&e))?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.shared
            .handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&chan);
        let mut conn = self.conn.clone();
        conn.unsubscribe(chan.as_str()).await.map_err(|e| self.error(&e))
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let mut conn = self.conn.clone();
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(&e))?;
        Ok(count)
    }
}

/// The Redis side of a sink: the adapter's state for the Socket.IO builder, and what the sink
/// keeps to check Redis and to keep the connection alive.
pub(crate) struct Cluster {
    driver: RedisDriver,
    config: RedisConfig,
    keepalive: JoinHandle<()>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.config.url)
            .field("prefix", &self.config.prefix)
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to Redis and returns the adapter state to build the Socket.IO server with.
    pub(crate) async fn connect(
        config: &RedisConfig,
    ) -> Result<(Self, RedisAdapterCtr<RedisDriver>), SinkError> {
        let driver = RedisDriver::connect(config).await?;
        let adapter = RedisAdapterCtr::new_with_driver(
            driver.clone(),
            RedisAdapterConfig::new()
                .with_prefix(config.channel_prefix())
                .with_request_timeout(config.timeout)
                .with_stream_buffer(STREAM_BUFFER),
        );
        let keepalive = tokio::spawn(keepalive(driver.clone(), config.timeout));
        let cluster = Self {
            driver,
            config: config.clone(),
            keepalive,
        };
        Ok((cluster, adapter))
    }

    /// `Ok` while Redis answers a `PING` (within the timeout, 3 s at most: under the server's
    /// 5 s bound on a readiness check, so the answer says what is wrong).
    pub(crate) async fn health(&self) -> Result<(), SinkError> {
        let within = self.config.timeout.min(Duration::from_secs(3));
        let answered = if self.driver.shared.down.load(Ordering::Acquire) {
            Err(RedisError(
                "the connection dropped and is not re-established yet".to_owned(),
            ))
        } else {
            self.driver.ping(within).await
        };
        answered.map_err(|e| {
            error(
                ErrorKind::Unavailable,
                format!(
                    "Redis at {} (CACHE_REDIS_URI) does not answer: {}; emissions wait (and are retried) until \
                     it does, because clients of the other replicas would miss them",
                    self.config.url,
                    scrub(&e.to_string(), self.config.url.password())
                ),
            )
        })
    }

    /// A failed Redis operation as a sink error (retried: Redis may come back).
    pub(crate) fn unavailable(&self, what: &str, why: &dyn fmt::Display) -> SinkError {
        error(
            ErrorKind::Unavailable,
            format!(
                "{what} through Redis at {} failed: {}",
                self.config.url,
                scrub(&why.to_string(), self.config.url.password())
            ),
        )
    }

    /// Stops the keepalive.
    pub(crate) fn stop(&self) {
        self.keepalive.abort();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// Pings Redis every second: a failed command makes the manager reconnect (and subscribe again),
/// so this replica hears the others soon after Redis is back even if it emits nothing itself.
async fn keepalive(driver: RedisDriver, timeout: Duration) {
    let mut down = false;
    loop {
        tokio::time::sleep(KEEPALIVE_EVERY).await;
        match driver.ping(timeout).await {
            Ok(()) if down => {
                down = false;
                tracing::info!("Redis answers again: Socket.IO emissions reach the other replicas");
            }
            Ok(()) => {}
            Err(e) if !down => {
                down = true;
                tracing::warn!(
                    error = %e,
                    "Redis does not answer: Socket.IO emissions are retried until it does, and this replica's \
                     clients miss what other replicas emit meanwhile"
                );
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn passwords_are_scrubbed() {
        assert_eq!(
            scrub("auth failed for s3cret at h", Some("s3cret")),
            format!("auth failed for {} at h", evolution_events::REDACTED)
        );
        assert_eq!(scrub("refused", None), "refused");
        assert_eq!(scrub("refused", Some("")), "refused");
    }

    fn push(kind: PushKind, channel: &str) -> PushInfo {
        PushInfo {
            kind,
            data: vec![
                redis::Value::BulkString(channel.as_bytes().to_vec()),
                redis::Value::BulkString(b"payload".to_vec()),
            ],
        }
    }

    #[test]
    fn messages_reach_their_channel_and_overflow_is_counted() {
        let shared = Shared::default();
        let (tx, mut rx) = mpsc::channel(1);
        shared
            .handlers
            .write()
            .unwrap()
            .insert("p-request#/#".to_owned(), tx);
        route(push(PushKind::Message, "p-request#/#"), &shared);
        route(push(PushKind::Message, "p-request#/#"), &shared);
        route(push(PushKind::Message, "other"), &shared);
        route(push(PushKind::Subscribe, "p-request#/#"), &shared);
        assert_eq!(
            rx.try_recv().unwrap(),
            ("p-request#/#".to_owned(), b"payload".to_vec())
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(
            shared.dropped.load(Ordering::Relaxed),
            1,
            "the second message overflowed"
        );
        assert_eq!(
            shared.holding(),
            None,
            "a subscription without a drop before it changes nothing"
        );
    }

    #[test]
    fn emissions_wait_while_the_connection_is_down_and_settles() {
        let shared = Shared::default();
        route(
            PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
            &shared,
        );
        assert!(shared.holding().unwrap().contains("dropped"));
        route(push(PushKind::Subscribe, "p-request#/#"), &shared);
        assert!(shared.holding().unwrap().contains("came back"));
        *shared.back_at.lock().unwrap() = Some(Instant::now().checked_sub(SETTLE).unwrap());
        assert_eq!(shared.holding(), None);
    }
}
