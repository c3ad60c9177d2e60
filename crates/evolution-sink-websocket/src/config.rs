//! [`WebsocketConfig`]: the Socket.IO endpoint's settings, and the WebSocket channel's variables
//! ([`SinkConfig`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use evolution_events::{
    Channel, DispatchHints, ErrorKind, EventSink, GlobalSettings, SinkConfig, SinkError, Var, Vars,
};

use crate::classify::error;

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

impl SinkConfig for WebsocketConfig {
    const CHANNEL: Channel = Channel::Websocket;

    const VARS: &'static [Var] = &[
        Var::new("WEBSOCKET_GLOBAL_EVENTS", "false"),
        Var::new("WEBSOCKET_ALLOWED_HOSTS", DEFAULT_ALLOWED_HOSTS),
        Var::new("WEBSOCKET_REPLAY_MAX", "500"),
        // Evolution API's Redis: the websocket channel's meeting point across replicas (ADR 0015).
        // Its other CACHE_* variables (TTL, SAVE_INSTANCES, CACHE_LOCAL_*) are not ours.
        Var::new("CACHE_REDIS_ENABLED", "false"),
        Var::new("CACHE_REDIS_URI", ""),
        Var::new("CACHE_REDIS_PREFIX_KEY", DEFAULT_REDIS_PREFIX),
    ];

    const EVENT_TOGGLES: &'static [&'static str] = &["WEBSOCKET_EVENTS_"];

    /// `WEBSOCKET_ENABLED`, `WEBSOCKET_GLOBAL_EVENTS` and `WEBSOCKET_EVENTS_<KEY>`: without any
    /// toggle the global stream carries every event (Evolution API's behaviour); with some, only
    /// the events set to true.
    fn read_global(vars: &mut Vars, global: &mut GlobalSettings) {
        global.websocket.enabled = vars.switch(Self::CHANNEL);
        global.websocket.global_events = vars.bool("WEBSOCKET_GLOBAL_EVENTS");
        global.websocket.events = vars
            .has_events("WEBSOCKET_EVENTS_")
            .then(|| vars.events("WEBSOCKET_EVENTS_"));
    }

    /// `WEBSOCKET_ALLOWED_HOSTS`, `WEBSOCKET_REPLAY_MAX` and the Redis of `CACHE_REDIS_*` (read even
    /// while the channel is off); only with `WEBSOCKET_ENABLED=true`.
    fn from_vars(vars: &mut Vars, global: &GlobalSettings) -> Option<(Self, DispatchHints)> {
        let redis = cache_redis(vars, global);
        if !global.enabled(Self::CHANNEL) {
            return None;
        }
        let allowed_hosts = parse_allowed_hosts(vars.raw("WEBSOCKET_ALLOWED_HOSTS")).unwrap_or_else(|e| {
            vars.error(format!("WEBSOCKET_ALLOWED_HOSTS: {e}"));
            Vec::new()
        });
        let replay_limit: usize = if vars.raw("WEBSOCKET_REPLAY_MAX").trim().is_empty() {
            DEFAULT_REPLAY_LIMIT
        } else {
            vars.number("WEBSOCKET_REPLAY_MAX", "a whole number of events")
        };
        let buffer = Self::default().max_buffer_size;
        if replay_limit >= buffer {
            vars.error(format!(
                "WEBSOCKET_REPLAY_MAX must be under {buffer} (the per-socket buffer); 0 turns replay off"
            ));
        }
        let config = Self {
            allowed_hosts,
            replay_limit: replay_limit.min(buffer - 1),
            redis,
            ..Self::default()
        };
        Some((config, DispatchHints::default()))
    }

    /// Refused: the sink needs an [`Authorizer`](crate::Authorizer) (what an API key may see),
    /// which only the application knows; build it with
    /// [`WebsocketSink::connect`](crate::WebsocketSink::connect).
    fn into_sink(self) -> Result<Arc<dyn EventSink>, SinkError> {
        Err(error(
            ErrorKind::ConfigInvalid,
            "the websocket channel needs to know who may see what: build it with an authorizer \
             (WebsocketSink::connect; in evolution-sinks, ChannelPlan::build_websocket)",
        ))
    }
}

/// `CACHE_REDIS_ENABLED`, `CACHE_REDIS_URI`, `CACHE_REDIS_PREFIX_KEY` (Evolution API's names): the
/// Redis server through which the websocket channel reaches the clients of every replica (ADR
/// 0015). Read whenever `CACHE_REDIS_ENABLED=true`, so a malformed value is an error even while
/// the websocket channel is off; used only by it.
fn cache_redis(vars: &mut Vars, global: &GlobalSettings) -> Option<RedisConfig> {
    if !vars.bool("CACHE_REDIS_ENABLED") {
        return None;
    }
    if global.enabled(Channel::Websocket) && !cfg!(feature = "redis") {
        vars.error(
            "CACHE_REDIS_ENABLED=true: this build has no Redis support for the websocket channel (feature \
             `websocket-redis` of evolution-sinks); rebuild with it, or set CACHE_REDIS_ENABLED=false",
        );
    }
    let url = match vars.string("CACHE_REDIS_URI") {
        None => {
            vars.error(
                "CACHE_REDIS_ENABLED=true needs CACHE_REDIS_URI (e.g. redis://127.0.0.1:6379/0); set it, or set \
                 CACHE_REDIS_ENABLED=false",
            );
            None
        }
        // The value may hold a password: the error never repeats it.
        Some(raw) => RedisUrl::parse(&raw)
            .map_err(|e| vars.error(format!("CACHE_REDIS_URI: {e}")))
            .ok(),
    };
    let prefix = vars
        .string("CACHE_REDIS_PREFIX_KEY")
        .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned());
    if let Err(e) = check_redis_prefix(&prefix) {
        vars.error(format!("CACHE_REDIS_PREFIX_KEY: {e}"));
    }
    Some(RedisConfig {
        prefix,
        ..RedisConfig::new(url?)
    })
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

    fn enabled() -> GlobalSettings {
        let mut global = GlobalSettings::default();
        global.websocket.enabled = true;
        global
    }

    fn errors_about(v: &Vars, what: &str) -> String {
        v.errors()
            .iter()
            .filter(|e| e.contains(what))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn variables_are_read_when_enabled() {
        let mut v = Vars::default();
        assert!(WebsocketConfig::from_vars(&mut v, &GlobalSettings::default()).is_none());
        let mut v: Vars = [
            ("WEBSOCKET_ALLOWED_HOSTS", "127.0.0.1,*"),
            ("WEBSOCKET_REPLAY_MAX", "5000"),
        ]
        .into_iter()
        .collect();
        let _ = WebsocketConfig::from_vars(&mut v, &enabled());
        let text = errors_about(&v, "WEBSOCKET");
        for needle in [
            "WEBSOCKET_ALLOWED_HOSTS: `*` is not an IP address",
            "WEBSOCKET_REPLAY_MAX must be under 1024",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        let mut v: Vars = [
            ("WEBSOCKET_ALLOWED_HOSTS", "127.0.0.1, ::1"),
            ("WEBSOCKET_REPLAY_MAX", "500"),
        ]
        .into_iter()
        .collect();
        let (config, dispatch) = WebsocketConfig::from_vars(&mut v, &enabled()).unwrap();
        assert_eq!(errors_about(&v, "WEBSOCKET"), "");
        assert_eq!(config.replay_limit, 500);
        assert_eq!(dispatch, DispatchHints::default());
        let refused = config.into_sink().map(|_| ()).unwrap_err();
        assert!(refused.to_string().contains("build_websocket"), "{refused}");
    }

    /// The `CACHE_REDIS` problems, except that of a build without Redis support (see
    /// `a_build_without_redis_says_so`).
    fn redis_errors(v: &Vars) -> String {
        errors_about(v, "CACHE_REDIS")
            .lines()
            .filter(|e| !e.contains(NO_REDIS))
            .collect::<Vec<_>>()
            .join("\n")
    }

    const NO_REDIS: &str = "this build has no Redis support";

    #[test]
    fn a_build_without_redis_says_so() {
        let mut v: Vars = [
            ("CACHE_REDIS_ENABLED", "true"),
            ("CACHE_REDIS_URI", "redis://127.0.0.1:6379/0"),
        ]
        .into_iter()
        .collect();
        let _ = WebsocketConfig::from_vars(&mut v, &enabled());
        assert_eq!(
            errors_about(&v, "CACHE_REDIS").contains(NO_REDIS),
            !cfg!(feature = "redis"),
            "{:?}",
            v.errors()
        );
        let mut v: Vars = [
            ("CACHE_REDIS_ENABLED", "true"),
            ("CACHE_REDIS_URI", "redis://127.0.0.1:6379/0"),
        ]
        .into_iter()
        .collect();
        let _ = WebsocketConfig::from_vars(&mut v, &GlobalSettings::default());
        assert!(
            v.errors().is_empty(),
            "only a channel that is on needs it: {:?}",
            v.errors()
        );
    }

    #[test]
    fn cache_redis_is_read_with_evolution_names() {
        let mut g = enabled();
        let redis_of =
            |v: &mut Vars, g: &GlobalSettings| WebsocketConfig::from_vars(v, g).map(|(c, _)| c.redis);
        // Off (Evolution's default): the local adapter, whatever the other variables say.
        let mut v: Vars = [("CACHE_REDIS_URI", "not a url")].into_iter().collect();
        assert_eq!(redis_of(&mut v, &g), Some(None));
        assert_eq!(redis_errors(&v), "");

        let mut v: Vars = [
            ("CACHE_REDIS_ENABLED", "true"),
            ("CACHE_REDIS_URI", "redis://:hunter2@127.0.0.1:6379/6"),
        ]
        .into_iter()
        .collect();
        let redis = redis_of(&mut v, &g).flatten().unwrap();
        assert_eq!(redis_errors(&v), "");
        assert_eq!(
            redis.prefix, "evolution",
            "Evolution API's default CACHE_REDIS_PREFIX_KEY"
        );
        assert_eq!(redis.url.redacted(), "redis://***@127.0.0.1:6379/6");
        assert!(!format!("{redis:?}").contains("hunter2"), "{redis:?}");

        let mut v: Vars = [
            ("CACHE_REDIS_ENABLED", "yes"),
            ("CACHE_REDIS_URI", "redis://127.0.0.1:6379/0"),
            ("CACHE_REDIS_PREFIX_KEY", "evolution_v2"),
        ]
        .into_iter()
        .collect();
        assert_eq!(redis_of(&mut v, &g).flatten().unwrap().prefix, "evolution_v2");

        let mut v: Vars = [("CACHE_REDIS_ENABLED", "TRUE1")].into_iter().collect();
        let _ = redis_of(&mut v, &g);
        let text = redis_errors(&v);
        assert!(text.contains("CACHE_REDIS_ENABLED=`TRUE1`"), "{text}");
        let mut v: Vars = [("CACHE_REDIS_ENABLED", "true")].into_iter().collect();
        let _ = redis_of(&mut v, &g);
        let text = redis_errors(&v);
        assert!(
            text.contains("CACHE_REDIS_ENABLED=true needs CACHE_REDIS_URI"),
            "{text}"
        );
        let mut v: Vars = [
            ("CACHE_REDIS_ENABLED", "true"),
            ("CACHE_REDIS_URI", "rediss://user:hunter2@redis.example:6380/0"),
            ("CACHE_REDIS_PREFIX_KEY", "a#b"),
        ]
        .into_iter()
        .collect();
        let _ = redis_of(&mut v, &g);
        let text = redis_errors(&v);
        assert!(
            text.contains("CACHE_REDIS_URI: rediss:// (TLS) is not supported"),
            "{text}"
        );
        assert!(text.contains("CACHE_REDIS_PREFIX_KEY: `a#b`"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        // A malformed URI is refused even while the websocket channel is off.
        g.websocket.enabled = false;
        let mut v: Vars = [
            ("CACHE_REDIS_ENABLED", "true"),
            ("CACHE_REDIS_URI", "http://:hunter2@h:6379/0"),
        ]
        .into_iter()
        .collect();
        assert_eq!(redis_of(&mut v, &g), None);
        let text = redis_errors(&v);
        assert!(
            text.contains("CACHE_REDIS_URI: the `http` scheme is not Redis"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }
}
