//! [`SqsConfig`]: the settings of one [`SqsSink`](crate::SqsSink), and the SQS channel's variables
//! ([`SinkConfig`]).

use std::sync::Arc;
use std::time::Duration;

use evolution_events::{
    Channel, DispatchHints, EventSink, GlobalBroker, GlobalSettings, Sensitive, SinkConfig, SinkError, Var,
    Vars,
};

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

impl SinkConfig for SqsConfig {
    const CHANNEL: Channel = Channel::Sqs;

    const VARS: &'static [Var] = &[
        Var::new("SQS_ACCESS_KEY_ID", ""),
        Var::new("SQS_SECRET_ACCESS_KEY", ""),
        Var::new("SQS_ACCOUNT_ID", ""),
        Var::new("SQS_REGION", ""),
        Var::new("SQS_ENDPOINT", ""),
        Var::new("SQS_FIFO", "false"),
        Var::new("SQS_PREFIX_KEY", "evolution"),
        Var::new("SQS_GLOBAL_ENABLED", "false"),
        Var::new("SQS_GLOBAL_FORCE_SINGLE_QUEUE", "false"),
        Var::new("SQS_GLOBAL_PREFIX_NAME", "global"),
        Var::new("SQS_MAX_PAYLOAD_SIZE", "1048576"),
    ];

    const EVENT_TOGGLES: &'static [&'static str] = &["SQS_GLOBAL_", "SQS_EVENTS_"];

    /// `SQS_ENABLED`, `SQS_GLOBAL_ENABLED`, `SQS_GLOBAL_<KEY>` (Evolution API's name) and
    /// `SQS_EVENTS_<KEY>` (every other channel's form; an event either selects is selected),
    /// `SQS_PREFIX_KEY`, `SQS_GLOBAL_FORCE_SINGLE_QUEUE`, `SQS_GLOBAL_PREFIX_NAME`, `SQS_FIFO`.
    fn read_global(vars: &mut Vars, global: &mut GlobalSettings) {
        let sqs = &mut global.sqs;
        sqs.broker = GlobalBroker::from_vars(vars, Self::CHANNEL, "SQS_GLOBAL_", "SQS_PREFIX_KEY");
        sqs.broker.events.extend(vars.events("SQS_EVENTS_"));
        sqs.force_single_queue = vars.bool("SQS_GLOBAL_FORCE_SINGLE_QUEUE");
        sqs.global_prefix = vars.raw("SQS_GLOBAL_PREFIX_NAME").trim().to_owned();
        sqs.fifo = vars.bool("SQS_FIFO");
    }

    /// `SQS_REGION`, `SQS_ACCESS_KEY_ID`, `SQS_SECRET_ACCESS_KEY`, `SQS_ENDPOINT`, `SQS_ACCOUNT_ID`,
    /// `SQS_MAX_PAYLOAD_SIZE`; only with `SQS_ENABLED=true`. Without `SQS_REGION`, an `SQS_ENDPOINT`
    /// (an SQS-compatible server) implies `us-east-1`.
    fn from_vars(vars: &mut Vars, global: &GlobalSettings) -> Option<(Self, DispatchHints)> {
        if !global.enabled(Self::CHANNEL) {
            return None;
        }
        let endpoint = vars.string("SQS_ENDPOINT");
        if let Some(e) = &endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            vars.error(format!("SQS_ENDPOINT=`{e}` must be an http:// or https:// URL"));
        }
        let region = match (vars.string("SQS_REGION"), &endpoint) {
            (Some(region), _) => region,
            (None, Some(_)) => "us-east-1".to_owned(),
            (None, None) => {
                vars.error(
                    "SQS_ENABLED=true needs SQS_REGION (e.g. us-east-1); set it, or set SQS_ENABLED=false",
                );
                String::new()
            }
        };
        let credentials = match (
            vars.string("SQS_ACCESS_KEY_ID"),
            vars.string("SQS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => Some(SqsCredentials::new(id, secret)),
            (None, None) => None,
            // The secret is never repeated.
            _ => {
                vars.error(
                    "SQS_ACCESS_KEY_ID and SQS_SECRET_ACCESS_KEY go together: set both, or neither (the AWS \
                     default credential chain)",
                );
                None
            }
        };
        let max_payload_bytes = usize::try_from(vars.positive("SQS_MAX_PAYLOAD_SIZE")).unwrap_or(usize::MAX);
        if !(2048..=Self::SQS_LIMIT_BYTES).contains(&max_payload_bytes) {
            vars.error(format!(
                "SQS_MAX_PAYLOAD_SIZE={max_payload_bytes} must be between 2048 and {} bytes (SQS's limit); \
                 larger events are refused per delivery",
                Self::SQS_LIMIT_BYTES
            ));
        }
        let config = Self {
            credentials,
            endpoint,
            account_id: vars.string("SQS_ACCOUNT_ID"),
            max_payload_bytes,
            ..Self::new(region)
        };
        let dispatch = DispatchHints {
            // Up to three calls in a row per queue (look up, create, send), each bounded by the
            // operation timeout; this deadline is a safety net above them.
            send_timeout: Some(config.operation_timeout.saturating_mul(3) + Duration::from_secs(5)),
            ..DispatchHints::default()
        };
        Some((config, dispatch))
    }

    fn into_sink(self) -> Result<Arc<dyn EventSink>, SinkError> {
        Ok(Arc::new(crate::SqsSink::new(self)?))
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

    fn enabled() -> GlobalSettings {
        let mut global = GlobalSettings::default();
        global.sqs.broker.enabled = true;
        global
    }

    #[test]
    fn read_only_when_enabled_and_built_without_connecting() {
        let mut v = Vars::with_defaults(SqsConfig::VARS, [("SQS_SECRET_ACCESS_KEY", "hunter3")]);
        assert!(SqsConfig::from_vars(&mut v, &GlobalSettings::default()).is_none());
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        let mut v = Vars::with_defaults(
            SqsConfig::VARS,
            [
                ("SQS_ENDPOINT", "http://127.0.0.1:5000"),
                ("SQS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ("SQS_SECRET_ACCESS_KEY", "hunter3"),
            ],
        );
        let (sqs, dispatch) = SqsConfig::from_vars(&mut v, &enabled()).unwrap();
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        assert!(!format!("{sqs:?}").contains("hunter3"), "{sqs:?}");
        assert_eq!(
            sqs.region, "us-east-1",
            "an endpoint without a region implies us-east-1"
        );
        assert_eq!(dispatch.send_timeout, Some(Duration::from_secs(65)));
        assert!(sqs.into_sink().is_ok());
    }

    #[test]
    fn bad_values_are_reported_by_variable_without_secrets() {
        let mut v = Vars::with_defaults(
            SqsConfig::VARS,
            [
                ("SQS_SECRET_ACCESS_KEY", "hunter3"),
                ("SQS_MAX_PAYLOAD_SIZE", "2000000"),
            ],
        );
        let _ = SqsConfig::from_vars(&mut v, &enabled());
        let text = v.errors().join("\n");
        for needle in [
            "SQS_ENABLED=true needs SQS_REGION",
            "SQS_ACCESS_KEY_ID and SQS_SECRET_ACCESS_KEY go together",
            "SQS_MAX_PAYLOAD_SIZE=2000000",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
        assert!(!text.contains("hunter"), "{text}");
    }
}
