//! [`SqsConfig`]: the settings of one [`SqsSink`](crate::SqsSink).

use std::time::Duration;

use evolution_events::Sensitive;

/// Settings of an [`SqsSink`](crate::SqsSink): the account, region and endpoint. Queue names come
/// with each delivery; their URLs are resolved through the API.
///
/// ```
/// use evolution_sink_sqs::{SqsConfig, SqsCredentials};
///
/// let config = SqsConfig {
///     endpoint: Some("http://127.0.0.1:5000".into()), // SQS_ENDPOINT (moto, LocalStack, …)
///     credentials: Some(SqsCredentials::new("test", "test")),
///     ..SqsConfig::new("us-east-1")
/// };
/// assert_eq!(config.max_payload_bytes, 1_048_576);
/// ```
///
/// `Debug` never shows the secret access key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqsConfig {
    /// AWS region (`SQS_REGION`), e.g. `us-east-1`.
    pub region: String,
    /// Static credentials (`SQS_ACCESS_KEY_ID`, `SQS_SECRET_ACCESS_KEY`); `None` uses the AWS
    /// default chain (environment, profile, web identity, container and instance roles).
    pub credentials: Option<SqsCredentials>,
    /// Endpoint override (`SQS_ENDPOINT`): an SQS-compatible server. `None`: AWS.
    pub endpoint: Option<String>,
    /// Account that owns the queues (`SQS_ACCOUNT_ID`), when it is not the caller's: passed to
    /// `GetQueueUrl` as the queue owner. URLs are always resolved through the API.
    pub account_id: Option<String>,
    /// The largest message, body and attributes (`SQS_MAX_PAYLOAD_SIZE`, default 1 MiB: SQS's
    /// limit). Larger events are rejected per item, never dropped silently.
    pub max_payload_bytes: usize,
    /// How long connecting may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long one API call may take, including reading the answer (default 20 s).
    pub operation_timeout: Duration,
}

impl SqsConfig {
    /// SQS's message size limit, and the default `SQS_MAX_PAYLOAD_SIZE`: 1 MiB.
    pub const SQS_LIMIT_BYTES: usize = 1_048_576;
    /// The default connect timeout: 5 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default timeout of one API call: 20 s.
    pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(20);

    /// The defaults for `region`: the default credential chain, AWS's endpoint, the caller's
    /// account, 1 MiB messages, 5 s to connect, 20 s per call.
    #[must_use]
    pub fn new(region: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            credentials: None,
            endpoint: None,
            account_id: None,
            max_payload_bytes: Self::SQS_LIMIT_BYTES,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            operation_timeout: Self::DEFAULT_OPERATION_TIMEOUT,
        }
    }
}

/// Static AWS credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqsCredentials {
    /// `SQS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `SQS_SECRET_ACCESS_KEY` (never shown).
    pub secret_access_key: Sensitive,
}

impl SqsCredentials {
    /// Credentials from a key id and its secret.
    #[must_use]
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: Sensitive::new(secret_access_key.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret() {
        let config = SqsConfig {
            credentials: Some(SqsCredentials::new("AKIDEXAMPLE", "hunter2")),
            ..SqsConfig::new("sa-east-1")
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("AKIDEXAMPLE"),
            "{shown}"
        );
    }
}
