//! Configuration: defaults ← optional TOML file (`--config`) ← environment, with the
//! specification's variable names. Every malformed value is reported, naming the variable and
//! what it accepts; startup stops on any.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use evolution_events::{
    Channel, EventFormat, EventKind, GlobalSettings, InstanceName, NamingProfile, Sensitive, Var, Vars,
};
#[cfg(feature = "postgres")]
use evolution_outbox::PostgresOptions;
use evolution_outbox::{DEFAULT_RETENTION, Durability};
use evolution_sinks::build::ChannelPlan;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;

/// The server's own variables, with their defaults; the channels' variables come from their
/// crates ([`evolution_sinks::build::variables`]).
const SERVER_VARS: &[Var] = &[
    Var::new("SERVER_PORT", "8080"),
    Var::new("SERVER_HOST", "0.0.0.0"),
    Var::unset("SERVER_URL"),
    Var::new("SERVER_NAME", "evolution"),
    Var::new("SERVER_DATA_DIR", "./data"),
    Var::unset("DATABASE_CONNECTION_URI"),
    Var::new("OUTBOX_SYNCHRONOUS", "full"),
    Var::new("OUTBOX_RETENTION", "24h"),
    Var::new("OUTBOX_SCHEMA", "evolution_events"),
    Var::new("OUTBOX_LEASE", "10s"),
    Var::new("OUTBOX_POOL_SIZE", "16"),
    Var::unset("AUTHENTICATION_API_KEY"),
    Var::new("AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES", "false"),
    Var::new("EVENT_NAMING", "seed"),
    Var::new("EVENT_FORMAT", "evolution"),
    Var::new("EVENTS_MAX_PER_REQUEST", "1000"),
    Var::new("EVENTS_MAX_BODY_BYTES", "10485760"),
    Var::new("EVENTS_MAX_BACKLOG", "1000000"),
    Var::new("EVENTS_REFERENCE_TTL", "24h"),
    Var::new("SHUTDOWN_TIMEOUT_SECONDS", "25"),
];

/// Prefixes of the server's own variables (an unknown variable with one of these, or with a
/// channel's prefix, is reported as ignored).
const SERVER_PREFIXES: &[&str] = &["SERVER_", "AUTHENTICATION_", "DATABASE_", "OUTBOX_", "EVENTS_"];

/// Every variable the server reads (besides the per-event toggles): its own and the channels'.
#[derive(Debug)]
struct Known {
    vars: BTreeMap<&'static str, Option<&'static str>>,
    toggles: Vec<&'static str>,
}

impl Known {
    fn new() -> Self {
        let vars = SERVER_VARS
            .iter()
            .copied()
            .chain(evolution_sinks::build::variables())
            .map(|v| (v.name, v.default))
            .collect();
        Self {
            vars,
            toggles: evolution_sinks::build::event_toggles().collect(),
        }
    }

    fn defaults(&self) -> BTreeMap<String, String> {
        self.vars
            .iter()
            .filter_map(|(k, v)| Some(((*k).to_owned(), (*v)?.to_owned())))
            .collect()
    }

    /// A variable the server reads: a declared one, or a per-event toggle `<PREFIX><KEY>`.
    fn contains(&self, name: &str) -> bool {
        self.vars.contains_key(name)
            || self
                .toggles
                .iter()
                .any(|p| name.strip_prefix(p).is_some_and(|k| EventKind::parse(k).is_ok()))
    }

    /// A variable named like the server's or a channel's, known or not.
    fn is_ours(&self, name: &str) -> bool {
        self.contains(name)
            || SERVER_PREFIXES.iter().any(|p| name.starts_with(p))
            || Channel::BUILT_IN
                .into_iter()
                .filter_map(Channel::env_prefix)
                .any(|p| name.strip_prefix(p).is_some_and(|rest| rest.starts_with('_')))
    }
}

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
    /// `SERVER_NAME` made a valid instance name (the instance of server-wide events).
    pub(crate) server_name: InstanceName,
    pub(crate) data_dir: PathBuf,
    pub(crate) database: Database,
    /// What an acknowledged event survives (`OUTBOX_SYNCHRONOUS`).
    pub(crate) durability: Durability,
    /// How long delivered deliveries stay in the delivery log (`OUTBOX_RETENTION`).
    pub(crate) retention: Duration,
    pub(crate) api_key: Option<Sensitive>,
    pub(crate) expose_in_fetch: bool,
    /// The format of events whose instance does not choose one (`EVENT_FORMAT`).
    pub(crate) event_format: EventFormat,
    pub(crate) global: GlobalSettings,
    /// One per channel this build delivers to.
    pub(crate) channels: Vec<ChannelPlan>,
    pub(crate) max_events_per_request: usize,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_backlog: usize,
    /// How long the signed URL of an event sent by reference works (`EVENTS_REFERENCE_TTL`).
    pub(crate) reference_ttl: Duration,
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
        let known = Known::new();
        let defaults = known.defaults();
        let env: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| known.is_ours(k)).collect();
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
                if !known.contains(&name) {
                    errors.push(format!("{name}: unknown setting in the configuration file"));
                } else if let Some(v) = value_to_string(&name, &value, &mut errors) {
                    file_values.insert(name, v);
                }
            }
        }
        for name in env.keys().filter(|k| !known.contains(k)) {
            tracing::warn!(variable = %name, "ignoring an unknown variable");
        }
        let env: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| known.contains(k)).collect();
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
        // Evolution API deployments use any label (`Evolution API`); where it names an instance it
        // is made a valid one (`Evolution-API`).
        let server_label = v.raw("SERVER_NAME").trim().to_owned();
        let named = InstanceName::from_label(&server_label).or_else(|e| {
            v.error(format!(
                "SERVER_NAME (the instance of server-wide events): {e}; give it at least one ASCII letter or digit"
            ));
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
        let event_format = EventFormat::parse(v.raw("EVENT_FORMAT")).unwrap_or_else(|e| {
            v.error(format!("EVENT_FORMAT: {e}"));
            EventFormat::Evolution
        });
        let mut global = GlobalSettings {
            naming,
            server_name: if server_label.is_empty() {
                "evolution".to_owned()
            } else {
                server_label
            },
            ..GlobalSettings::default()
        };
        evolution_sinks::build::read_global(v, &mut global);
        let channels = evolution_sinks::build::plan(v, &global);
        let reference_ttl = parse_duration(v.raw("EVENTS_REFERENCE_TTL"))
            .and_then(|d| {
                if d.is_zero() {
                    Err("must be more than 0".to_owned())
                } else {
                    Ok(d)
                }
            })
            .unwrap_or_else(|e| {
                v.error(format!("EVENTS_REFERENCE_TTL: {e}"));
                Duration::from_secs(24 * 60 * 60)
            });
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
            event_format,
            global,
            channels,
            max_events_per_request: as_usize(v.positive("EVENTS_MAX_PER_REQUEST")),
            max_body_bytes: as_usize(v.positive("EVENTS_MAX_BODY_BYTES")),
            max_backlog: as_usize(v.positive("EVENTS_MAX_BACKLOG")),
            reference_ttl,
            shutdown_timeout: Duration::from_secs(v.positive("SHUTDOWN_TIMEOUT_SECONDS")),
            data_dir,
            values: v.values().clone(),
        })
    }

    /// Where this server is reached from outside: `SERVER_URL`, else `http://{SERVER_HOST}:{SERVER_PORT}`
    /// (loopback for an unspecified host).
    pub(crate) fn base_url(&self) -> String {
        match &self.server_url {
            Some(url) => url.clone(),
            None => {
                let host = if self.host.is_unspecified() {
                    IpAddr::from([127, 0, 0, 1])
                } else {
                    self.host
                };
                match host {
                    IpAddr::V6(v6) => format!("http://[{v6}]:{}", self.port),
                    IpAddr::V4(v4) => format!("http://{v4}:{}", self.port),
                }
            }
        }
    }

    /// The effective configuration, one `NAME=value` per line, secrets redacted.
    /// The effective value of a variable (secrets included: never show it).
    pub(crate) fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

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

    /// Any `SERVER_NAME` an Evolution API deployment uses starts the server.
    #[test]
    fn server_names_with_spaces_and_dots() {
        let c = Config::load(None, env(&[("SERVER_NAME", "Evolution API")])).unwrap();
        assert_eq!(c.server_name.as_str(), "Evolution-API");
        let c = Config::load(None, env(&[("SERVER_NAME", "evo.prod")])).unwrap();
        assert_eq!(c.server_name.as_str(), "evo-prod");
        let err = Config::load(None, env(&[("SERVER_NAME", "...")])).unwrap_err();
        assert!(err.to_string().contains("SERVER_NAME"), "{err}");
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

    #[cfg(feature = "nats")]
    #[test]
    fn oversize_policies_and_the_reference_ttl() {
        let base = [("NATS_ENABLED", "true"), ("NATS_URI", "nats://127.0.0.1:4222")];
        let c = Config::load(None, env(&base)).unwrap();
        let nats = c.channels.iter().find(|p| p.channel() == Channel::Nats).unwrap();
        assert!(!nats.dispatch.by_reference, "reject by default");
        assert_eq!(c.reference_ttl, Duration::from_secs(24 * 60 * 60));
        let mut vars = base.to_vec();
        vars.extend([("NATS_OVERSIZE", "Reference"), ("EVENTS_REFERENCE_TTL", "90m")]);
        let c = Config::load(None, env(&vars)).unwrap();
        let nats = c.channels.iter().find(|p| p.channel() == Channel::Nats).unwrap();
        assert!(nats.dispatch.by_reference);
        assert_eq!(c.reference_ttl, Duration::from_secs(90 * 60));
        let mut vars = base.to_vec();
        vars.extend([("NATS_OVERSIZE", "drop"), ("EVENTS_REFERENCE_TTL", "0")]);
        let text = Config::load(None, env(&vars)).unwrap_err().to_string();
        assert!(text.contains("NATS_OVERSIZE: `drop` is not a policy"), "{text}");
        assert!(
            text.contains("EVENTS_REFERENCE_TTL: must be more than 0"),
            "{text}"
        );
    }

    /// `<CHANNEL>_EVENTS_<EVENT>` for SQS and WebSocket too (and Evolution API's `SQS_GLOBAL_<EVENT>`),
    /// the same in the environment and in the TOML file.
    #[cfg(all(feature = "sqs", feature = "websocket"))]
    #[test]
    fn sqs_and_websocket_event_toggles_in_the_environment_and_the_file() {
        let sqs = |c: &Config| c.global.sqs.broker.events.clone();
        let c = Config::load(
            None,
            env(&[
                ("SQS_EVENTS_MESSAGES_UPSERT", "true"),
                ("SQS_GLOBAL_CALL", "true"),
                ("SQS_EVENTS_CHATS_SET", "false"),
                ("WEBSOCKET_EVENTS_CONNECTION_UPDATE", "true"),
                ("WEBSOCKET_EVENTS_CALL", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(
            sqs(&c),
            BTreeSet::from([EventKind::MessagesUpsert, EventKind::Call])
        );
        assert_eq!(
            c.global.websocket.events,
            Some(BTreeSet::from([EventKind::ConnectionUpdate]))
        );
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.global.websocket.events, None, "no toggle: every event");

        let dir = std::env::temp_dir().join(format!("evo-toggles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("evolution.toml");
        std::fs::write(
            &file,
            "sqs_events_messages_upsert = true\nSQS_GLOBAL_CALL = true\n\
             websocket_events_connection_update = true\nWEBSOCKET_EVENTS_CALL = false\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), env(&[("SQS_EVENTS_CHATS_SET", "yes")])).unwrap();
        assert_eq!(
            sqs(&c),
            BTreeSet::from([EventKind::MessagesUpsert, EventKind::Call, EventKind::ChatsSet])
        );
        assert_eq!(
            c.global.websocket.events,
            Some(BTreeSet::from([EventKind::ConnectionUpdate]))
        );
        let err = Config::load(None, env(&[("WEBSOCKET_EVENTS_CALL", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("WEBSOCKET_EVENTS_CALL=`maybe`"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
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
