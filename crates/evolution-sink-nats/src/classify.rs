//! Classification of async-nats errors into [`SinkError`]s.
//!
//! As for RabbitMQ: a failure of the connection (refused, lost, timed out, credentials refused)
//! is always retried, the deliveries waiting in the outbox; a failure of one message that
//! retrying cannot fix (too large, invalid subject) is permanent.

use std::borrow::Cow;
use std::error::Error as StdError;

use async_nats::ConnectErrorKind;
use async_nats::client::{FlushErrorKind, PublishErrorKind};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{CreateStreamErrorKind, PublishErrorKind as JsPublishErrorKind};
use evolution_events::{Channel, ErrorKind, Retry, SinkError, error_chain, scrub};

/// A NATS [`SinkError`].
pub(crate) fn error(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> SinkError {
    SinkError::new(Channel::Nats, kind, message)
}

/// The kind, retry class and advice for a failed connection attempt.
pub(crate) fn connect_class(kind: &ConnectErrorKind) -> (ErrorKind, &'static str) {
    match kind {
        ConnectErrorKind::ServerParse => (ErrorKind::ConfigInvalid, "NATS_URI cannot be parsed"),
        ConnectErrorKind::Dns => (ErrorKind::Unavailable, "cannot resolve the host"),
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => (
            ErrorKind::Unauthorized,
            "the server refused the credentials; fix them in NATS_URI (deliveries wait meanwhile)",
        ),
        ConnectErrorKind::TimedOut => (ErrorKind::Timeout, "timed out"),
        ConnectErrorKind::Tls => (ErrorKind::ConfigInvalid, "the TLS handshake failed"),
        ConnectErrorKind::Io | ConnectErrorKind::MaxReconnects => (ErrorKind::Unavailable, "cannot connect"),
    }
}

/// A failed connection attempt: always retried.
pub(crate) fn connect_error(label: &str, e: &async_nats::ConnectError, secrets: &[&str]) -> SinkError {
    let (kind, what) = connect_class(&e.kind());
    error(
        kind,
        scrub(
            &format!("connect to {label}: {what} ({})", error_chain(Some(e))),
            secrets,
        ),
    )
    .with_retry(Retry::Backoff)
}

/// The kind and retry class of a failed core publish.
pub(crate) fn publish_class(kind: PublishErrorKind) -> (ErrorKind, Retry, &'static str) {
    match kind {
        PublishErrorKind::MaxPayloadExceeded => (
            ErrorKind::Rejected,
            Retry::Never,
            "the message is larger than the server's max_payload",
        ),
        PublishErrorKind::InvalidSubject => (ErrorKind::ConfigInvalid, Retry::Never, "invalid subject"),
        PublishErrorKind::Send => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "the client could not send it (connection closed)",
        ),
    }
}

/// The kind and retry class of a failed flush.
pub(crate) fn flush_class(kind: FlushErrorKind) -> (ErrorKind, Retry, &'static str) {
    match kind {
        FlushErrorKind::SendError | FlushErrorKind::FlushError => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "the flush failed (connection lost); the batch is sent again",
        ),
    }
}

/// The kind and retry class of a failed JetStream publish or acknowledgement.
pub(crate) fn jetstream_class(kind: JsPublishErrorKind) -> (ErrorKind, Retry, &'static str) {
    match kind {
        JsPublishErrorKind::StreamNotFound => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "no stream captures this subject (deleted meanwhile?); the stream is checked again before the retry",
        ),
        JsPublishErrorKind::TimedOut => (
            ErrorKind::Timeout,
            Retry::Backoff,
            "no acknowledgement from the stream in time",
        ),
        JsPublishErrorKind::BrokenPipe => (ErrorKind::Unavailable, Retry::Backoff, "connection lost"),
        JsPublishErrorKind::MaxAckPending => (
            ErrorKind::RateLimited,
            Retry::Backoff,
            "too many acknowledgements pending",
        ),
        JsPublishErrorKind::MaxPayloadExceeded => (
            ErrorKind::Rejected,
            Retry::Never,
            "the message is larger than the server's max_payload",
        ),
        JsPublishErrorKind::WrongLastMessageId | JsPublishErrorKind::WrongLastSequence => (
            ErrorKind::Unexpected,
            Retry::Backoff,
            "the stream refused an expectation header",
        ),
        _ => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "the stream refused the message (a stream limit, or the server is unavailable)",
        ),
    }
}

/// The kind and advice for a failure to create, read or update the stream (always retried: the
/// stream is shared by every delivery).
pub(crate) fn stream_class(kind: &CreateStreamErrorKind) -> (ErrorKind, Retry, &'static str) {
    match kind {
        CreateStreamErrorKind::JetStreamUnavailable => (
            ErrorKind::ConfigInvalid,
            Retry::Backoff,
            "JetStream is not enabled on the server (start nats-server with -js), or NATS_JETSTREAM should be false",
        ),
        CreateStreamErrorKind::EmptyStreamName
        | CreateStreamErrorKind::InvalidStreamName
        | CreateStreamErrorKind::DomainAndExternalSet => (
            ErrorKind::ConfigInvalid,
            Retry::Backoff,
            "the stream settings are invalid (NATS_JETSTREAM_STREAM)",
        ),
        CreateStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP => (
            ErrorKind::ConfigInvalid,
            Retry::Backoff,
            "the subjects overlap those of another stream; remove them from it, or name that stream in NATS_JETSTREAM_STREAM",
        ),
        CreateStreamErrorKind::TimedOut => (ErrorKind::Timeout, Retry::Backoff, "timed out"),
        _ => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "the server could not create, read or update the stream",
        ),
    }
}

/// An error of `what` with this class, the client's text (scrubbed) appended.
pub(crate) fn classified(
    (kind, retry, advice): (ErrorKind, Retry, &'static str),
    what: &str,
    source: &(dyn StdError + 'static),
    secrets: &[&str],
) -> SinkError {
    error(
        kind,
        scrub(
            &format!("{what}: {advice} ({})", error_chain(Some(source))),
            secrets,
        ),
    )
    .with_retry(retry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use evolution_events::REDACTED;

    #[test]
    fn connect_failures_are_all_retried() {
        use ConnectErrorKind as C;
        let table = [
            (C::ServerParse, ErrorKind::ConfigInvalid),
            (C::Dns, ErrorKind::Unavailable),
            (C::Authentication, ErrorKind::Unauthorized),
            (C::AuthorizationViolation, ErrorKind::Unauthorized),
            (C::TimedOut, ErrorKind::Timeout),
            (C::Tls, ErrorKind::ConfigInvalid),
            (C::Io, ErrorKind::Unavailable),
            (C::MaxReconnects, ErrorKind::Unavailable),
        ];
        for (kind, expected) in table {
            let e = async_nats::ConnectError::new(kind);
            let e = connect_error("nats://h:4222", &e, &[]);
            assert_eq!(e.kind(), expected, "{e}");
            assert_eq!(e.retry(), Retry::Backoff, "{e}");
            assert!(e.message().starts_with("connect to nats://h:4222: "), "{e}");
        }
    }

    #[test]
    fn core_and_flush_classes() {
        let p = |k| {
            let (a, b, _) = publish_class(k);
            (a, b)
        };
        assert_eq!(
            p(PublishErrorKind::MaxPayloadExceeded),
            (ErrorKind::Rejected, Retry::Never)
        );
        assert_eq!(
            p(PublishErrorKind::InvalidSubject),
            (ErrorKind::ConfigInvalid, Retry::Never)
        );
        assert_eq!(
            p(PublishErrorKind::Send),
            (ErrorKind::Unavailable, Retry::Backoff)
        );
        for k in [FlushErrorKind::SendError, FlushErrorKind::FlushError] {
            let (a, b, _) = flush_class(k);
            assert_eq!((a, b), (ErrorKind::Unavailable, Retry::Backoff));
        }
    }

    #[test]
    fn jetstream_classes() {
        use JsPublishErrorKind as J;
        let table = [
            (J::StreamNotFound, ErrorKind::Unavailable, Retry::Backoff),
            (J::TimedOut, ErrorKind::Timeout, Retry::Backoff),
            (J::BrokenPipe, ErrorKind::Unavailable, Retry::Backoff),
            (J::MaxAckPending, ErrorKind::RateLimited, Retry::Backoff),
            (J::MaxPayloadExceeded, ErrorKind::Rejected, Retry::Never),
            (J::WrongLastMessageId, ErrorKind::Unexpected, Retry::Backoff),
            (J::WrongLastSequence, ErrorKind::Unexpected, Retry::Backoff),
            (J::Other, ErrorKind::Unavailable, Retry::Backoff),
        ];
        for (kind, k, r) in table {
            let (a, b, _) = jetstream_class(kind);
            assert_eq!((a, b), (k, r), "{kind:?}");
            let e = classified(
                jetstream_class(kind),
                "publish to evolution.acme.call",
                &std::io::Error::other("token s3cret"),
                &["s3cret"],
            );
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn stream_classes() {
        use CreateStreamErrorKind as S;
        let table = [
            (S::JetStreamUnavailable, ErrorKind::ConfigInvalid),
            (S::EmptyStreamName, ErrorKind::ConfigInvalid),
            (S::InvalidStreamName, ErrorKind::ConfigInvalid),
            (S::DomainAndExternalSet, ErrorKind::ConfigInvalid),
            (S::TimedOut, ErrorKind::Timeout),
            (S::Response, ErrorKind::Unavailable),
            (S::NotFound, ErrorKind::Unavailable),
            (S::ResponseParse, ErrorKind::Unavailable),
        ];
        for (kind, expected) in table {
            let (k, r, _) = stream_class(&kind);
            assert_eq!((k, r), (expected, Retry::Backoff), "{kind:?}");
        }
    }

    #[test]
    fn chains_and_scrubbing() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(
            error_chain(Some(&Outer(std::io::Error::other("inner")))),
            "outer: inner"
        );
        assert_eq!(scrub("a b", &["", "b"]), "a b");
        assert_eq!(scrub("x hunter2 y", &["hunter2"]), format!("x {REDACTED} y"));
    }
}
