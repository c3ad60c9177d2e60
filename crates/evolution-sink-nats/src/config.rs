//! [`NatsConfig`]: the settings of one [`NatsSink`](crate::NatsSink), and the server address
//! ([`NatsUrl`]), which may hold credentials and is never shown.

use std::fmt;
use std::time::Duration;

use async_nats::ServerAddr;
use evolution_events::Sensitive;

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
}
