//! Configuration: defaults ← optional TOML file (`--config`) ← environment, with the
//! specification's variable names. Every malformed value is reported, naming the variable and
//! what it accepts; startup stops on any.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use evolution_events::{EventKind, GlobalSettings, InstanceName, NamingProfile, PusherApp, Sensitive};
#[cfg(feature = "postgres")]
use evolution_outbox::PostgresOptions;
use evolution_outbox::{DEFAULT_RETENTION, Durability};
use evolution_sinks::build::ChannelPlan;
use evolution_sinks::env::Vars;
#[cfg(feature = "webhook")]
use evolution_sinks::webhook::network::Guard;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;

/// Variables the server reads (besides the per-event toggles), with their defaults. A `None`
/// default means "unset".
const KNOWN: &[(&str, Option<&str>)] = &[
    ("SERVER_PORT", Some("8080")),
    ("SERVER_HOST", Some("0.0.0.0")),
    ("SERVER_URL", None),
    ("SERVER_NAME", Some("evolution")),
    ("SERVER_DATA_DIR", Some("./data")),
    ("DATABASE_CONNECTION_URI", None),
    ("OUTBOX_SYNCHRONOUS", Some("full")),
    ("OUTBOX_RETENTION", Some("24h")),
    ("OUTBOX_SCHEMA", Some("evolution_events")),
    ("OUTBOX_LEASE", Some("10s")),
    ("OUTBOX_POOL_SIZE", Some("16")),
    ("AUTHENTICATION_API_KEY", None),
    ("AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES", Some("false")),
    ("EVENT_NAMING", Some("seed")),
    ("EVENTS_MAX_PER_REQUEST", Some("1000")),
    ("EVENTS_MAX_BODY_BYTES", Some("10485760")),
    ("EVENTS_MAX_BACKLOG", Some("1000000")),
    ("SHUTDOWN_TIMEOUT_SECONDS", Some("25")),
    ("WEBHOOK_GLOBAL_ENABLED", Some("false")),
    ("WEBHOOK_GLOBAL_URL", Some("")),
    ("WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS", Some("false")),
    ("WEBHOOK_EVENTS_ERRORS_WEBHOOK", Some("")),
    ("WEBHOOK_REQUEST_TIMEOUT_MS", Some("60000")),
    ("WEBHOOK_RETRY_MAX_ATTEMPTS", Some("10")),
    ("WEBHOOK_RETRY_INITIAL_DELAY_SECONDS", Some("5")),
    ("WEBHOOK_RETRY_USE_EXPONENTIAL_BACKOFF", Some("true")),
    ("WEBHOOK_RETRY_MAX_DELAY_SECONDS", Some("300")),
    ("WEBHOOK_RETRY_JITTER_FACTOR", Some("0.2")),
    (
        "WEBHOOK_RETRY_NON_RETRYABLE_STATUS_CODES",
        Some("400,401,403,404,422"),
    ),
    ("WEBHOOK_WORKERS", Some("16")),
    ("WEBHOOK_ORDERED", Some("true")),
    ("WEBHOOK_ALLOWED_NETWORKS", Some("")),
    ("WEBHOOK_MAX_CONCURRENCY_PER_HOST", Some("32")),
    ("WEBHOOK_SIGNING_SECRET", Some("")),
    ("WEBSOCKET_ENABLED", Some("false")),
    ("WEBSOCKET_GLOBAL_EVENTS", Some("false")),
    ("WEBSOCKET_ALLOWED_HOSTS", Some("127.0.0.1,::1,::ffff:127.0.0.1")),
    ("WEBSOCKET_REPLAY_MAX", Some("500")),
    // Evolution API's Redis: the websocket channel's meeting point across replicas (ADR 0015).
    // Its other CACHE_* variables (TTL, SAVE_INSTANCES, CACHE_LOCAL_*) are not ours.
    ("CACHE_REDIS_ENABLED", Some("false")),
    ("CACHE_REDIS_URI", Some("")),
    ("CACHE_REDIS_PREFIX_KEY", Some("evolution")),
    ("RABBITMQ_ENABLED", Some("false")),
    ("RABBITMQ_URI", Some("")),
    ("RABBITMQ_EXCHANGE_NAME", Some("evolution")),
    ("RABBITMQ_GLOBAL_ENABLED", Some("false")),
    ("RABBITMQ_PREFIX_KEY", Some("evolution")),
    ("RABBITMQ_FRAME_MAX", Some("8192")),
    ("RABBITMQ_QUEUE_TYPE", Some("quorum")),
    ("SQS_ENABLED", Some("false")),
    ("SQS_ACCESS_KEY_ID", Some("")),
    ("SQS_SECRET_ACCESS_KEY", Some("")),
    ("SQS_ACCOUNT_ID", Some("")),
    ("SQS_REGION", Some("")),
    ("SQS_ENDPOINT", Some("")),
    ("SQS_FIFO", Some("false")),
    ("SQS_PREFIX_KEY", Some("evolution")),
    ("SQS_GLOBAL_ENABLED", Some("false")),
    ("SQS_GLOBAL_FORCE_SINGLE_QUEUE", Some("false")),
    ("SQS_GLOBAL_PREFIX_NAME", Some("global")),
    ("SQS_MAX_PAYLOAD_SIZE", Some("1048576")),
    ("KAFKA_ENABLED", Some("false")),
    ("KAFKA_CLIENT_ID", Some("evolution-api")),
    ("KAFKA_BROKERS", Some("localhost:9092")),
    ("KAFKA_CONNECTION_TIMEOUT", Some("3000")),
    ("KAFKA_REQUEST_TIMEOUT", Some("30000")),
    ("KAFKA_GLOBAL_ENABLED", Some("false")),
    ("KAFKA_CONSUMER_GROUP_ID", Some("evolution-api-consumers")),
    ("KAFKA_TOPIC_PREFIX", Some("evolution")),
    ("KAFKA_NUM_PARTITIONS", Some("1")),
    ("KAFKA_REPLICATION_FACTOR", Some("1")),
    ("KAFKA_AUTO_CREATE_TOPICS", Some("false")),
    ("KAFKA_SASL_ENABLED", Some("false")),
    ("KAFKA_SASL_MECHANISM", Some("plain")),
    ("KAFKA_SASL_USERNAME", Some("")),
    ("KAFKA_SASL_PASSWORD", Some("")),
    ("KAFKA_SSL_ENABLED", Some("false")),
    ("KAFKA_SSL_REJECT_UNAUTHORIZED", Some("true")),
    ("KAFKA_SSL_CA", Some("")),
    ("KAFKA_SSL_KEY", Some("")),
    ("KAFKA_SSL_CERT", Some("")),
    ("KAFKA_LINGER_MS", Some("1")),
    ("KAFKA_COMPRESSION", Some("none")),
    ("KAFKA_IDEMPOTENCE", Some("true")),
    ("NATS_ENABLED", Some("false")),
    ("NATS_URI", Some("")),
    ("NATS_GLOBAL_ENABLED", Some("false")),
    ("NATS_PREFIX_KEY", Some("evolution")),
    ("NATS_JETSTREAM", Some("false")),
    ("NATS_JETSTREAM_STREAM", Some("EVOLUTION")),
    ("PUSHER_ENABLED", Some("false")),
    ("PUSHER_GLOBAL_ENABLED", Some("false")),
    ("PUSHER_GLOBAL_APP_ID", Some("")),
    ("PUSHER_GLOBAL_KEY", Some("")),
    ("PUSHER_GLOBAL_SECRET", Some("")),
    ("PUSHER_GLOBAL_CLUSTER", Some("")),
    ("PUSHER_GLOBAL_USE_TLS", Some("false")),
    ("PUSHER_HOST", Some("")),
    ("PUSHER_PORT", Some("")),
    ("PUSHER_MAX_PAYLOAD_BYTES", Some("10240")),
    ("PUSHER_OVERSIZE", Some("reject")),
    ("PUSHER_BATCH_EVENTS", Some("true")),
    ("PUSHER_REQUEST_TIMEOUT_MS", Some("10000")),
];

/// Prefixes of per-event toggles: `<PREFIX><KEY>` (`SQS_GLOBAL_<KEY>` for SQS).
const TOGGLE_PREFIXES: &[&str] = &[
    "WEBHOOK_EVENTS_",
    "RABBITMQ_EVENTS_",
    "KAFKA_EVENTS_",
    "NATS_EVENTS_",
    "PUSHER_EVENTS_",
    "SQS_GLOBAL_",
];

/// Where instances and the outbox live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Database {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by every replica (`DATABASE_CONNECTION_URI=postgresql://…`),
    /// the outbox's tables in `schema` (`OUTBOX_SCHEMA`).
    #[cfg(feature = "postgres")]
    Postgres {
        /// The connection URI (it may hold a password).
        uri: Sensitive,
        /// The schema of the outbox's tables.
        schema: String,
        /// How long a replica's claims outlive its last heartbeat (`OUTBOX_LEASE`).
        lease: Duration,
        /// Connections per replica (`OUTBOX_POOL_SIZE`; the LISTEN connection comes on top).
        pool_size: u32,
    },
}

/// The effective configuration.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) host: IpAddr,
    pub(crate) port: u16,
    pub(crate) server_url: Option<String>,
    pub(crate) server_name: InstanceName,
    pub(crate) data_dir: PathBuf,
    pub(crate) database: Database,
    /// What an acknowledged event survives (`OUTBOX_SYNCHRONOUS`).
    pub(crate) durability: Durability,
    /// How long delivered deliveries stay in the delivery log (`OUTBOX_RETENTION`).
    pub(crate) retention: Duration,
    pub(crate) api_key: Option<Sensitive>,
    pub(crate) expose_in_fetch: bool,
    pub(crate) global: GlobalSettings,
    /// One per channel this build delivers to.
    pub(crate) channels: Vec<ChannelPlan>,
    /// Which special-purpose networks webhook URLs may point to (`WEBHOOK_ALLOWED_NETWORKS`).
    #[cfg(feature = "webhook")]
    pub(crate) webhook_guard: Guard,
    pub(crate) max_events_per_request: usize,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_backlog: usize,
    pub(crate) shutdown_timeout: Duration,
    /// Every effective value, by variable name (for `config check`).
    values: BTreeMap<String, String>,
}

/// Every problem found in the configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub(crate) struct ConfigError(pub(crate) Vec<String>);

fn is_secret(name: &str) -> bool {
    ["API_KEY", "SECRET", "PASSWORD", "SSL_KEY", "ACCESS_KEY_ID"]
        .iter()
        .any(|s| name.contains(s))
}

fn has_credentials(name: &str) -> bool {
    name.ends_with("_URI") || name == "WEBHOOK_GLOBAL_URL" || name == "WEBHOOK_EVENTS_ERRORS_WEBHOOK"
}

/// `user:pass@` and query strings hidden.
fn redact_url(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut u) if u.has_host() => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ignored = u.set_username("***");
                let _ignored = u.set_password(None);
            }
            if u.query().is_some() {
                u.set_query(Some("***"));
            }
            u.into()
        }
        _ => value.to_owned(),
    }
}

fn value_to_string(name: &str, value: &Value, errors: &mut Vec<String>) -> Option<String> {
    Some(match value {
        Value::String(_, s) => s.clone(),
        Value::Char(_, c) => c.to_string(),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match (n.to_i128(), n.to_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) => f.to_string(),
            _ => {
                errors.push(format!("{name}: unsupported number"));
                return None;
            }
        },
        Value::Empty(_, _) => String::new(),
        Value::Array(_, items) => {
            let parts: Option<Vec<String>> = items.iter().map(|v| value_to_string(name, v, errors)).collect();
            parts?.join(",")
        }
        Value::Dict(_, _) => {
            errors.push(format!(
                "{name}: a table is not a setting; the file uses flat keys named like the environment variables"
            ));
            return None;
        }
    })
}

fn is_known(name: &str) -> bool {
    KNOWN.iter().any(|(k, _)| *k == name)
        || TOGGLE_PREFIXES
            .iter()
            .any(|p| name.strip_prefix(p).is_some_and(|k| EventKind::parse(k).is_ok()))
        || name == "WEBHOOK_EVENTS_ERRORS"
}

fn is_ours(name: &str) -> bool {
    is_known(name)
        || [
            "SERVER_",
            "AUTHENTICATION_",
            "DATABASE_",
            "OUTBOX_",
            "WEBHOOK_",
            "WEBSOCKET_",
            "RABBITMQ_",
            "SQS_",
            "KAFKA_",
            "NATS_",
            "PUSHER_",
            "EVENTS_",
        ]
        .iter()
        .any(|p| name.starts_with(p))
}

/// A duration such as `90s`, `30m`, `24h` or `7d` (a bare number is seconds).
fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let seconds = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if seconds > 0 => Ok(Duration::from_secs(n.saturating_mul(seconds))),
        _ => Err(format!(
            "`{value}` is not a duration: use a whole number with s, m, h or d (e.g. 90s, 30m, 24h, 7d)"
        )),
    }
}

impl Config {
    /// Loads defaults ← `file` (TOML, flat keys named like the variables, any case) ← `env`.
    pub(crate) fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let defaults: BTreeMap<String, String> = KNOWN
            .iter()
            .filter_map(|(k, v)| v.map(|v| ((*k).to_owned(), v.to_owned())))
            .collect();
        let env: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| is_ours(k)).collect();
        let mut errors = Vec::new();
        let mut file_values: BTreeMap<String, String> = BTreeMap::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(vec![format!(
                    "--config {}: no such file; give the path of a TOML file",
                    path.display()
                )]));
            }
            let table: BTreeMap<String, Value> = Figment::from(Toml::file(path))
                .extract()
                .map_err(|e| ConfigError(vec![format!("--config {}: {e}", path.display())]))?;
            for (key, value) in table {
                let name = key.to_ascii_uppercase();
                if !is_known(&name) {
                    errors.push(format!("{name}: unknown setting in the configuration file"));
                } else if let Some(v) = value_to_string(&name, &value, &mut errors) {
                    file_values.insert(name, v);
                }
            }
        }
        for name in env.keys().filter(|k| !is_known(k)) {
            tracing::warn!(variable = %name, "ignoring an unknown variable");
        }
        let env: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| is_known(k)).collect();
        // defaults ← file ← environment, every value a string (no number guessing: `0123` stays `0123`).
        let values: BTreeMap<String, String> = Figment::from(Serialized::defaults(&defaults))
            .merge(Serialized::globals(&file_values))
            .merge(Serialized::globals(&env))
            .extract()
            .map_err(|e| ConfigError(vec![format!("cannot read the configuration: {e}")]))?;
        let mut vars = Vars::new(values);
        for e in errors {
            vars.error(e);
        }
        match Self::parse(&mut vars) {
            Some(config) if vars.errors().is_empty() => Ok(config),
            _ => Err(ConfigError(vars.errors().to_vec())),
        }
    }

    fn parse(v: &mut Vars) -> Option<Self> {
        let port: u16 = v.number("SERVER_PORT", "a port number (1 to 65535)");
        let host: IpAddr = match v.raw("SERVER_HOST").trim().parse() {
            Ok(h) => h,
            Err(_) => {
                let raw = v.raw("SERVER_HOST").to_owned();
                v.error(format!(
                    "SERVER_HOST=`{raw}` is not an IP address (e.g. 0.0.0.0 or 127.0.0.1)"
                ));
                IpAddr::from([0, 0, 0, 0])
            }
        };
        let named = InstanceName::new(v.raw("SERVER_NAME").trim()).or_else(|e| {
            v.error(format!("SERVER_NAME (the instance of server-wide events): {e}"));
            InstanceName::new("evolution")
        });
        let Ok(server_name) = named else {
            return None;
        };
        let data_dir = PathBuf::from(v.raw("SERVER_DATA_DIR"));
        let database = match v.string("DATABASE_CONNECTION_URI") {
            None => Database::Sqlite(data_dir.join("evolution.db")),
            Some(uri) => {
                let lower = uri.to_ascii_lowercase();
                if let Some(path) = uri
                    .strip_prefix("sqlite://")
                    .or_else(|| uri.strip_prefix("sqlite:"))
                {
                    Database::Sqlite(PathBuf::from(path.split('?').next().unwrap_or(path)))
                } else if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
                    #[cfg(feature = "postgres")]
                    let database = {
                        // The parser's messages never repeat the URI (it may hold a password).
                        if let Err(e) = url::Url::parse(&uri) {
                            v.error(format!(
                                "DATABASE_CONNECTION_URI: not a valid PostgreSQL URI ({e}); expected \
                                 postgresql://user:password@host:5432/database"
                            ));
                        }
                        let schema = v.raw("OUTBOX_SCHEMA").trim().to_owned();
                        if let Err(e) = PostgresOptions::check_schema(&schema) {
                            v.error(format!("OUTBOX_SCHEMA: {e}"));
                        }
                        let lease = parse_duration(v.raw("OUTBOX_LEASE")).unwrap_or_else(|e| {
                            v.error(format!("OUTBOX_LEASE: {e}"));
                            Duration::from_secs(10)
                        });
                        let pool_size = u32::try_from(v.positive("OUTBOX_POOL_SIZE")).unwrap_or(u32::MAX);
                        Database::Postgres {
                            uri: Sensitive::new(uri),
                            schema,
                            lease,
                            pool_size,
                        }
                    };
                    #[cfg(not(feature = "postgres"))]
                    let database = {
                        v.error(
                            "DATABASE_CONNECTION_URI: this server was built without PostgreSQL support (cargo \
                             feature `postgres` of evolution-server); build it with that feature, or use sqlite://PATH",
                        );
                        Database::Sqlite(data_dir.join("evolution.db"))
                    };
                    database
                } else {
                    let scheme = lower.split(':').next().unwrap_or_default();
                    v.error(format!(
                        "DATABASE_CONNECTION_URI: the `{scheme}` scheme is not supported; use \
                         postgresql://user:password@host:5432/database (replicas sharing one database) or \
                         sqlite://PATH (the default is sqlite://{}/evolution.db)",
                        data_dir.display()
                    ));
                    Database::Sqlite(data_dir.join("evolution.db"))
                }
            }
        };
        let durability = Durability::parse(v.raw("OUTBOX_SYNCHRONOUS")).unwrap_or_else(|e| {
            v.error(format!("OUTBOX_SYNCHRONOUS: {e}"));
            Durability::default()
        });
        let retention = parse_duration(v.raw("OUTBOX_RETENTION")).unwrap_or_else(|e| {
            v.error(format!("OUTBOX_RETENTION: {e}"));
            DEFAULT_RETENTION
        });
        let naming = match NamingProfile::parse(v.raw("EVENT_NAMING")) {
            Ok(p) => p,
            Err(e) => {
                v.error(format!("EVENT_NAMING: {e}"));
                NamingProfile::Seed
            }
        };
        let mut global = GlobalSettings {
            naming,
            ..GlobalSettings::default()
        };
        global.webhook.enabled = v.bool("WEBHOOK_GLOBAL_ENABLED");
        global.webhook.url = v.raw("WEBHOOK_GLOBAL_URL").trim().to_owned();
        global.webhook.by_events = v.bool("WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS");
        global.webhook.events = v.events("WEBHOOK_EVENTS_");
        if v.values().contains_key("WEBHOOK_EVENTS_ERRORS")
            && global.webhook.events.contains(&EventKind::Errors)
        {
            global.webhook.errors_url = v.string("WEBHOOK_EVENTS_ERRORS_WEBHOOK");
        }
        global.websocket.enabled = v.bool("WEBSOCKET_ENABLED");
        global.websocket.global_events = v.bool("WEBSOCKET_GLOBAL_EVENTS");
        global.rabbitmq.enabled = v.bool("RABBITMQ_ENABLED");
        global.rabbitmq.global_enabled = v.bool("RABBITMQ_GLOBAL_ENABLED");
        global.rabbitmq.events = v.events("RABBITMQ_EVENTS_");
        global.rabbitmq.prefix = v.raw("RABBITMQ_PREFIX_KEY").trim().to_owned();
        global.rabbitmq_exchange = v.raw("RABBITMQ_EXCHANGE_NAME").trim().to_owned();
        global.sqs.broker.enabled = v.bool("SQS_ENABLED");
        global.sqs.broker.global_enabled = v.bool("SQS_GLOBAL_ENABLED");
        global.sqs.broker.events = v.events("SQS_GLOBAL_");
        global.sqs.broker.prefix = v.raw("SQS_PREFIX_KEY").trim().to_owned();
        global.sqs.force_single_queue = v.bool("SQS_GLOBAL_FORCE_SINGLE_QUEUE");
        global.sqs.global_prefix = v.raw("SQS_GLOBAL_PREFIX_NAME").trim().to_owned();
        global.sqs.fifo = v.bool("SQS_FIFO");
        global.kafka.enabled = v.bool("KAFKA_ENABLED");
        global.kafka.global_enabled = v.bool("KAFKA_GLOBAL_ENABLED");
        global.kafka.events = v.events("KAFKA_EVENTS_");
        global.kafka.prefix = v.raw("KAFKA_TOPIC_PREFIX").trim().to_owned();
        global.nats.enabled = v.bool("NATS_ENABLED");
        global.nats.global_enabled = v.bool("NATS_GLOBAL_ENABLED");
        global.nats.events = v.events("NATS_EVENTS_");
        global.nats.prefix = v.raw("NATS_PREFIX_KEY").trim().to_owned();
        global.pusher.enabled = v.bool("PUSHER_ENABLED");
        global.pusher.global_enabled = v.bool("PUSHER_GLOBAL_ENABLED");
        global.pusher.events = v.events("PUSHER_EVENTS_");
        global.pusher.host = v.string("PUSHER_HOST");
        global.pusher.port = v
            .string("PUSHER_PORT")
            .map(|_| v.number("PUSHER_PORT", "a port number"));
        let use_tls = v.bool("PUSHER_GLOBAL_USE_TLS");
        if let (Some(app_id), Some(key), Some(secret), Some(cluster)) = (
            v.string("PUSHER_GLOBAL_APP_ID"),
            v.string("PUSHER_GLOBAL_KEY"),
            v.string("PUSHER_GLOBAL_SECRET"),
            v.string("PUSHER_GLOBAL_CLUSTER"),
        ) {
            global.pusher.app = Some(PusherApp {
                app_id,
                key,
                secret: Sensitive::new(secret),
                cluster,
                use_tls,
                host: None,
                port: None,
            });
        }
        let secrets: Vec<String> = v
            .raw("WEBHOOK_SIGNING_SECRET")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        for secret in secrets {
            match evolution_events::check_signing_secret(&secret) {
                Ok(()) => global.webhook.signing_secrets.push(Sensitive::new(secret)),
                Err(why) => v.error(format!(
                    "WEBHOOK_SIGNING_SECRET: {why} (comma-separate several during a rotation)"
                )),
            }
        }
        #[cfg(feature = "webhook")]
        let webhook_guard = {
            let mut allowed = Vars::new(v.values().clone());
            Guard::new(evolution_sinks::build::allowed_networks(&mut allowed))
        };
        let channels = evolution_sinks::build::plan(v, &global);
        let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Some(Self {
            host,
            port,
            server_url: v.string("SERVER_URL"),
            server_name,
            database,
            durability,
            retention,
            api_key: v.string("AUTHENTICATION_API_KEY").map(Sensitive::new),
            expose_in_fetch: v.bool("AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES"),
            global,
            channels,
            #[cfg(feature = "webhook")]
            webhook_guard,
            max_events_per_request: as_usize(v.positive("EVENTS_MAX_PER_REQUEST")),
            max_body_bytes: as_usize(v.positive("EVENTS_MAX_BODY_BYTES")),
            max_backlog: as_usize(v.positive("EVENTS_MAX_BACKLOG")),
            shutdown_timeout: Duration::from_secs(v.positive("SHUTDOWN_TIMEOUT_SECONDS")),
            data_dir,
            values: v.values().clone(),
        })
    }

    /// The effective configuration, one `NAME=value` per line, secrets redacted.
    pub(crate) fn report(&self) -> String {
        let mut out = String::new();
        for (name, value) in &self.values {
            let shown = if is_secret(name) && !value.is_empty() {
                evolution_events::REDACTED.to_owned()
            } else if has_credentials(name) {
                redact_url(value)
            } else {
                value.clone()
            };
            let _ignored = writeln!(out, "{name}={shown}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[cfg(feature = "webhook")]
    #[test]
    fn defaults_need_no_environment() {
        let c = Config::load(None, env(&[("PATH", "/bin")])).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.database, Database::Sqlite(PathBuf::from("./data/evolution.db")));
        let webhook = &c.channels[0];
        assert_eq!(webhook.channel(), evolution_events::Channel::Webhook);
        assert_eq!(webhook.dispatch.retry, evolution_events::RetryPolicy::default());
        assert!(!c.global.webhook.enabled);
        assert_eq!(c.global.naming, NamingProfile::Seed);
    }

    #[cfg(feature = "webhook")]
    #[test]
    fn seed_variables_parse_strictly() {
        let c = Config::load(
            None,
            env(&[
                ("WEBHOOK_GLOBAL_ENABLED", "TRUE"),
                ("WEBHOOK_GLOBAL_URL", "https://u:p@hooks.example/wa?token=s3cret"),
                ("WEBHOOK_EVENTS_MESSAGES_UPSERT", "yes"),
                ("WEBHOOK_EVENTS_GROUPS_UPDATE", "1"),
                ("WEBHOOK_EVENTS_CALL", "no"),
                ("WEBHOOK_RETRY_MAX_ATTEMPTS", "3"),
                ("WEBHOOK_RETRY_NON_RETRYABLE_STATUS_CODES", "400, 410"),
                ("AUTHENTICATION_API_KEY", "0123-secret"),
                ("EVENT_NAMING", "evolution-v2"),
            ]),
        )
        .unwrap();
        assert!(c.global.webhook.enabled);
        assert_eq!(
            c.global.webhook.events,
            BTreeSet::from([EventKind::MessagesUpsert, EventKind::GroupsUpdate])
        );
        assert_eq!(c.channels[0].dispatch.retry.max_attempts, Some(3));
        assert_eq!(
            c.channels[0].dispatch.retry.non_retryable_status_codes,
            [400, 410]
        );
        assert_eq!(
            c.api_key.as_ref().map(Sensitive::expose),
            Some("0123-secret"),
            "no numeric mangling"
        );
        assert_eq!(c.global.naming, NamingProfile::EvolutionV2);
        let report = c.report();
        assert!(
            !report.contains("0123-secret") && !report.contains("s3cret") && !report.contains("u:p@"),
            "{report}"
        );
        assert!(report.contains("AUTHENTICATION_API_KEY=**REDACTED**"));
    }

    #[cfg(feature = "webhook")]
    #[test]
    fn every_bad_value_is_reported_by_name() {
        let err = Config::load(
            None,
            env(&[
                ("SERVER_PORT", "80a"),
                ("WEBHOOK_GLOBAL_ENABLED", "TRUE1"),
                ("WEBHOOK_RETRY_JITTER_FACTOR", "2"),
                ("WEBHOOK_RETRY_NON_RETRYABLE_STATUS_CODES", "400,abc"),
                ("EVENT_NAMING", "v3"),
                ("DATABASE_CONNECTION_URI", "mysql://x"),
                ("RABBITMQ_ENABLED", "true"),
                ("WEBHOOK_EVENTS_MESSAGES_UPSERT", "maybe"),
                ("OUTBOX_SYNCHRONOUS", "off"),
                ("OUTBOX_RETENTION", "3 weeks"),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "SERVER_PORT=`80a`",
            "WEBHOOK_GLOBAL_ENABLED=`TRUE1` is not a boolean",
            "WEBHOOK_RETRY_JITTER_FACTOR",
            "WEBHOOK_RETRY_NON_RETRYABLE_STATUS_CODES",
            "EVENT_NAMING",
            "DATABASE_CONNECTION_URI",
            "RABBITMQ_ENABLED=true",
            "WEBHOOK_EVENTS_MESSAGES_UPSERT=`maybe`",
            "OUTBOX_SYNCHRONOUS: `off` is not a durability setting",
            "OUTBOX_RETENTION: `3 weeks` is not a duration",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
    }

    /// A build without PostgreSQL refuses its URI, naming the feature.
    #[cfg(not(feature = "postgres"))]
    #[test]
    fn postgresql_needs_its_feature() {
        let err = Config::load(
            None,
            env(&[(
                "DATABASE_CONNECTION_URI",
                "postgresql://evo:pw@127.0.0.1/evolution",
            )]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cargo feature `postgres`"), "{text}");
        assert!(!text.contains("pw@"), "{text}");
    }

    #[test]
    fn durability_and_retention() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(
            (c.durability, c.retention),
            (Durability::PowerLoss, DEFAULT_RETENTION)
        );
        let c = Config::load(
            None,
            env(&[("OUTBOX_SYNCHRONOUS", "NORMAL"), ("OUTBOX_RETENTION", "90m")]),
        )
        .unwrap();
        assert_eq!(c.durability, Durability::ProcessCrash);
        assert_eq!(c.retention, Duration::from_secs(90 * 60));
        for (text, seconds) in [("0", 0), ("45", 45), ("45s", 45), ("2h", 7200), ("7d", 604_800)] {
            assert_eq!(parse_duration(text), Ok(Duration::from_secs(seconds)), "{text}");
        }
        for bad in ["", "h", "1.5h", "-1s", "10w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[cfg(feature = "webhook")]
    #[test]
    fn toml_file_then_environment() {
        let dir = std::env::temp_dir().join(format!("evo-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("evolution.toml");
        std::fs::write(
            &file,
            "server_port = 9000\nWEBHOOK_GLOBAL_ENABLED = true\nWEBHOOK_GLOBAL_URL = \"http://a/\"\n\
             WEBHOOK_RETRY_NON_RETRYABLE_STATUS_CODES = [400, 404]\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), env(&[("SERVER_PORT", "9100")])).unwrap();
        assert_eq!(c.port, 9100, "environment wins");
        assert!(c.global.webhook.enabled);
        assert_eq!(
            c.channels[0].dispatch.retry.non_retryable_status_codes,
            [400, 404]
        );
        std::fs::write(&file, "NOT_A_SETTING = 1\n").unwrap();
        let err = Config::load(Some(&file), env(&[])).unwrap_err();
        assert!(
            err.to_string().contains("NOT_A_SETTING: unknown setting"),
            "{err}"
        );
        assert!(Config::load(Some(&dir.join("missing.toml")), env(&[])).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
