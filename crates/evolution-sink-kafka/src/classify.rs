//! Classification of librdkafka's errors into [`SinkError`]s (the crate documentation has the
//! table). Messages name the topic, never a credential.

use std::borrow::Cow;

use evolution_events::{Channel, ErrorKind, Retry, SinkError};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

/// A Kafka [`SinkError`].
pub(crate) fn error(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> SinkError {
    SinkError::new(Channel::Kafka, kind, message)
}

/// What failed, for the message: `producing to topic "t"`, `creating topic "t"`, …
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op<'a> {
    /// Producing a record to a topic.
    Produce(&'a str),
    /// Looking a topic up in the cluster metadata.
    Lookup(&'a str),
    /// Creating a topic.
    Create(&'a str),
    /// Reading the cluster metadata (health check).
    Metadata,
    /// Pushing out buffered records.
    Flush,
}

impl std::fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Produce(topic) => write!(f, "producing to topic {topic:?}"),
            Self::Lookup(topic) => write!(f, "looking up topic {topic:?}"),
            Self::Create(topic) => write!(f, "creating topic {topic:?}"),
            Self::Metadata => f.write_str("reading the cluster metadata"),
            Self::Flush => f.write_str("flushing buffered records"),
        }
    }
}

/// The error code inside a [`KafkaError`], if it carries one.
pub(crate) fn code_of(e: &KafkaError) -> Option<Code> {
    match e {
        KafkaError::MessageProduction(code)
        | KafkaError::MetadataFetch(code)
        | KafkaError::AdminOp(code)
        | KafkaError::Flush(code)
        | KafkaError::Global(code) => Some(*code),
        KafkaError::Transaction(e) => Some(e.code()),
        _ => None,
    }
}

/// Classifies a [`KafkaError`] of `op`.
pub(crate) fn classify_error(op: Op<'_>, e: &KafkaError) -> SinkError {
    match (code_of(e), e) {
        (Some(code), _) => classify(op, code),
        (None, KafkaError::Canceled) => error(
            ErrorKind::Unavailable,
            format!("{op}: the producer was closed before the broker answered; it will be sent again"),
        ),
        // A client-level error without a code (client creation, a null byte in a name): say
        // what it is without the configuration values (`ClientConfig` errors carry them).
        (None, KafkaError::ClientConfig(_, description, key, _)) => error(
            ErrorKind::ConfigInvalid,
            format!("{op}: librdkafka refused the setting `{key}`: {description}"),
        ),
        (None, other) => error(ErrorKind::Unexpected, format!("{op}: {other}")).with_retry(Retry::Backoff),
    }
}

/// Classifies a librdkafka error code of `op` (see the crate documentation's table).
pub(crate) fn classify(op: Op<'_>, code: Code) -> SinkError {
    let (kind, retry, advice): (ErrorKind, Retry, &str) = match code {
        // The record itself is refused: sending it again cannot help.
        Code::MessageSizeTooLarge
        | Code::InvalidMessageSize
        | Code::MessageBatchTooLarge
        | Code::InvalidMessage
        | Code::BadMessage
        | Code::InvalidRecord
        | Code::PolicyViolation
        | Code::InvalidTimestamp
        | Code::InvalidTopic => (ErrorKind::Rejected, Retry::Never, ""),
        Code::TopicAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::SaslAuthenticationFailed
        | Code::Authentication
        | Code::UnsupportedSASLMechanism
        | Code::IllegalSASLState
        | Code::TransactionalIdAuthorizationFailed => (
            ErrorKind::Unauthorized,
            Retry::Backoff,
            "; check KAFKA_SASL_* and the topic ACLs",
        ),
        Code::SSL => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "; check KAFKA_SSL_* (CA, certificate, key)",
        ),
        Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "; the topic is missing: it is created again when KAFKA_AUTO_CREATE_TOPICS=true, otherwise \
             create it",
        ),
        Code::InvalidReplicationFactor
        | Code::InvalidPartitions
        | Code::InvalidReplicaAssignment
        | Code::InvalidConfig => (
            ErrorKind::ConfigInvalid,
            Retry::Backoff,
            "; check KAFKA_NUM_PARTITIONS and KAFKA_REPLICATION_FACTOR against the cluster",
        ),
        Code::MessageTimedOut | Code::RequestTimedOut | Code::OperationTimedOut | Code::TimedOutQueue => {
            (ErrorKind::Timeout, Retry::Backoff, "")
        }
        Code::QueueFull | Code::ThrottlingQuotaExceeded => (ErrorKind::RateLimited, Retry::Backoff, ""),
        Code::BrokerDestroy | Code::DestroyBroker | Code::PurgeQueue | Code::PurgeInflight => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "; the producer was closed or replaced before the broker answered",
        ),
        Code::AllBrokersDown
        | Code::BrokerTransportFailure
        | Code::Resolve
        | Code::BrokerNotAvailable
        | Code::LeaderNotAvailable
        | Code::NotLeaderForPartition
        | Code::ReplicaNotAvailable
        | Code::NetworkException
        | Code::NotEnoughReplicas
        | Code::NotEnoughReplicasAfterAppend
        | Code::KafkaStorageError
        | Code::CoordinatorNotAvailable
        | Code::NotController
        | Code::Fatal
        | Code::OutOfOrderSequenceNumber
        | Code::UnknownProducerId
        | Code::InvalidProducerEpoch
        | Code::InvalidProducerIdMapping
        | Code::ProducerFenced
        | Code::Retry
        | Code::Fail => (ErrorKind::Unavailable, Retry::Backoff, ""),
        _ => (ErrorKind::Unexpected, Retry::Backoff, ""),
    };
    error(kind, format!("{op} failed: {code} ({code:?}){advice}")).with_retry(retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_retry(code: Code) -> (ErrorKind, Retry) {
        let e = classify(Op::Produce("evolution.acme.messages-upsert"), code);
        (e.kind(), e.retry())
    }

    #[test]
    fn every_branch_of_the_table() {
        for code in [
            Code::MessageSizeTooLarge,
            Code::InvalidTopic,
            Code::InvalidRecord,
            Code::PolicyViolation,
        ] {
            assert_eq!(kind_retry(code), (ErrorKind::Rejected, Retry::Never), "{code:?}");
        }
        for code in [
            Code::TopicAuthorizationFailed,
            Code::SaslAuthenticationFailed,
            Code::Authentication,
        ] {
            assert_eq!(
                kind_retry(code),
                (ErrorKind::Unauthorized, Retry::Backoff),
                "{code:?}"
            );
        }
        assert_eq!(kind_retry(Code::SSL), (ErrorKind::Unavailable, Retry::Backoff));
        assert_eq!(
            kind_retry(Code::UnknownTopicOrPartition),
            (ErrorKind::Unavailable, Retry::Backoff)
        );
        assert_eq!(
            kind_retry(Code::InvalidReplicationFactor),
            (ErrorKind::ConfigInvalid, Retry::Backoff)
        );
        for code in [
            Code::MessageTimedOut,
            Code::RequestTimedOut,
            Code::OperationTimedOut,
        ] {
            assert_eq!(kind_retry(code), (ErrorKind::Timeout, Retry::Backoff), "{code:?}");
        }
        assert_eq!(
            kind_retry(Code::QueueFull),
            (ErrorKind::RateLimited, Retry::Backoff)
        );
        assert_eq!(
            kind_retry(Code::PurgeQueue),
            (ErrorKind::Unavailable, Retry::Backoff)
        );
        for code in [
            Code::AllBrokersDown,
            Code::BrokerTransportFailure,
            Code::NotLeaderForPartition,
            Code::Fatal,
            Code::ProducerFenced,
        ] {
            assert_eq!(
                kind_retry(code),
                (ErrorKind::Unavailable, Retry::Backoff),
                "{code:?}"
            );
        }
        assert_eq!(
            kind_retry(Code::GroupAuthorizationFailed),
            (ErrorKind::Unexpected, Retry::Backoff)
        );
    }

    #[test]
    fn messages_name_the_operation_and_hide_configuration_values() {
        let e = classify(Op::Create("evolution.acme.call"), Code::InvalidReplicationFactor);
        assert!(
            e.message().contains("creating topic \"evolution.acme.call\""),
            "{e}"
        );
        assert!(e.message().contains("KAFKA_REPLICATION_FACTOR"), "{e}");
        let e = classify_error(
            Op::Metadata,
            &KafkaError::ClientConfig(
                rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
                "bad value".into(),
                "sasl.password".into(),
                "hunter2".into(),
            ),
        );
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("sasl.password"), "{e}");
        let e = classify_error(Op::Produce("t"), &KafkaError::Canceled);
        assert_eq!((e.kind(), e.retry()), (ErrorKind::Unavailable, Retry::Backoff));
        let e = classify_error(Op::Flush, &KafkaError::Flush(Code::OperationTimedOut));
        assert_eq!(e.kind(), ErrorKind::Timeout);
        let e = classify_error(Op::Produce("t"), &KafkaError::NoMessageReceived);
        assert_eq!((e.kind(), e.retry()), (ErrorKind::Unexpected, Retry::Backoff));
    }
}
