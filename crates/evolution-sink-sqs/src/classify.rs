//! Classification of SQS failures into [`SinkError`]s (the crate documentation has the table).
//! Messages name the operation and the queue, never a credential.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use evolution_events::{Channel, ErrorKind, Retry, SinkError, error_chain};

/// An SQS [`SinkError`].
pub(crate) fn error(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> SinkError {
    SinkError::new(Channel::Sqs, kind, message)
}

/// What failed, for the message.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op<'a> {
    /// `SendMessageBatch` to a queue.
    Send(&'a str),
    /// `GetQueueUrl` of a queue.
    Resolve(&'a str),
    /// `CreateQueue`.
    Create(&'a str),
    /// `ListQueues` (health check).
    Health,
}

impl fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Send(queue) => write!(f, "sending to queue {queue:?}"),
            Self::Resolve(queue) => write!(f, "looking up queue {queue:?}"),
            Self::Create(queue) => write!(f, "creating queue {queue:?}"),
            Self::Health => f.write_str("listing queues (health check)"),
        }
    }
}

/// A failed call, reduced to what classification needs.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The request could not be built (not sent).
    Construction(String),
    /// No answer in time.
    Timeout(String),
    /// Connecting or the connection failed (refused, reset, DNS, TLS).
    Transport(String),
    /// The answer could not be read.
    Response(String),
    /// The service answered with an error.
    Service {
        code: Option<String>,
        message: Option<String>,
        status: u16,
    },
}

impl Failure {
    /// Reduces an SDK error.
    pub(crate) fn of<E, R>(e: &SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + StdError + 'static,
        R: fmt::Debug + HasStatus,
    {
        match e {
            SdkError::ConstructionFailure(_) => Self::Construction(error_chain(Some(e))),
            SdkError::TimeoutError(_) => Self::Timeout(error_chain(Some(e))),
            SdkError::DispatchFailure(d) if d.is_timeout() => Self::Timeout(error_chain(Some(e))),
            SdkError::DispatchFailure(d) if d.is_user() => Self::Construction(error_chain(Some(e))),
            SdkError::DispatchFailure(_) => Self::Transport(error_chain(Some(e))),
            SdkError::ResponseError(_) => Self::Response(error_chain(Some(e))),
            SdkError::ServiceError(context) => Self::Service {
                code: context.err().code().map(str::to_owned),
                message: context.err().message().map(str::to_owned),
                status: context.raw().status(),
            },
            _ => Self::Response(error_chain(Some(e))),
        }
    }

    /// Whether the queue does not exist (deleted, or a restarted server that keeps queues in
    /// memory): the sink creates it again and retries.
    pub(crate) fn is_missing_queue(&self) -> bool {
        matches!(self, Self::Service { code: Some(code), .. } if is_missing_queue_code(code))
    }

    /// The service's error code, if it answered.
    pub(crate) fn code(&self) -> Option<&str> {
        match self {
            Self::Service { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// The HTTP status of a raw response (implemented for the SDK's response type).
pub(crate) trait HasStatus {
    /// The status code.
    fn status(&self) -> u16;
}

impl HasStatus for aws_sdk_sqs::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

/// `QueueDoesNotExist` in the JSON protocol, `AWS.SimpleQueueService.NonExistentQueue` in the
/// query-compatible one.
pub(crate) fn is_missing_queue_code(code: &str) -> bool {
    matches!(
        code,
        "QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue"
    )
}

/// Classifies a failed call of `op`.
pub(crate) fn classify(op: Op<'_>, failure: &Failure) -> SinkError {
    match failure {
        Failure::Construction(detail) => error(
            ErrorKind::ConfigInvalid,
            format!("{op}: the request could not be built: {detail}"),
        ),
        Failure::Timeout(detail) => error(ErrorKind::Timeout, format!("{op}: no answer in time: {detail}")),
        Failure::Transport(detail) => error(
            ErrorKind::Unavailable,
            format!("{op}: cannot reach SQS (SQS_ENDPOINT / SQS_REGION): {detail}"),
        ),
        Failure::Response(detail) => error(
            ErrorKind::Unavailable,
            format!("{op}: unreadable answer: {detail}"),
        ),
        Failure::Service {
            code,
            message,
            status,
        } => classify_code(op, code.as_deref(), message.as_deref(), None).with_status(*status),
    }
}

/// Classifies an SQS error code (of a whole call, or of one batch entry with its `sender_fault`).
pub(crate) fn classify_code(
    op: Op<'_>,
    code: Option<&str>,
    message: Option<&str>,
    sender_fault: Option<bool>,
) -> SinkError {
    let code_text = code.unwrap_or("no error code");
    let (kind, retry, advice): (ErrorKind, Retry, &str) = match code.unwrap_or_default() {
        c if is_missing_queue_code(c) => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "; the queue is created again on the next attempt",
        ),
        "QueueDeletedRecently" | "AWS.SimpleQueueService.QueueDeletedRecently" => (
            ErrorKind::Unavailable,
            Retry::Backoff,
            "; SQS refuses to re-create a queue for 60 s after it was deleted",
        ),
        "RequestThrottled"
        | "AWS.SimpleQueueService.RequestThrottled"
        | "ThrottlingException"
        | "Throttling"
        | "OverLimit"
        | "KmsThrottled"
        | "KMS.ThrottlingException" => (ErrorKind::RateLimited, Retry::Backoff, ""),
        "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "ExpiredToken"
        | "AccessDenied"
        | "AccessDeniedException"
        | "InvalidSecurity"
        | "AWS.SimpleQueueService.InvalidSecurity"
        | "KmsAccessDenied"
        | "KMS.AccessDeniedException" => (
            ErrorKind::Unauthorized,
            Retry::Backoff,
            "; check SQS_ACCESS_KEY_ID / SQS_SECRET_ACCESS_KEY and the IAM policy (sqs:SendMessage, \
             sqs:GetQueueUrl, sqs:CreateQueue)",
        ),
        "KmsDisabled"
        | "KmsNotFound"
        | "KmsInvalidState"
        | "KmsInvalidKeyUsage"
        | "KmsOptInRequired"
        | "KMS.DisabledException"
        | "KMS.NotFoundException"
        | "KMS.InvalidStateException"
        | "KMS.KeyUsageException"
        | "KMS.OptInRequired" => (
            ErrorKind::ConfigInvalid,
            Retry::Backoff,
            "; the queue's KMS key cannot be used",
        ),
        "InvalidParameterValue"
        | "InvalidParameterCombination"
        | "InvalidMessageContents"
        | "MessageTooLong"
        | "AWS.SimpleQueueService.MessageTooLong"
        | "BatchRequestTooLong"
        | "AWS.SimpleQueueService.BatchRequestTooLong"
        | "InvalidAttributeName"
        | "InvalidAttributeValue"
        | "MissingParameter"
        | "ValidationError"
        | "UnsupportedOperation"
        | "AWS.SimpleQueueService.UnsupportedOperation"
        | "InvalidAddress"
        | "InvalidBatchEntryId"
        | "AWS.SimpleQueueService.InvalidBatchEntryId"
        | "BatchEntryIdsNotDistinct"
        | "AWS.SimpleQueueService.BatchEntryIdsNotDistinct" => (ErrorKind::Rejected, Retry::Never, ""),
        "InternalError" | "InternalFailure" | "ServiceUnavailable" | "KmsDisabledException" => {
            (ErrorKind::Unavailable, Retry::Backoff, "")
        }
        // An unknown code: the entry's fault flag says whose it is.
        _ => match sender_fault {
            Some(true) => (ErrorKind::Rejected, Retry::Never, ""),
            Some(false) => (ErrorKind::Unavailable, Retry::Backoff, ""),
            None => (ErrorKind::Unexpected, Retry::Backoff, ""),
        },
    };
    let detail = message.map(|m| format!(": {m}")).unwrap_or_default();
    error(kind, format!("{op} failed: {code_text}{detail}{advice}")).with_retry(retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(code: &str, sender_fault: Option<bool>) -> (ErrorKind, Retry) {
        let e = classify_code(Op::Send("q"), Some(code), Some("text"), sender_fault);
        (e.kind(), e.retry())
    }

    #[test]
    fn every_branch_of_the_table() {
        for code in ["QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"] {
            assert!(is_missing_queue_code(code));
            assert_eq!(of(code, None), (ErrorKind::Unavailable, Retry::Backoff));
        }
        assert_eq!(
            of("AWS.SimpleQueueService.QueueDeletedRecently", None),
            (ErrorKind::Unavailable, Retry::Backoff)
        );
        assert_eq!(
            of("RequestThrottled", None),
            (ErrorKind::RateLimited, Retry::Backoff)
        );
        assert_eq!(of("KmsThrottled", None), (ErrorKind::RateLimited, Retry::Backoff));
        for code in [
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "KmsAccessDenied",
        ] {
            assert_eq!(
                of(code, None),
                (ErrorKind::Unauthorized, Retry::Backoff),
                "{code}"
            );
        }
        assert_eq!(
            of("KmsNotFound", None),
            (ErrorKind::ConfigInvalid, Retry::Backoff)
        );
        for code in [
            "InvalidParameterValue",
            "InvalidMessageContents",
            "MessageTooLong",
            "BatchRequestTooLong",
        ] {
            assert_eq!(of(code, None), (ErrorKind::Rejected, Retry::Never), "{code}");
        }
        assert_eq!(
            of("InternalError", None),
            (ErrorKind::Unavailable, Retry::Backoff)
        );
        assert_eq!(of("Whatever", Some(true)), (ErrorKind::Rejected, Retry::Never));
        assert_eq!(
            of("Whatever", Some(false)),
            (ErrorKind::Unavailable, Retry::Backoff)
        );
        assert_eq!(of("Whatever", None), (ErrorKind::Unexpected, Retry::Backoff));
    }

    #[test]
    fn failures_of_the_transport() {
        let cases = [
            (Failure::Construction("x".into()), ErrorKind::ConfigInvalid, false),
            (Failure::Timeout("x".into()), ErrorKind::Timeout, true),
            (
                Failure::Transport("connection refused".into()),
                ErrorKind::Unavailable,
                true,
            ),
            (Failure::Response("x".into()), ErrorKind::Unavailable, true),
        ];
        for (failure, kind, retryable) in cases {
            let e = classify(Op::Health, &failure);
            assert_eq!((e.kind(), e.is_retryable()), (kind, retryable), "{failure:?}");
        }
        let service = Failure::Service {
            code: Some("QueueDoesNotExist".into()),
            message: Some("The specified queue does not exist.".into()),
            status: 400,
        };
        assert!(service.is_missing_queue());
        let e = classify(Op::Send("evolution-acme-call"), &service);
        assert_eq!(e.status(), Some(400));
        assert!(
            e.message()
                .starts_with("sending to queue \"evolution-acme-call\" failed: QueueDoesNotExist"),
            "{e}"
        );
        assert!(!Failure::Transport("x".into()).is_missing_queue());
    }
}
