//! How the outcome of one Socket.IO emission becomes a delivery outcome.

use std::borrow::Cow;

use evolution_events::{Channel, ErrorKind, SinkError};
use socketioxide::{BroadcastError, SocketError};

/// A websocket sink error.
pub(crate) fn error(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> SinkError {
    SinkError::new(Channel::Websocket, kind, message)
}

/// One emission's outcome.
#[derive(Debug)]
pub(crate) enum Emitted {
    /// Written to every socket allowed to see it, except `missed` sockets whose send buffer was
    /// full (slow clients; Socket.IO is at-most-once per connection, so this is not retried: a
    /// retry would duplicate the event for every other socket).
    Ok { missed: usize },
    /// Not emitted.
    Failed(SinkError),
}

/// | outcome | delivery |
/// |---|---|
/// | written to every socket (or there was none) | delivered |
/// | some sockets' buffers full | delivered; those sockets counted as `missed` |
/// | some sockets closing | delivered (they are leaving) |
/// | the payload cannot be encoded | `Rejected`, never retried |
/// | adapter error (a multi-node adapter) | `Unavailable`, retried |
pub(crate) fn classify(result: Result<(), BroadcastError>) -> Emitted {
    match result {
        Ok(()) => Emitted::Ok { missed: 0 },
        Err(BroadcastError::Socket(errors)) => Emitted::Ok {
            missed: errors
                .iter()
                .filter(|e| matches!(e, SocketError::InternalChannelFull))
                .count(),
        },
        Err(BroadcastError::Serialize(e)) => Emitted::Failed(error(
            ErrorKind::Rejected,
            format!("the payload cannot be encoded as a Socket.IO packet: {e}"),
        )),
        Err(BroadcastError::Adapter(e)) => Emitted::Failed(error(
            ErrorKind::Unavailable,
            format!("the Socket.IO adapter failed to broadcast: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use evolution_events::Retry;

    #[test]
    fn full_buffers_are_missed_not_failed() {
        assert!(matches!(classify(Ok(())), Emitted::Ok { missed: 0 }));
        let errors = vec![
            SocketError::InternalChannelFull,
            SocketError::Closed,
            SocketError::InternalChannelFull,
        ];
        assert!(matches!(
            classify(Err(BroadcastError::Socket(errors))),
            Emitted::Ok { missed: 2 }
        ));
    }

    #[test]
    fn encoding_is_permanent_and_adapters_are_retried() {
        let parse: serde_json::Error = serde_json::from_str::<u8>("x").unwrap_err();
        let Emitted::Failed(e) = classify(Err(BroadcastError::Serialize(socketioxide::ParserError::new(
            parse,
        )))) else {
            panic!("an encoding failure must fail the item");
        };
        assert_eq!((e.kind(), e.retry()), (ErrorKind::Rejected, Retry::Never));
        let adapter = socketioxide::AdapterError::from(
            Box::new(std::io::Error::other("down")) as Box<dyn std::error::Error + Send>
        );
        let Emitted::Failed(e) = classify(Err(BroadcastError::Adapter(adapter))) else {
            panic!("an adapter failure must fail the item");
        };
        assert_eq!((e.kind(), e.retry()), (ErrorKind::Unavailable, Retry::Backoff));
        assert_eq!(e.sink(), Channel::Websocket);
    }
}
