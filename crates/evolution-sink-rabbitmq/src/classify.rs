//! Classification of lapin errors and broker replies into [`SinkError`]s.
//!
//! The rule: a failure of the **connection** (refused, reset, timed out, credentials or vhost
//! refused, broker shutting down) affects every delivery alike and is fixed without touching
//! them, so it is always retried (the dispatcher retries broker channels for ever; the outbox
//! holds the deliveries meanwhile). A failure of **one destination** that retrying cannot fix (the
//! queue exists with other arguments, the user may not write to that exchange, the message is too
//! large) is permanent: the delivery goes to the dead letters (and raises an `ERRORS` event) and
//! can be redriven once the cause is fixed.

use std::borrow::Cow;

use evolution_events::{Channel, ErrorKind, Retry, SinkError, scrub};

/// A RabbitMQ [`SinkError`].
pub(crate) fn error(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> SinkError {
    SinkError::new(Channel::Rabbitmq, kind, message)
}

/// What the client said went wrong, reduced to what classification needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The broker closed the channel or connection with an AMQP reply code.
    Reply {
        /// The reply code (`406`, …).
        code: u16,
        /// The broker's reply text.
        text: String,
    },
    /// The connection or channel is gone (I/O error, missed heartbeats, closed state).
    Link(String),
    /// The connect timeout passed.
    TimedOut,
    /// The two ends do not speak the same protocol (frame parsing, serialisation, version).
    Protocol(String),
    /// The authentication provider failed.
    Auth(String),
    /// Anything else (a client bug).
    Other(String),
}

impl Failure {
    /// The facts of a lapin error.
    pub(crate) fn of(e: &lapin::Error) -> Self {
        use lapin::ErrorKind as K;
        match e.kind() {
            K::ProtocolError(amqp) => Self::Reply {
                code: amqp.get_id(),
                text: amqp.get_message().to_string(),
            },
            K::IOError(_)
            | K::RuntimeShutdownError(_)
            | K::InvalidConnectionState(_)
            | K::InvalidChannelState(..)
            | K::InvalidChannel(_)
            | K::MissingHeartbeatError
            | K::ChannelsLimitReached => Self::Link(e.to_string()),
            K::ParsingError(_) | K::SerialisationError(_) | K::InvalidProtocolVersion(_) => {
                Self::Protocol(e.to_string())
            }
            K::AuthProviderError(_) => Self::Auth(e.to_string()),
            _ => Self::Other(e.to_string()),
        }
    }
}

/// Where a failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Connecting and opening the channels: everything is retried.
    Connect,
    /// Declaring or binding an exchange or queue of one destination.
    Declare,
    /// Publishing (or waiting for the confirm of) one message.
    Publish,
}

/// The kind, retry class and advice for an AMQP reply code in `stage`.
pub(crate) fn reply_class(stage: Stage, code: u16) -> (ErrorKind, Retry, &'static str) {
    let at_connect = stage == Stage::Connect;
    match code {
        311 => (
            ErrorKind::Rejected,
            Retry::Never,
            "the message is larger than the broker accepts (max_message_size)",
        ),
        312 => (
            ErrorKind::Rejected,
            Retry::Backoff,
            "unroutable: no queue is bound to the exchange with this routing key; the queue and binding are declared again before the retry",
        ),
        313 => (ErrorKind::Unavailable, Retry::Backoff, "no consumers"),
        403 if at_connect => (
            ErrorKind::Unauthorized,
            Retry::Backoff,
            "the broker refused the credentials; fix the user or password in RABBITMQ_URI (deliveries wait meanwhile)",
        ),
        403 => (
            ErrorKind::Unauthorized,
            Retry::Never,
            "the user may not configure or write to this exchange or queue; grant the permissions and redrive",
        ),
        404 => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "the exchange or queue does not exist (deleted meanwhile?); it is declared again before the retry",
        ),
        405 => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "the queue is locked by another connection (exclusive)",
        ),
        406 if at_connect => (
            ErrorKind::ConfigInvalid,
            Retry::Backoff,
            "the broker refused the connection settings",
        ),
        406 => (
            ErrorKind::ConfigInvalid,
            Retry::Never,
            "the exchange or queue exists with other settings (for example a classic queue while RABBITMQ_QUEUE_TYPE=quorum); delete it or change RABBITMQ_QUEUE_TYPE, then redrive",
        ),
        320 => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "the broker closed the connection (shutting down or forced by an operator)",
        ),
        402 | 530 => (
            ErrorKind::ConfigInvalid,
            Retry::Backoff,
            "the vhost does not exist or the user may not use it; fix the vhost in RABBITMQ_URI or the user's permissions (deliveries wait meanwhile)",
        ),
        501..=505 => (
            ErrorKind::Unexpected,
            Retry::Backoff,
            "protocol error between client and broker; retried on a new connection",
        ),
        506 => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "the broker ran out of resources",
        ),
        540 => (
            ErrorKind::Unexpected,
            Retry::Never,
            "the broker does not implement this operation",
        ),
        541 => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "internal error of the broker",
        ),
        _ => (ErrorKind::Unexpected, Retry::Backoff, "unexpected reply code"),
    }
}

/// Classifies a failure of `what` (`connect to amqp://host:5672/%2f`, `declare queue …`) in
/// `stage`. `secrets` are scrubbed from the client's texts.
pub(crate) fn classify(stage: Stage, what: &str, failure: &Failure, secrets: &[&str]) -> SinkError {
    let (kind, retry, detail) = match failure {
        Failure::Reply { code, text } => {
            let (kind, retry, advice) = reply_class(stage, *code);
            (kind, retry, format!("{code} {text}: {advice}"))
        }
        Failure::Link(text) => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            format!("the connection failed ({text}); reconnecting"),
        ),
        Failure::TimedOut => (
            ErrorKind::Timeout,
            Retry::Backoff,
            "timed out; reconnecting".to_owned(),
        ),
        Failure::Protocol(text) => (
            if stage == Stage::Connect {
                ErrorKind::ConfigInvalid
            } else {
                ErrorKind::Unexpected
            },
            Retry::Backoff,
            format!("protocol error ({text}); is this an AMQP 0-9-1 broker?"),
        ),
        Failure::Auth(text) => (
            ErrorKind::Unauthorized,
            Retry::Backoff,
            format!("authentication failed ({text})"),
        ),
        Failure::Other(text) => (
            ErrorKind::Unexpected,
            Retry::Never,
            format!("unexpected client error ({text})"),
        ),
    };
    error(kind, scrub(&format!("{what}: {detail}"), secrets)).with_retry(retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16) -> Failure {
        Failure::Reply {
            code,
            text: "REPLY-TEXT".to_owned(),
        }
    }

    #[test]
    fn reply_codes() {
        use ErrorKind as K;
        use Retry::{Backoff, Never};
        let table: &[(Stage, u16, K, Retry)] = &[
            (Stage::Publish, 311, K::Rejected, Never),
            (Stage::Publish, 312, K::Rejected, Backoff),
            (Stage::Publish, 313, K::Unavailable, Backoff),
            (Stage::Connect, 403, K::Unauthorized, Backoff),
            (Stage::Declare, 403, K::Unauthorized, Never),
            (Stage::Publish, 403, K::Unauthorized, Never),
            (Stage::Declare, 404, K::Unavailable, Backoff),
            (Stage::Declare, 405, K::Unavailable, Backoff),
            (Stage::Connect, 406, K::ConfigInvalid, Backoff),
            (Stage::Declare, 406, K::ConfigInvalid, Never),
            (Stage::Publish, 320, K::Unavailable, Backoff),
            (Stage::Connect, 402, K::ConfigInvalid, Backoff),
            (Stage::Connect, 530, K::ConfigInvalid, Backoff),
            (Stage::Publish, 501, K::Unexpected, Backoff),
            (Stage::Publish, 505, K::Unexpected, Backoff),
            (Stage::Publish, 506, K::Unavailable, Backoff),
            (Stage::Publish, 540, K::Unexpected, Never),
            (Stage::Publish, 541, K::Unavailable, Backoff),
            (Stage::Publish, 999, K::Unexpected, Backoff),
        ];
        for &(stage, code, kind, retry) in table {
            let e = classify(stage, "publish", &reply(code), &[]);
            assert_eq!((e.kind(), e.retry()), (kind, retry), "{stage:?} {code}: {e}");
            assert!(
                e.message().starts_with(&format!("publish: {code} REPLY-TEXT: ")),
                "{e}"
            );
        }
        let e = classify(Stage::Declare, "declare queue `q`", &reply(406), &[]);
        assert!(e.message().contains("RABBITMQ_QUEUE_TYPE"), "{e}");
    }

    #[test]
    fn other_failures() {
        let cases = [
            (
                Stage::Publish,
                Failure::Link("IO error: broken pipe".into()),
                ErrorKind::Unavailable,
                Retry::Backoff,
            ),
            (
                Stage::Connect,
                Failure::TimedOut,
                ErrorKind::Timeout,
                Retry::Backoff,
            ),
            (
                Stage::Connect,
                Failure::Protocol("bad frame".into()),
                ErrorKind::ConfigInvalid,
                Retry::Backoff,
            ),
            (
                Stage::Publish,
                Failure::Protocol("bad frame".into()),
                ErrorKind::Unexpected,
                Retry::Backoff,
            ),
            (
                Stage::Connect,
                Failure::Auth("token".into()),
                ErrorKind::Unauthorized,
                Retry::Backoff,
            ),
            (
                Stage::Publish,
                Failure::Other("future polled".into()),
                ErrorKind::Unexpected,
                Retry::Never,
            ),
        ];
        for (stage, failure, kind, retry) in cases {
            let e = classify(stage, "x", &failure, &[]);
            assert_eq!((e.kind(), e.retry()), (kind, retry), "{failure:?}");
        }
    }

    #[test]
    fn secrets_are_scrubbed() {
        let e = classify(
            Stage::Connect,
            "connect to amqp://h:5672/%2f",
            &Failure::Link("failed for amqp://u:hunter2@h:5672".into()),
            &["amqp://u:hunter2@h:5672", "hunter2", ""],
        );
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_eq!(scrub("a b", &["", "b"]), "a b", "too short to be a secret");
    }

    #[test]
    fn lapin_errors_become_facts() {
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert!(matches!(Failure::of(&io), Failure::Link(_)));
        let amqp = lapin::protocol::AMQPError::new(
            lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - inequivalent arg".into(),
        );
        let e: lapin::Error = lapin::ErrorKind::ProtocolError(amqp).into();
        assert_eq!(
            Failure::of(&e),
            Failure::Reply {
                code: 406,
                text: "PRECONDITION_FAILED - inequivalent arg".into()
            }
        );
        let e: lapin::Error = lapin::ErrorKind::MissingHeartbeatError.into();
        assert!(matches!(Failure::of(&e), Failure::Link(_)));
        let e: lapin::Error = lapin::ErrorKind::AuthProviderError("no token".into()).into();
        assert!(matches!(Failure::of(&e), Failure::Auth(_)));
        let e: lapin::Error = lapin::ErrorKind::FutureCompleted.into();
        assert!(matches!(Failure::of(&e), Failure::Other(_)));
    }
}
