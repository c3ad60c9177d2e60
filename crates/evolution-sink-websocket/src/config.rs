//! [`WebsocketConfig`]: the Socket.IO endpoint's settings.

use std::net::IpAddr;
use std::time::Duration;

/// The Socket.IO endpoint's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebsocketConfig {
    /// `WEBSOCKET_ALLOWED_HOSTS`: peer addresses that may connect without a key (and then see
    /// every instance). IPv4-mapped IPv6 addresses match their IPv4 form.
    pub allowed_hosts: Vec<IpAddr>,
    /// The HTTP path of the endpoint (`/socket.io`, what every Socket.IO client uses by default).
    pub path: String,
    /// Packets that may wait in one socket's send buffer; a socket whose buffer is full misses
    /// the events emitted meanwhile (counted, see [`WebsocketSink::missed`](crate::WebsocketSink::missed)).
    pub max_buffer_size: usize,
    /// Engine.IO ping interval.
    pub ping_interval: Duration,
    /// Engine.IO ping timeout: a client that does not answer a ping within it is disconnected.
    pub ping_timeout: Duration,
    /// How long a client has to connect to a namespace after the Engine.IO handshake.
    pub connect_timeout: Duration,
    /// `WEBSOCKET_REPLAY_MAX`: at most this many missed events are replayed to a client that
    /// connects with `lastEventId` (0: no replay). Kept under `max_buffer_size`.
    pub replay_limit: usize,
    /// `CACHE_REDIS_*`: share every emission with the other server replicas through Redis, so
    /// that a client connected to any replica receives what any replica emits. `None` (the
    /// default): this server's own clients only. Needs the `redis` feature and
    /// [`WebsocketSink::connect`](crate::WebsocketSink::connect).
    pub redis: Option<RedisConfig>,
}

impl Default for WebsocketConfig {
    /// Evolution API's allowed hosts (`127.0.0.1`, `::1`, `::ffff:127.0.0.1`), path `/socket.io`,
    /// 1024 buffered packets per socket, Socket.IO's default timings (ping every 25 s, 20 s to
    /// answer, 45 s to connect), replay of up to 500 missed events.
    fn default() -> Self {
        Self {
            allowed_hosts: parse_allowed_hosts(DEFAULT_ALLOWED_HOSTS).unwrap_or_default(),
            path: "/socket.io".to_owned(),
            max_buffer_size: 1024,
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(45),
            replay_limit: DEFAULT_REPLAY_LIMIT,
            redis: None,
        }
    }
}

/// Where the replicas meet: a Redis server, and the prefix of the Pub/Sub channels this
/// deployment uses on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `CACHE_REDIS_URI`.
    pub url: RedisUrl,
    /// `CACHE_REDIS_PREFIX_KEY` (Evolution API's default `evolution`): the adapter's channels are
    /// `{prefix}:socket.io-request#…` and `{prefix}:socket.io-response#…`, so two deployments that
    /// share one Redis (Pub/Sub channels are not per database) never see each other's events.
    pub prefix: String,
    /// How long connecting to Redis (at start) and each command may take.
    pub timeout: Duration,
}

impl RedisConfig {
    /// `url` with Evolution API's prefix `evolution` and a 5 s timeout.
    #[must_use]
    pub fn new(url: RedisUrl) -> Self {
        Self {
            url,
            prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            timeout: Duration::from_secs(5),
        }
    }

    /// The prefix of the adapter's Pub/Sub channels: `{prefix}:socket.io`.
    #[must_use]
    pub fn channel_prefix(&self) -> String {
        format!("{}:socket.io", self.prefix)
    }
}

/// Evolution API's default `CACHE_REDIS_PREFIX_KEY`.
pub const DEFAULT_REDIS_PREFIX: &str = "evolution";

/// Checks a `CACHE_REDIS_PREFIX_KEY`: 1 to 64 characters, none of them whitespace, control
/// characters or `#` (the adapter's separator in channel names).
///
/// # Errors
/// What is wrong with it and what to write instead.
pub fn check_redis_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.chars().count() > 64 {
        return Err(format!(
            "`{prefix}` must be 1 to 64 characters (Evolution API's default is `{DEFAULT_REDIS_PREFIX}`)"
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '#')
    {
        return Err(format!(
            "`{prefix}` contains {c:?}: use letters, digits and punctuation other than `#` (e.g. `evolution`)"
        ));
    }
    Ok(())
}

/// A `redis://` URL (`CACHE_REDIS_URI`), which may carry a password: its `Debug` and
/// [`RedisUrl::redacted`] hide the user and password, and no error repeats it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    url: url::Url,
}

impl RedisUrl {
    /// Parses `redis://[[user]:password@]host[:port][/db]` (Evolution API's form, e.g.
    /// `redis://127.0.0.1:6379/0` or `redis://:secret@redis:6379/6`). The database number does not
    /// matter to Pub/Sub (channels are server-wide), but must be a number when given.
    ///
    /// # Errors
    /// What is wrong, never containing the password.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let url = url::Url::parse(raw).map_err(|e| {
            format!("not a URL ({e}): write it as redis://[:password@]host[:port][/db], e.g. redis://127.0.0.1:6379/0")
        })?;
        match url.scheme() {
            "redis" => {}
            "rediss" => {
                return Err("rediss:// (TLS) is not supported by this build: use redis:// (a private network, or                             a TLS tunnel such as stunnel in front of Redis)"
                    .to_owned());
            }
            other => {
                return Err(format!(
                    "the `{other}` scheme is not Redis: write it as redis://[:password@]host[:port][/db], e.g.                      redis://127.0.0.1:6379/0"
                ));
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(
                "no host: write it as redis://[:password@]host[:port][/db], e.g. redis://127.0.0.1:6379/0"
                    .to_owned(),
            );
        }
        let db = url.path().trim_matches('/');
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err(format!(
                "`/{db}` is not a database number: end the URL with /0, /1, … or nothing"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(
                "options after `?` or `#` are not supported: write redis://[:password@]host[:port][/db]"
                    .to_owned(),
            );
        }
        Ok(Self { url })
    }

    /// The URL as given (with its password): only for the Redis client.
    #[must_use]
    pub fn expose(&self) -> &str {
        self.url.as_str()
    }

    /// The password, if any (to scrub it from foreign error messages).
    #[must_use]
    pub fn password(&self) -> Option<&str> {
        self.url.password().filter(|p| !p.is_empty())
    }

    /// The URL with its user and password replaced by `***` (safe to log).
    #[must_use]
    pub fn redacted(&self) -> String {
        let mut shown = self.url.clone();
        if !shown.username().is_empty() || shown.password().is_some() {
            let _ignored = shown.set_username("***");
            let _ignored = shown.set_password(None);
        }
        shown.into()
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RedisUrl").field(&self.redacted()).finish()
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Default [`WebsocketConfig::replay_limit`].
pub const DEFAULT_REPLAY_LIMIT: usize = 500;

/// Evolution API's default `WEBSOCKET_ALLOWED_HOSTS`.
pub const DEFAULT_ALLOWED_HOSTS: &str = "127.0.0.1,::1,::ffff:127.0.0.1";

/// Parses `WEBSOCKET_ALLOWED_HOSTS`: comma-separated IP addresses (blank = none).
///
/// # Errors
/// The first entry that is not an IP address, with what to write instead (`*` is refused: it is
/// not a wildcard in Evolution API either, and "everyone without a key" is not a setting).
pub fn parse_allowed_hosts(raw: &str) -> Result<Vec<IpAddr>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            entry
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .map(|ip| ip.to_canonical())
                .map_err(|_| {
                    format!(
                        "`{entry}` is not an IP address: list the addresses of the hosts that may connect \
                         without an apikey, comma-separated (e.g. 127.0.0.1,::1), or leave it empty for none"
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn allowed_hosts_are_ip_addresses() {
        let hosts = parse_allowed_hosts(DEFAULT_ALLOWED_HOSTS).unwrap();
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(hosts, vec![v4, "::1".parse().unwrap(), v4]);
        assert_eq!(parse_allowed_hosts(" ").unwrap(), Vec::<IpAddr>::new());
        assert_eq!(
            parse_allowed_hosts("[::1]").unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        let err = parse_allowed_hosts("127.0.0.1,*").unwrap_err();
        assert!(err.contains("`*` is not an IP address"), "{err}");
        assert!(parse_allowed_hosts("localhost").is_err());
    }

    #[test]
    fn redis_urls_keep_their_password_to_themselves() {
        let url = RedisUrl::parse("redis://:s3cret@redis.internal:6379/6").unwrap();
        assert_eq!(url.redacted(), "redis://***@redis.internal:6379/6");
        assert_eq!(
            format!("{url:?}"),
            "RedisUrl(\"redis://***@redis.internal:6379/6\")"
        );
        assert_eq!(url.password(), Some("s3cret"));
        assert_eq!(url.expose(), "redis://:s3cret@redis.internal:6379/6");
        let url = RedisUrl::parse("redis://default:pw@h/1").unwrap();
        assert_eq!(url.to_string(), "redis://***@h/1");
        let plain = RedisUrl::parse(" redis://127.0.0.1:6379/0 ").unwrap();
        assert_eq!(plain.redacted(), "redis://127.0.0.1:6379/0");
        assert_eq!(plain.password(), None);
        for (bad, why) in [
            ("redis//:pw@h:6379", "not a URL"),
            ("http://:pw@h:6379/0", "`http` scheme"),
            ("rediss://:pw@h:6379/0", "TLS"),
            ("redis://:pw@h:6379/zero", "not a database number"),
            ("redis://:pw@h:6379/0?protocol=resp2", "after `?`"),
            ("redis://:pw@:6379/0", ""),
        ] {
            let err = RedisUrl::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(
                !err.contains("pw"),
                "{bad}: the error repeats the password: {err}"
            );
        }
    }

    #[test]
    fn redis_prefixes() {
        assert_eq!(check_redis_prefix("evolution"), Ok(()));
        assert_eq!(check_redis_prefix("evolution_v2:prod"), Ok(()));
        assert!(check_redis_prefix("").is_err());
        assert!(check_redis_prefix("a#b").unwrap_err().contains("'#'"));
        assert!(check_redis_prefix("a b").is_err());
        let config = RedisConfig::new(RedisUrl::parse("redis://h").unwrap());
        assert_eq!(config.channel_prefix(), "evolution:socket.io");
    }
}
