//! The one error type that crosses the `EventSink` boundary.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::channel::Channel;

/// What went wrong, as far as the dispatcher cares.
///
/// Each kind comes with a default retry class ([`default_retry`](Self::default_retry)), listed
/// below; a sink overrides it where it knows better ([`SinkError::with_retry`]: a `Retry-After`
/// delay, a missing topic that will exist). Neither is a promise that the item is or is not sent
/// again: the dispatcher's retry policy decides, and may dead-letter a retryable error (a status it
/// is told not to retry, the last attempt).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backend cannot be reached (connect refused, DNS, broker down, HTTP 5xx). Default
    /// retry: `Backoff`.
    Unavailable,
    /// No answer in time. Default retry: `Backoff`.
    Timeout,
    /// The backend asked to slow down (HTTP 429, throttling). Default retry: `Backoff` (`After`
    /// when the sink knows the delay).
    RateLimited,
    /// The backend refused this item (HTTP 4xx, too large, invalid name). Default retry: `Never`.
    Rejected,
    /// Credentials were refused (HTTP 401/403, AMQP 403). Default retry: `Never`.
    Unauthorized,
    /// The settings cannot work (bad URL, missing credentials). Default retry: `Never`.
    ConfigInvalid,
    /// The sink was shut down. Default retry: `Backoff` (another process, or this one after a
    /// restart, sends it).
    Closed,
    /// Anything else (a bug, an unmapped error). Default retry: `Never`.
    Unexpected,
}

impl ErrorKind {
    /// The retry class a kind has unless the sink says otherwise.
    #[must_use]
    pub const fn default_retry(self) -> Retry {
        match self {
            Self::Unavailable | Self::Timeout | Self::RateLimited | Self::Closed => Retry::Backoff,
            Self::Rejected | Self::Unauthorized | Self::ConfigInvalid | Self::Unexpected => Retry::Never,
        }
    }

    /// A short lower-case name (`unavailable`, `rate-limited`, …).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::RateLimited => "rate-limited",
            Self::Rejected => "rejected",
            Self::Unauthorized => "unauthorized",
            Self::ConfigInvalid => "config-invalid",
            Self::Closed => "closed",
            Self::Unexpected => "unexpected",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether and when to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Permanent: dead-letter now.
    Never,
    /// Temporary: retry on the policy's schedule.
    Backoff,
    /// Temporary: retry no sooner than this (e.g. from `Retry-After`).
    After(Duration),
}

/// The messages of an error and its sources, joined with `: ` (a message already contained in
/// the previous one is skipped, as drivers often repeat their source); `""` for `None`.
#[must_use]
pub fn error_chain(first: Option<&dyn StdError>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&dyn StdError> = first;
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = e.source().map(|source| source as &dyn StdError);
    }
    parts.join(": ")
}

/// The result of an [`EventSink`](crate::EventSink) call: a [`SinkError`] unless said otherwise.
pub type Result<T, E = SinkError> = std::result::Result<T, E>;

/// A failed send, classified. Sinks build it; the dispatcher reads `kind`, `retry` and `status` to
/// decide between retry and dead letter. Its message never contains a secret.
#[derive(Debug)]
pub struct SinkError {
    kind: ErrorKind,
    retry: Retry,
    sink: Channel,
    message: Cow<'static, str>,
    status: Option<u16>,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl SinkError {
    /// A new error of `kind`, with the kind's default retry class.
    #[must_use]
    pub fn new(sink: Channel, kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            retry: kind.default_retry(),
            sink,
            message: message.into(),
            status: None,
            source: None,
        }
    }

    /// Overrides the retry class.
    #[must_use]
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Records the protocol status (an HTTP status code), which a retry policy may declare
    /// non-retryable.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Records the underlying error. Make sure its `Display` carries no secret.
    #[must_use]
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The retry class.
    #[must_use]
    pub fn retry(&self) -> Retry {
        self.retry
    }
    /// Which sink failed.
    #[must_use]
    pub fn sink(&self) -> Channel {
        self.sink
    }
    /// The message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The protocol status, if any.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        self.status
    }
    /// Whether the dispatcher may retry it.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        !matches!(self.retry, Retry::Never)
    }

    /// An equivalent error without the source (errors are not `Clone`; the source's text is kept
    /// in the message).
    #[must_use]
    pub fn duplicate(&self) -> Self {
        Self {
            kind: self.kind,
            retry: self.retry,
            sink: self.sink,
            message: match &self.source {
                Some(source) => format!("{}: {source}", self.message).into(),
                None => self.message.clone(),
            },
            status: self.status,
            source: None,
        }
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sink: {}: {}", self.sink, self.kind, self.message)?;
        if let Some(status) = self.status {
            write!(f, " (status {status})")?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for SinkError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chains_skip_repeated_messages() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "tcp connect error: refused")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("refused"));
        assert_eq!(error_chain(Some(&e)), "tcp connect error: refused");
        let e = Outer(std::io::Error::other("connection reset"));
        assert_eq!(
            error_chain(Some(&e)),
            "tcp connect error: refused: connection reset"
        );
        assert_eq!(error_chain(None), "");
    }

    #[test]
    fn kinds_carry_their_retry_class() {
        let e = SinkError::new(Channel::Webhook, ErrorKind::Unavailable, "connect refused").with_status(503);
        assert!(e.is_retryable());
        assert_eq!(
            e.to_string(),
            "webhook sink: unavailable: connect refused (status 503)"
        );
        let e = SinkError::new(Channel::Kafka, ErrorKind::Rejected, "too large");
        assert_eq!(e.retry(), Retry::Never);
        let e = e.with_retry(Retry::After(Duration::from_secs(3)));
        assert_eq!(e.retry(), Retry::After(Duration::from_secs(3)));
        let io = std::io::Error::other("boom");
        let e = SinkError::new(Channel::Nats, ErrorKind::Timeout, "publish").with_source(io);
        assert_eq!(e.duplicate().message(), "publish: boom");
    }
}
