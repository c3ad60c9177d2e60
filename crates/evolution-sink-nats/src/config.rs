//! [`NatsConfig`]: the settings of one [`NatsSink`](crate::NatsSink), and the server address
//! ([`NatsUrl`]), which may hold credentials and is never shown; the NATS channel's variables
//! ([`SinkConfig`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::ServerAddr;
use evolution_events::{
    Channel, DispatchHints, EventSink, GlobalBroker, GlobalSettings, NamingProfile, Sensitive, SinkConfig,
    SinkError, Var, Vars,
};

/// Why a NATS URL was refused. The message never repeats the URL (it may hold credentials).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a valid NATS URL ({reason}); expected nats://host:4222 (user:password@ or token@ before the host for \
     credentials; tls:// for TLS)"
)]
pub struct UrlError {
    reason: String,
}

/// The server's address: `nats://`, `tls://`, `ws://` or `wss://` (`host:port` alone means
/// `nats://`). It may hold a user and password or a token, so `Debug` and `Display` show only
/// [`label`](Self::label) (scheme, host, port).
#[derive(Clone, PartialEq, Eq)]
pub struct NatsUrl {
    raw: Sensitive,
    label: String,
    username: Option<Sensitive>,
    password: Option<Sensitive>,
}

impl NatsUrl {
    /// Parses one server address.
    ///
    /// # Errors
    /// [`UrlError`] saying what is wrong, without the URL itself.
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(UrlError {
                reason: "it is empty".to_owned(),
            });
        }
        if raw.contains(',') {
            return Err(UrlError {
                reason: "give one server; the client learns the rest of a cluster from it".to_owned(),
            });
        }
        let addr: ServerAddr = raw.parse().map_err(|_| UrlError {
            reason: "the scheme, host or port is malformed (schemes: nats, tls, ws, wss)".to_owned(),
        })?;
        if addr.host().is_empty() {
            return Err(UrlError {
                reason: "it has no host".to_owned(),
            });
        }
        let host = if addr.host().contains(':') && !addr.host().starts_with('[') {
            format!("[{}]", addr.host())
        } else {
            addr.host().to_owned()
        };
        Ok(Self {
            label: format!("{}://{host}:{}", addr.scheme(), addr.port()),
            username: addr.username().map(Sensitive::new),
            password: addr.password().map(Sensitive::new),
            raw: Sensitive::new(raw),
        })
    }

    /// `nats://host:port`: no credentials.
    #[must_use]
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The URL as given. Never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        self.raw.expose()
    }

    /// The secrets in the URL (as given, user or token, password), to scrub from client texts.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        let mut out = vec![self.raw.expose()];
        out.extend(self.username.as_ref().map(Sensitive::expose));
        out.extend(self.password.as_ref().map(Sensitive::expose));
        out
    }
}

impl fmt::Debug for NatsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NatsUrl").field(&self.label).finish()
    }
}

impl fmt::Display for NatsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// The JetStream stream the sink publishes into (`NATS_JETSTREAM=true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetStreamConfig {
    /// The stream's name (`NATS_JETSTREAM_STREAM`, default `EVOLUTION`). Created if missing
    /// (file storage, limits retention, nothing else set); an existing stream keeps its settings.
    pub stream: String,
    /// Subjects the stream must capture from the start (the server setup gives `{prefix}.>` in
    /// the `seed` profile). Subjects published to that none of the stream's subjects cover are
    /// added as `{first token}.>` when first seen (`{instance}.>` in the `evolution-v2` profile).
    pub subjects: Vec<String>,
    /// How long the stream remembers a `Nats-Msg-Id` to drop a duplicate (applied when the sink
    /// creates the stream; default 2 minutes, the server's default).
    pub duplicate_window: Duration,
    /// How long to wait for the stream's acknowledgement of one message (default 10 s).
    pub ack_timeout: Duration,
}

impl JetStreamConfig {
    /// The default stream name.
    pub const DEFAULT_STREAM: &'static str = "EVOLUTION";

    /// A stream named `stream` capturing `subjects`, with the defaults.
    #[must_use]
    pub fn new(stream: impl Into<String>, subjects: Vec<String>) -> Self {
        Self {
            stream: stream.into(),
            subjects,
            duplicate_window: Duration::from_secs(120),
            ack_timeout: Duration::from_secs(10),
        }
    }
}

/// Core NATS or JetStream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatsMode {
    /// Core publish: a batch counts as sent once the server answered the flush after it.
    Core,
    /// JetStream publish: a message counts as sent once the stream acknowledged it.
    JetStream(JetStreamConfig),
}

/// Settings of a [`NatsSink`](crate::NatsSink). Subjects come with each delivery.
///
/// ```
/// use evolution_sink_nats::{JetStreamConfig, NatsConfig, NatsMode, NatsUrl};
///
/// let url = NatsUrl::parse("nats://user:secret@127.0.0.1:4222")?;
/// let config = NatsConfig {
///     mode: NatsMode::JetStream(JetStreamConfig::new("EVOLUTION", vec!["evolution.>".into()])),
///     ..NatsConfig::new(url)
/// };
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), evolution_sink_nats::UrlError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// The server (`NATS_URI`).
    pub url: NatsUrl,
    /// Core or JetStream (`NATS_JETSTREAM`).
    pub mode: NatsMode,
    /// Deadline of the first connection (and of each attempt of the client's reconnections);
    /// default 5 s.
    pub connect_timeout: Duration,
    /// Deadline of the flush that ends a core batch, and of health checks; default 10 s.
    pub flush_timeout: Duration,
    /// First pause after a failed first connection (default 200 ms), doubling up to
    /// [`reconnect_max`](Self::reconnect_max); the client's own reconnections after a lost
    /// connection use the same schedule. Attempts never stop.
    pub reconnect_min: Duration,
    /// Longest pause between connection attempts (default 5 s).
    pub reconnect_max: Duration,
    /// Largest payload published, in bytes (default 1 MiB − 4 KiB: the server's default
    /// `max_payload` is 1 MiB, headers included). Larger items fail alone with `Rejected`.
    pub max_payload_bytes: usize,
}

impl NatsConfig {
    /// Default largest payload: 1 MiB − 4 KiB.
    pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024 - 4096;

    /// Core publish to `url`, with the defaults.
    #[must_use]
    pub fn new(url: NatsUrl) -> Self {
        Self {
            url,
            mode: NatsMode::Core,
            connect_timeout: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
            max_payload_bytes: Self::DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// Checks a JetStream stream name: 1 to 255 characters, none of whitespace, `.`, `*`, `>`, `/`,
/// `\`.
///
/// # Errors
/// What is wrong with it.
pub fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!(
            "a stream name is 1 to 255 characters; `{name}` has {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(format!(
            "a stream name cannot contain {c:?} (no whitespace, `.`, `*`, `>`, `/` or `\\`): `{name}`"
        ));
    }
    Ok(())
}

impl SinkConfig for NatsConfig {
    const CHANNEL: Channel = Channel::Nats;

    const VARS: &'static [Var] = &[
        Var::new("NATS_URI", ""),
        Var::new("NATS_GLOBAL_ENABLED", "false"),
        Var::new("NATS_PREFIX_KEY", "evolution"),
        Var::new("NATS_JETSTREAM", "false"),
        Var::new("NATS_JETSTREAM_STREAM", "EVOLUTION"),
    ];

    const EVENT_TOGGLES: &'static [&'static str] = &["NATS_EVENTS_"];

    /// `NATS_ENABLED`, `NATS_GLOBAL_ENABLED`, `NATS_EVENTS_<KEY>`, `NATS_PREFIX_KEY`.
    fn read_global(vars: &mut Vars, global: &mut GlobalSettings) {
        global.nats = GlobalBroker::from_vars(vars, Self::CHANNEL, "NATS_EVENTS_", "NATS_PREFIX_KEY");
    }

    /// `NATS_URI`, `NATS_JETSTREAM`, `NATS_JETSTREAM_STREAM`; only with `NATS_ENABLED=true`.
    ///
    /// In JetStream mode the stream captures `{NATS_PREFIX_KEY}.>` from the start whenever the
    /// Router can produce subjects under the prefix (every subject of the `seed` profile; global
    /// subjects of the `evolution-v2` profile). The sink adds `{first token}.>` for any other
    /// subject when it first publishes to it (`{instance}.>` in the `evolution-v2` profile).
    fn from_vars(vars: &mut Vars, global: &GlobalSettings) -> Option<(Self, DispatchHints)> {
        if !global.enabled(Self::CHANNEL) {
            return None;
        }
        let url = match vars.string("NATS_URI") {
            None => {
                vars.error(
                    "NATS_ENABLED=true needs NATS_URI (e.g. nats://host:4222); set it, or set NATS_ENABLED=false",
                );
                None
            }
            // The value may hold credentials: the error never repeats it.
            Some(raw) => NatsUrl::parse(&raw)
                .map_err(|e| vars.error(format!("NATS_URI: {e}")))
                .ok(),
        };
        let jetstream = vars.bool("NATS_JETSTREAM");
        let stream = vars
            .string("NATS_JETSTREAM_STREAM")
            .unwrap_or_else(|| JetStreamConfig::DEFAULT_STREAM.to_owned());
        if let Err(e) = check_stream_name(&stream) {
            vars.error(format!("NATS_JETSTREAM_STREAM: {e}"));
        }
        let prefix = global.nats.prefix.as_str();
        let prefixed = match global.naming {
            NamingProfile::Seed => true,
            NamingProfile::EvolutionV2 => global.nats.global_enabled,
        };
        let subjects = if prefixed && !prefix.is_empty() {
            vec![format!("{prefix}.>")]
        } else {
            Vec::new()
        };
        let url = url?;
        let mode = if jetstream {
            NatsMode::JetStream(JetStreamConfig::new(stream, subjects))
        } else {
            NatsMode::Core
        };
        Some((
            Self {
                mode,
                ..Self::new(url)
            },
            DispatchHints::default(),
        ))
    }

    fn into_sink(self) -> Result<Arc<dyn EventSink>, SinkError> {
        Ok(Arc::new(crate::NatsSink::new(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_hide_credentials() {
        let url = NatsUrl::parse("nats://user:hunter2@127.0.0.1:4223").unwrap();
        assert_eq!(url.label(), "nats://127.0.0.1:4223");
        assert!(!format!("{url:?} {url}").contains("hunter2"));
        assert!(url.secrets().contains(&"hunter2"));
        assert_eq!(
            NatsUrl::parse("localhost").unwrap().label(),
            "nats://localhost:4222"
        );
        assert_eq!(NatsUrl::parse("tls://h:4443").unwrap().label(), "tls://h:4443");
        let token = NatsUrl::parse("nats://s3cr3t-token@h").unwrap();
        assert!(token.secrets().contains(&"s3cr3t-token"));
        for bad in [
            "",
            "http://u:hunter2@h:4222",
            "nats://a:1,nats://b:2",
            "nats://u:hunter2@h:notaport",
        ] {
            let e = NatsUrl::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("nats://host:4222"), "{e}");
        }
    }

    #[test]
    fn stream_names() {
        assert!(check_stream_name("EVOLUTION").is_ok());
        assert!(check_stream_name("evolution_events-1").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b", &"x".repeat(256)] {
            assert!(check_stream_name(bad).is_err(), "{bad}");
        }
    }

    fn enabled() -> GlobalSettings {
        let mut global = GlobalSettings::default();
        global.nats.enabled = true;
        global
    }

    fn subjects(config: &NatsConfig) -> Option<&[String]> {
        match &config.mode {
            NatsMode::JetStream(js) => Some(&js.subjects),
            NatsMode::Core => None,
        }
    }

    #[test]
    fn read_only_when_enabled() {
        let mut v = Vars::default();
        assert!(NatsConfig::from_vars(&mut v, &GlobalSettings::default()).is_none());
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        let mut v: Vars = [
            ("NATS_URI", "nats://u:hunter2@127.0.0.1:4222"),
            ("NATS_JETSTREAM", "true"),
        ]
        .into_iter()
        .collect();
        let (config, dispatch) = NatsConfig::from_vars(&mut v, &enabled()).unwrap();
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        assert_eq!(dispatch, DispatchHints::default());
        assert!(!format!("{config:?}").contains("hunter2"), "{config:?}");
        let NatsMode::JetStream(js) = &config.mode else {
            panic!("not jetstream")
        };
        assert_eq!(
            (js.stream.as_str(), js.subjects.as_slice()),
            ("EVOLUTION", &["evolution.>".to_owned()][..])
        );
    }

    #[test]
    fn variables_are_checked_by_name_without_showing_secrets() {
        let mut v = Vars::default();
        assert!(NatsConfig::from_vars(&mut v, &enabled()).is_none());
        let text = v.errors().join("\n");
        assert!(text.contains("NATS_ENABLED=true needs NATS_URI"), "{text}");
        let mut v: Vars = [
            ("NATS_URI", "nats://u:hunter2@h:notaport"),
            ("NATS_JETSTREAM", "maybe"),
            ("NATS_JETSTREAM_STREAM", "a.b"),
        ]
        .into_iter()
        .collect();
        assert!(NatsConfig::from_vars(&mut v, &enabled()).is_none());
        let text = v.errors().join("\n");
        for needle in [
            "NATS_URI: not a valid NATS URL",
            "NATS_JETSTREAM=`maybe`",
            "NATS_JETSTREAM_STREAM",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn jetstream_subjects_follow_the_profile() {
        let mut g = enabled();
        g.naming = NamingProfile::EvolutionV2;
        let mut v: Vars = [("NATS_URI", "nats://127.0.0.1:4222"), ("NATS_JETSTREAM", "1")]
            .into_iter()
            .collect();
        let (config, _) = NatsConfig::from_vars(&mut v, &g).unwrap();
        assert_eq!(
            subjects(&config),
            Some(&[][..]),
            "instance subjects are added when first seen"
        );
        g.nats.global_enabled = true;
        let (config, _) = NatsConfig::from_vars(&mut v, &g).unwrap();
        assert!(format!("{config:?}").contains("evolution.>"));
    }
}
