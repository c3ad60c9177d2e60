//! The naming rules of each channel: what a name must look like for its backend to accept it.
//!
//! Used by [`Destination::validate`](crate::Destination::validate), by the naming profiles and by
//! instance-name validation; [`naming`](crate::naming) re-exports them.

use crate::channel::Channel;

/// A name that its channel would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{channel} name `{name}` is invalid: {rule}")]
pub struct NameError {
    /// The channel whose rule is broken.
    pub channel: Channel,
    /// The name.
    pub name: String,
    /// The rule, and what to do about it.
    pub rule: String,
}

impl NameError {
    pub(crate) fn new(channel: Channel, name: &str, rule: impl Into<String>) -> Self {
        Self {
            channel,
            name: name.to_owned(),
            rule: rule.into(),
        }
    }
}

/// The longest SQS queue name, `.fifo` included.
pub const SQS_MAX_QUEUE_NAME: usize = 80;
/// The longest Kafka topic name.
pub const KAFKA_MAX_TOPIC: usize = 249;
/// The longest AMQP short string (exchange, queue, routing key), in bytes.
pub const AMQP_MAX_NAME: usize = 255;
/// The longest Pusher channel name.
pub const PUSHER_MAX_CHANNEL: usize = 164;
/// The longest Pusher event name.
pub const PUSHER_MAX_EVENT: usize = 200;
/// Socket.IO event names a server cannot emit (they are reserved by the protocol).
pub const SOCKETIO_RESERVED: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// An absolute http(s) URL with a host.
///
/// # Errors
/// [`NameError`] saying what is wrong.
pub fn check_webhook_url(url: &str) -> Result<(), NameError> {
    let err = |rule: &str| NameError::new(Channel::Webhook, url, rule);
    let parsed = url::Url::parse(url).map_err(|e| err(&format!("not an absolute URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(err("only http:// and https:// URLs can receive webhooks"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(err("the URL has no host"));
    }
    Ok(())
}

/// A Socket.IO namespace (starts with `/`) and a non-reserved event name.
///
/// # Errors
/// [`NameError`] saying what is wrong.
pub fn check_socketio(namespace: &str, event: &str) -> Result<(), NameError> {
    if !namespace.starts_with('/') {
        return Err(NameError::new(
            Channel::Websocket,
            namespace,
            "a namespace starts with `/`",
        ));
    }
    if event.is_empty() {
        return Err(NameError::new(
            Channel::Websocket,
            event,
            "an event name cannot be empty",
        ));
    }
    if SOCKETIO_RESERVED.contains(&event) {
        return Err(NameError::new(
            Channel::Websocket,
            event,
            "this event name is reserved by Socket.IO; rename the instance",
        ));
    }
    Ok(())
}

/// An AMQP name: 1 to 255 bytes; a queue or exchange may not start with `amq.`.
///
/// # Errors
/// [`NameError`] saying what is wrong.
pub fn check_rabbitmq(what: &str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::new(
            Channel::Rabbitmq,
            name,
            format!("the {what} cannot be empty"),
        ));
    }
    if name.len() > AMQP_MAX_NAME {
        return Err(NameError::new(
            Channel::Rabbitmq,
            name,
            format!(
                "the {what} is {} bytes; AMQP allows at most {AMQP_MAX_NAME}",
                name.len()
            ),
        ));
    }
    if what != "routing key" && name.starts_with("amq.") {
        return Err(NameError::new(
            Channel::Rabbitmq,
            name,
            format!("a {what} cannot start with `amq.` (reserved)"),
        ));
    }
    Ok(())
}

/// An SQS queue name: at most 80 characters `[A-Za-z0-9_-]`, `.fifo` at the end exactly for FIFO
/// queues.
///
/// # Errors
/// [`NameError`] saying what is wrong and what to do.
pub fn check_sqs_queue(name: &str, fifo: bool) -> Result<(), NameError> {
    let base = match (fifo, name.strip_suffix(".fifo")) {
        (true, Some(base)) => base,
        (true, None) => {
            return Err(NameError::new(
                Channel::Sqs,
                name,
                "a FIFO queue name must end in `.fifo`",
            ));
        }
        (false, Some(_)) => {
            return Err(NameError::new(
                Channel::Sqs,
                name,
                "only a FIFO queue name may end in `.fifo`",
            ));
        }
        (false, None) => name,
    };
    if name.len() > SQS_MAX_QUEUE_NAME {
        return Err(NameError::new(
            Channel::Sqs,
            name,
            format!(
                "it is {} characters and SQS allows at most {SQS_MAX_QUEUE_NAME}; use a shorter instance name \
                 (global deliveries can also use SQS_GLOBAL_FORCE_SINGLE_QUEUE)",
                name.len()
            ),
        ));
    }
    if base.is_empty()
        || !base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(NameError::new(
            Channel::Sqs,
            name,
            "SQS queue names contain only ASCII letters, digits, `-` and `_`",
        ));
    }
    Ok(())
}

/// A Kafka topic: 1 to 249 characters `[A-Za-z0-9._-]`, not `.` or `..`.
///
/// # Errors
/// [`NameError`] saying what is wrong.
pub fn check_kafka_topic(topic: &str) -> Result<(), NameError> {
    if topic.is_empty() || topic == "." || topic == ".." {
        return Err(NameError::new(
            Channel::Kafka,
            topic,
            "a topic cannot be empty, `.` or `..`",
        ));
    }
    if topic.len() > KAFKA_MAX_TOPIC {
        return Err(NameError::new(
            Channel::Kafka,
            topic,
            format!(
                "it is {} characters and Kafka allows at most {KAFKA_MAX_TOPIC}",
                topic.len()
            ),
        ));
    }
    if !topic
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(NameError::new(
            Channel::Kafka,
            topic,
            "Kafka topics contain only ASCII letters, digits, `.`, `_` and `-`",
        ));
    }
    Ok(())
}

/// A NATS publish subject: dot-separated non-empty tokens, no whitespace, no wildcards.
///
/// # Errors
/// [`NameError`] saying what is wrong.
pub fn check_nats_subject(subject: &str) -> Result<(), NameError> {
    if subject.split('.').any(str::is_empty) {
        return Err(NameError::new(
            Channel::Nats,
            subject,
            "a subject has no empty tokens (no leading, trailing or double dots)",
        ));
    }
    if subject
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
    {
        return Err(NameError::new(
            Channel::Nats,
            subject,
            "a publish subject has no whitespace and no wildcards (`*`, `>`)",
        ));
    }
    Ok(())
}

/// A Pusher channel (1 to 164 characters `[A-Za-z0-9_\-=@,.;]`) and event (1 to 200 bytes).
///
/// # Errors
/// [`NameError`] saying what is wrong.
pub fn check_pusher(channel: &str, event: &str) -> Result<(), NameError> {
    if channel.is_empty()
        || channel.len() > PUSHER_MAX_CHANNEL
        || !channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';'))
    {
        return Err(NameError::new(
            Channel::Pusher,
            channel,
            format!("a channel is 1 to {PUSHER_MAX_CHANNEL} characters of A-Z a-z 0-9 _ - = @ , . ;"),
        ));
    }
    if event.is_empty() || event.len() > PUSHER_MAX_EVENT {
        return Err(NameError::new(
            Channel::Pusher,
            event,
            format!("an event name is 1 to {PUSHER_MAX_EVENT} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_refuse_bad_names() {
        assert!(check_nats_subject("a..b").is_err());
        assert!(check_nats_subject("a.*").is_err());
        assert!(check_nats_subject("a b").is_err());
        assert!(check_kafka_topic("a/b").is_err());
        assert!(check_rabbitmq("queue", "amq.x").is_err());
        assert!(check_rabbitmq("queue", &"q".repeat(256)).is_err());
        assert!(check_pusher("a b", "e").is_err());
        assert!(check_socketio("/", "connect").is_err());
        assert!(check_sqs_queue("a.b", false).is_err());
        assert!(check_sqs_queue("ab", true).is_err());
        assert!(check_webhook_url("http://").is_err());
    }
}
