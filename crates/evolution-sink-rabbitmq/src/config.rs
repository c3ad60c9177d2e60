//! [`RabbitmqConfig`]: the settings of one [`RabbitmqSink`](crate::RabbitmqSink), and the broker
//! address ([`AmqpUri`]), which may hold a password and is never shown; the RabbitMQ channel's
//! variables ([`SinkConfig`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use evolution_events::{
    Channel, DispatchHints, EventSink, GlobalBroker, GlobalSettings, Sensitive, SinkConfig, SinkError, Var,
    Vars,
};
use lapin::uri::{AMQPScheme, AMQPUri};

/// The type of the queues the sink declares (`RABBITMQ_QUEUE_TYPE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum QueueType {
    /// Replicated, durable Raft queues (`x-queue-type: quorum`): what Evolution API 2.3.6
    /// declares, and what RabbitMQ recommends for data that must not be lost. The default.
    #[default]
    Quorum,
    /// Classic queues (`x-queue-type: classic`): lighter, not replicated.
    Classic,
}

impl QueueType {
    /// `quorum` or `classic`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueType {
    type Err = UnknownQueueType;

    /// `quorum` or `classic`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "quorum" => Ok(Self::Quorum),
            "classic" => Ok(Self::Classic),
            _ => Err(UnknownQueueType(s.to_owned())),
        }
    }
}

/// A queue type that does not exist.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown queue type `{0}`: use `quorum` (the default) or `classic`")]
pub struct UnknownQueueType(pub String);

/// Why a RabbitMQ URI was refused. The message never repeats the URI (it may hold a password).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a valid AMQP URI ({reason}); expected amqp://user:password@host:5672/vhost (amqps:// for TLS, \
     `%2f` for the vhost `/`)"
)]
pub struct UriError {
    reason: String,
}

/// The broker's address: an `amqp://` or `amqps://` URI, parsed. It may hold a password, so
/// `Debug` and `Display` show only [`label`](Self::label) (scheme, host, port, vhost).
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUri {
    uri: AMQPUri,
    raw: Sensitive,
}

impl AmqpUri {
    /// Parses `amqp://user:password@host:port/vhost` (percent-encoded; `/%2f` is the vhost `/`,
    /// and so are no path and a bare `/`, as in Evolution API). Query parameters `frame_max`, `heartbeat`,
    /// `channel_max`, `connection_timeout` and `auth_mechanism` are accepted.
    ///
    /// # Errors
    /// [`UriError`] saying what is wrong, without the URI itself.
    pub fn parse(raw: &str) -> Result<Self, UriError> {
        let raw = raw.trim();
        let fail = |reason: String| UriError { reason };
        let parsed = url::Url::parse(raw).map_err(|e| fail(e.to_string()))?;
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(fail(format!(
                "the scheme is `{}`, not amqp or amqps",
                parsed.scheme()
            )));
        }
        let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
            return Err(fail("the URI has no host".to_owned()));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        // lapin's parser reports its input in some errors: never show them, only say which part.
        let mut uri = AMQPUri::from_str(raw).map_err(|_| {
            fail("the user name, password, vhost or a query parameter is malformed".to_owned())
        })?;
        // lapin takes the host from `Url::domain`, which is empty for an IP address (it would
        // then connect to `localhost`).
        uri.authority.host = host;
        // As Evolution API: no path and a bare `/` both mean the vhost `/` (the AMQP URI spec would
        // make `/` the vhost "", which RabbitMQ does not have).
        if uri.vhost.is_empty() {
            "/".clone_into(&mut uri.vhost);
        }
        Ok(Self {
            uri,
            raw: Sensitive::new(raw),
        })
    }

    /// `amqp://host:port/vhost`: no user, no password, no query.
    #[must_use]
    pub fn label(&self) -> String {
        let host = if self.uri.authority.host.contains(':') {
            format!("[{}]", self.uri.authority.host)
        } else {
            self.uri.authority.host.clone()
        };
        format!(
            "{}://{host}:{}/{}",
            self.uri.scheme,
            self.uri.authority.port,
            if self.uri.vhost == "/" {
                "%2f"
            } else {
                &self.uri.vhost
            }
        )
    }

    /// Whether the connection uses TLS (`amqps`).
    #[must_use]
    pub fn is_tls(&self) -> bool {
        self.uri.scheme == AMQPScheme::AMQPS
    }

    /// The vhost.
    #[must_use]
    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// The URI as given. Never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        self.raw.expose()
    }

    /// The secrets in the URI (as given, user name, password), to scrub from client messages.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        vec![self.raw.expose(), self.uri.authority.userinfo.password.as_str()]
    }

    pub(crate) fn lapin(&self) -> &AMQPUri {
        &self.uri
    }
}

impl fmt::Debug for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AmqpUri").field(&self.label()).finish()
    }
}

impl fmt::Display for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Settings of a [`RabbitmqSink`](crate::RabbitmqSink). Exchanges, routing keys and queues come
/// with each delivery.
///
/// ```
/// use evolution_sink_rabbitmq::{AmqpUri, QueueType, RabbitmqConfig};
///
/// let uri = AmqpUri::parse("amqp://guest:guest@127.0.0.1:5672/%2f")?;
/// let config = RabbitmqConfig { queue_type: QueueType::Classic, ..RabbitmqConfig::new(uri) };
/// assert_eq!(config.frame_max, 8192);
/// assert!(!format!("{config:?}").contains("guest:guest"));
/// # Ok::<(), evolution_sink_rabbitmq::UriError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RabbitmqConfig {
    /// The broker (`RABBITMQ_URI`).
    pub uri: AmqpUri,
    /// Largest frame size asked for, in bytes (`RABBITMQ_FRAME_MAX`, default 8192; RabbitMQ 4.1
    /// refuses less than 8192). 0 leaves it to the broker.
    pub frame_max: u32,
    /// Heartbeat interval asked for (default 30 s, as Evolution API).
    pub heartbeat: Duration,
    /// Type of the queues declared (`RABBITMQ_QUEUE_TYPE`, default quorum).
    pub queue_type: QueueType,
    /// Deadline of connecting (TCP, TLS, AMQP handshake, opening the channels); default 10 s.
    pub connect_timeout: Duration,
    /// First pause after a failed connection attempt (default 200 ms); it doubles after every
    /// further failure, up to [`reconnect_max`](Self::reconnect_max). Sends in the meantime fail
    /// fast with a retryable `Unavailable` (the deliveries wait in the outbox).
    pub reconnect_min: Duration,
    /// Longest pause between connection attempts (default 10 s). Attempts never stop.
    pub reconnect_max: Duration,
    /// Largest payload published, in bytes (default 16 MiB; RabbitMQ refuses more than its
    /// `max_message_size`, 128 MiB by default, by closing the channel). Larger items fail alone
    /// with `Rejected`.
    pub max_payload_bytes: usize,
}

impl RabbitmqConfig {
    /// Default `frame_max` (`RABBITMQ_FRAME_MAX`).
    pub const DEFAULT_FRAME_MAX: u32 = 8192;
    /// Default largest payload: 16 MiB.
    pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

    /// The defaults for a broker.
    #[must_use]
    pub fn new(uri: AmqpUri) -> Self {
        Self {
            uri,
            frame_max: Self::DEFAULT_FRAME_MAX,
            heartbeat: Duration::from_secs(30),
            queue_type: QueueType::Quorum,
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
            max_payload_bytes: Self::DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

impl SinkConfig for RabbitmqConfig {
    const CHANNEL: Channel = Channel::Rabbitmq;

    const VARS: &'static [Var] = &[
        Var::new("RABBITMQ_URI", ""),
        Var::new("RABBITMQ_EXCHANGE_NAME", "evolution"),
        Var::new("RABBITMQ_GLOBAL_ENABLED", "false"),
        Var::new("RABBITMQ_PREFIX_KEY", "evolution"),
        Var::new("RABBITMQ_FRAME_MAX", "8192"),
        Var::new("RABBITMQ_QUEUE_TYPE", "quorum"),
    ];

    const EVENT_TOGGLES: &'static [&'static str] = &["RABBITMQ_EVENTS_"];

    /// `RABBITMQ_ENABLED`, `RABBITMQ_GLOBAL_ENABLED`, `RABBITMQ_EVENTS_<KEY>`, `RABBITMQ_PREFIX_KEY`,
    /// `RABBITMQ_EXCHANGE_NAME`.
    fn read_global(vars: &mut Vars, global: &mut GlobalSettings) {
        global.rabbitmq =
            GlobalBroker::from_vars(vars, Self::CHANNEL, "RABBITMQ_EVENTS_", "RABBITMQ_PREFIX_KEY");
        global.rabbitmq_exchange = vars.raw("RABBITMQ_EXCHANGE_NAME").trim().to_owned();
    }

    /// `RABBITMQ_URI`, `RABBITMQ_FRAME_MAX`, `RABBITMQ_QUEUE_TYPE`; only with `RABBITMQ_ENABLED=true`.
    fn from_vars(vars: &mut Vars, global: &GlobalSettings) -> Option<(Self, DispatchHints)> {
        if !global.enabled(Self::CHANNEL) {
            return None;
        }
        let uri = match vars.string("RABBITMQ_URI") {
            None => {
                vars.error(
                    "RABBITMQ_ENABLED=true needs RABBITMQ_URI (e.g. amqp://user:password@host:5672/%2f); set it, or \
                     set RABBITMQ_ENABLED=false",
                );
                None
            }
            // The value may hold a password: the error never repeats it.
            Some(raw) => AmqpUri::parse(&raw)
                .map_err(|e| vars.error(format!("RABBITMQ_URI: {e}")))
                .ok(),
        };
        let frame_max = match vars.string("RABBITMQ_FRAME_MAX") {
            None => Self::DEFAULT_FRAME_MAX,
            Some(_) => {
                let frame_max: u32 = vars.number(
                    "RABBITMQ_FRAME_MAX",
                    "a frame size in bytes (8192 or more; 0 leaves it to the broker)",
                );
                if (1..4096).contains(&frame_max) {
                    vars.error(format!(
                        "RABBITMQ_FRAME_MAX={frame_max} is too small: AMQP needs at least 4096 (RabbitMQ 4.1: 8192), \
                         or 0 for the broker's choice"
                    ));
                }
                frame_max
            }
        };
        let queue_type = match vars.string("RABBITMQ_QUEUE_TYPE") {
            None => QueueType::default(),
            Some(raw) => raw.parse().unwrap_or_else(|e| {
                vars.error(format!("RABBITMQ_QUEUE_TYPE: {e}"));
                QueueType::default()
            }),
        };
        let config = Self {
            frame_max,
            queue_type,
            ..Self::new(uri?)
        };
        Some((config, DispatchHints::default()))
    }

    fn into_sink(self) -> Result<Arc<dyn EventSink>, SinkError> {
        Ok(Arc::new(crate::RabbitmqSink::new(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_never_show_the_password() {
        let uri = AmqpUri::parse("amqp://user:s3cr%40t@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(uri.lapin().authority.host, "127.0.0.1");
        assert_eq!(uri.lapin().authority.port, 5673);
        assert_eq!(uri.lapin().authority.userinfo.password, "s3cr@t");
        assert_eq!(uri.vhost(), "/");
        assert_eq!(uri.label(), "amqp://127.0.0.1:5673/%2f");
        assert!(!format!("{uri:?} {uri}").contains("s3cr"));
        assert!(!uri.is_tls());

        let uri = AmqpUri::parse("amqps://broker.example.com").unwrap();
        assert_eq!((uri.vhost(), uri.lapin().authority.port), ("/", 5671));
        assert!(uri.is_tls());
        let uri = AmqpUri::parse("amqp://h/prod").unwrap();
        assert_eq!(uri.vhost(), "prod");
        assert_eq!(AmqpUri::parse("amqp://h:5672/").unwrap().vhost(), "/");
        let uri = AmqpUri::parse("amqp://[::1]:5672/%2f").unwrap();
        assert_eq!(uri.label(), "amqp://[::1]:5672/%2f");

        for bad in [
            "",
            "localhost:5672",
            "http://u:hunter2@h/",
            "amqp://u:hunter2@h:5672/%2f?frame_max=x",
            "amqp:///vhost",
        ] {
            let e = AmqpUri::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("amqp://user:password@host"), "{e}");
        }
    }

    #[test]
    fn queue_types_parse() {
        assert_eq!("Quorum".parse::<QueueType>(), Ok(QueueType::Quorum));
        assert_eq!(" classic ".parse::<QueueType>(), Ok(QueueType::Classic));
        let e = "stream".parse::<QueueType>().unwrap_err();
        assert!(e.to_string().contains("quorum"), "{e}");
        assert_eq!(QueueType::default().to_string(), "quorum");
    }

    fn enabled() -> GlobalSettings {
        let mut global = GlobalSettings::default();
        global.rabbitmq.enabled = true;
        global
    }

    #[test]
    fn read_only_when_enabled() {
        let mut v = Vars::default();
        assert!(RabbitmqConfig::from_vars(&mut v, &GlobalSettings::default()).is_none());
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        let mut v: Vars = [
            ("RABBITMQ_URI", "amqp://u:hunter2@127.0.0.1:5672/%2f"),
            ("RABBITMQ_QUEUE_TYPE", "classic"),
        ]
        .into_iter()
        .collect();
        let (config, dispatch) = RabbitmqConfig::from_vars(&mut v, &enabled()).unwrap();
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        assert_eq!(config.queue_type, QueueType::Classic);
        assert_eq!(dispatch, DispatchHints::default());
        assert!(!format!("{config:?}").contains("hunter2"), "{config:?}");
    }

    #[test]
    fn variables_are_checked_by_name_without_showing_secrets() {
        let mut v = Vars::default();
        assert!(RabbitmqConfig::from_vars(&mut v, &enabled()).is_none());
        let text = v.errors().join("\n");
        assert!(
            text.contains("RABBITMQ_ENABLED=true needs RABBITMQ_URI"),
            "{text}"
        );
        let mut v: Vars = [
            ("RABBITMQ_URI", "http://u:hunter2@h/"),
            ("RABBITMQ_FRAME_MAX", "1024"),
            ("RABBITMQ_QUEUE_TYPE", "stream"),
        ]
        .into_iter()
        .collect();
        assert!(RabbitmqConfig::from_vars(&mut v, &enabled()).is_none());
        let text = v.errors().join("\n");
        for needle in [
            "RABBITMQ_URI: not a valid AMQP URI",
            "RABBITMQ_FRAME_MAX=1024",
            "RABBITMQ_QUEUE_TYPE: unknown queue type `stream`",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        assert!(!text.contains("hunter2"), "{text}");
    }
}
