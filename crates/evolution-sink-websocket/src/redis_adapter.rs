//! Socket.IO across replicas: socketioxide's Redis adapter over a driver of our own, built on
//! `redis`'s [`ConnectionManager`] so that a Redis restart is survived (reconnection, then the
//! adapter's channels subscribed again) instead of leaving the adapter on a dead connection, as
//! the adapter's own `redis` driver (a plain multiplexed connection) would.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

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

type Handlers = HashMap<String, mpsc::Sender<ChanItem>>;

/// socketioxide-redis [`Driver`] over one [`ConnectionManager`] (RESP3: messages arrive as push
/// frames on the same connection, and the manager subscribes again after it reconnects).
#[derive(Clone)]
pub(crate) struct RedisDriver {
    conn: ConnectionManager,
    handlers: Arc<RwLock<Handlers>>,
    dropped: Arc<AtomicU64>,
    /// Scrubbed from every error text (the client's errors are not known to carry it; cheap to
    /// be sure).
    password: Option<Arc<str>>,
}

impl fmt::Debug for RedisDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDriver")
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
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
        let handlers: Arc<RwLock<Handlers>> = Arc::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let pushes = Arc::clone(&handlers);
        let counter = Arc::clone(&dropped);
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_max_delay(Duration::from_secs(2))
            .set_push_sender(move |push: PushInfo| {
                route(push, &pushes, &counter);
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
            handlers,
            dropped,
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

/// Hands a Pub/Sub message to the adapter stream of its channel.
fn route(push: PushInfo, handlers: &RwLock<Handlers>, dropped: &AtomicU64) {
    if !matches!(push.kind, PushKind::Message) {
        return;
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
    let handlers = handlers.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(tx) = handlers.get(&channel)
        && let Err(e) = tx.try_send((channel, payload))
    {
        let total = dropped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            total, error = %e,
            "a Socket.IO emission of another replica was dropped: the adapter is not keeping up"
        );
    }
}

impl Driver for RedisDriver {
    type Error = RedisError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        let mut conn = self.conn.clone();
        conn.publish::<_, _, ()>(chan, val)
            .await
            .map_err(|e| self.error(&e))
    }

    async fn subscribe(&self, chan: String, size: usize) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        // Registered first: a message may follow the subscription's confirmation at once.
        self.handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(chan.clone(), tx);
        let mut conn = self.conn.clone();
        conn.subscribe(chan.as_str()).await.map_err(|e| self.error(&e))?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers
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
        self.driver.ping(within).await.map_err(|e| {
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

    #[test]
    fn messages_reach_their_channel_and_overflow_is_counted() {
        let handlers: RwLock<Handlers> = RwLock::default();
        let dropped = AtomicU64::new(0);
        let (tx, mut rx) = mpsc::channel(1);
        handlers.write().unwrap().insert("p-request#/#".to_owned(), tx);
        let message = |channel: &str| PushInfo {
            kind: PushKind::Message,
            data: vec![
                redis::Value::BulkString(channel.as_bytes().to_vec()),
                redis::Value::BulkString(b"payload".to_vec()),
            ],
        };
        route(message("p-request#/#"), &handlers, &dropped);
        route(message("p-request#/#"), &handlers, &dropped);
        route(message("other"), &handlers, &dropped);
        route(
            PushInfo {
                kind: PushKind::Subscribe,
                data: vec![],
            },
            &handlers,
            &dropped,
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            ("p-request#/#".to_owned(), b"payload".to_vec())
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(
            dropped.load(Ordering::Relaxed),
            1,
            "the second message overflowed"
        );
    }
}
