//! [`PusherConfig`]: what is common to every Pusher app the sink triggers on, and the Pusher
//! channel's variables ([`SinkConfig`]).

use std::sync::Arc;
use std::time::Duration;

use evolution_events::{
    Channel, DispatchHints, EventSink, GlobalSettings, PusherApp, Sensitive, SinkConfig, SinkError, Var, Vars,
};

/// Pusher's limit on an event's `data` (10 KB), which Evolution API also enforces.
pub const PUSHER_MAX_PAYLOAD_BYTES: usize = 10_240;

/// Pusher's limit on the events of one `batch_events` request.
pub const PUSHER_MAX_BATCH: usize = 10;

/// What happens to an event whose payload is over [`PusherConfig::max_payload_bytes`]
/// (`PUSHER_OVERSIZE`). Never dropped silently either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Oversize {
    /// `reject` (default): not sent; the delivery goes dead with the reason (size and limit), and
    /// can be redriven once the limit is raised.
    #[default]
    Reject,
    /// `reference`: sends `{"id", "event", "instance", "truncated": true}` instead, which a client
    /// resolves with `GET /events/{instance}/{id}` while the outbox keeps the event.
    Reference,
}

impl Oversize {
    /// Parses `reject` or `reference` (any case).
    ///
    /// # Errors
    /// The message says which values are allowed.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "reject" => Ok(Self::Reject),
            "reference" => Ok(Self::Reference),
            _ => Err(format!("`{value}` is not a policy: use `reject` or `reference`")),
        }
    }
}

/// The sink's settings. Apps (credentials, cluster, host) come with each delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PusherConfig {
    /// The longest one API request may take (connect, send, read the answer). Default 10 s.
    pub request_timeout: Duration,
    /// The longest connecting may take. Default 5 s.
    pub connect_timeout: Duration,
    /// `PUSHER_MAX_PAYLOAD_BYTES`: larger payloads follow [`PusherConfig::oversize`], never
    /// dropped silently. Default Pusher's 10 240 bytes; a self-hosted server may allow more.
    pub max_payload_bytes: usize,
    /// `PUSHER_OVERSIZE`: what to do with a larger payload. Default [`Oversize::Reject`].
    pub oversize: Oversize,
    /// `PUSHER_BATCH_EVENTS`: send up to 10 events per request (`batch_events`), else one request
    /// per event (`events`). Default `true`.
    pub batch_events: bool,
    /// The app `health_check` queries (`GET /apps/{id}/channels`): the global app. Without one,
    /// the health check has nothing to ask and succeeds.
    pub probe: Option<PusherApp>,
    /// `User-Agent` of every request.
    pub user_agent: String,
}

impl Default for PusherConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_payload_bytes: PUSHER_MAX_PAYLOAD_BYTES,
            oversize: Oversize::Reject,
            batch_events: true,
            probe: None,
            user_agent: concat!("evolution-events/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Pusher deliveries handed to the sink at once (one app's requests go one after the other).
pub const PUSHER_BATCH: usize = 20;

impl SinkConfig for PusherConfig {
    const CHANNEL: Channel = Channel::Pusher;

    const VARS: &'static [Var] = &[
        Var::new("PUSHER_GLOBAL_ENABLED", "false"),
        Var::new("PUSHER_GLOBAL_APP_ID", ""),
        Var::new("PUSHER_GLOBAL_KEY", ""),
        Var::new("PUSHER_GLOBAL_SECRET", ""),
        Var::new("PUSHER_GLOBAL_CLUSTER", ""),
        Var::new("PUSHER_GLOBAL_USE_TLS", "false"),
        Var::new("PUSHER_HOST", ""),
        Var::new("PUSHER_PORT", ""),
        Var::new("PUSHER_MAX_PAYLOAD_BYTES", "10240"),
        Var::new("PUSHER_OVERSIZE", "reject"),
        Var::new("PUSHER_BATCH_EVENTS", "true"),
        Var::new("PUSHER_REQUEST_TIMEOUT_MS", "10000"),
    ];

    const EVENT_TOGGLES: &'static [&'static str] = &["PUSHER_EVENTS_"];

    /// `PUSHER_ENABLED`, `PUSHER_GLOBAL_ENABLED`, `PUSHER_EVENTS_<KEY>`, `PUSHER_HOST`, `PUSHER_PORT`
    /// and the global app (`PUSHER_GLOBAL_APP_ID`, `_KEY`, `_SECRET`, `_CLUSTER`, `_USE_TLS`: all four
    /// texts, or no global app).
    fn read_global(vars: &mut Vars, global: &mut GlobalSettings) {
        let pusher = &mut global.pusher;
        pusher.enabled = vars.switch(Self::CHANNEL);
        pusher.global_enabled = vars.bool("PUSHER_GLOBAL_ENABLED");
        pusher.events = vars.events("PUSHER_EVENTS_");
        pusher.host = vars.string("PUSHER_HOST");
        pusher.port = vars
            .string("PUSHER_PORT")
            .map(|_| vars.number("PUSHER_PORT", "a port number"));
        let use_tls = vars.bool("PUSHER_GLOBAL_USE_TLS");
        if let (Some(app_id), Some(key), Some(secret), Some(cluster)) = (
            vars.string("PUSHER_GLOBAL_APP_ID"),
            vars.string("PUSHER_GLOBAL_KEY"),
            vars.string("PUSHER_GLOBAL_SECRET"),
            vars.string("PUSHER_GLOBAL_CLUSTER"),
        ) {
            pusher.app = Some(PusherApp {
                app_id,
                key,
                secret: Sensitive::new(secret),
                cluster,
                use_tls,
                host: None,
                port: None,
            });
        }
    }

    /// `PUSHER_MAX_PAYLOAD_BYTES`, `PUSHER_OVERSIZE`, `PUSHER_BATCH_EVENTS`,
    /// `PUSHER_REQUEST_TIMEOUT_MS`; the global app (with `PUSHER_HOST`/`PUSHER_PORT`) is the health
    /// check's probe. Only with `PUSHER_ENABLED=true`.
    fn from_vars(vars: &mut Vars, global: &GlobalSettings) -> Option<(Self, DispatchHints)> {
        if !global.enabled(Self::CHANNEL) {
            return None;
        }
        let max_payload_bytes =
            usize::try_from(vars.positive("PUSHER_MAX_PAYLOAD_BYTES")).unwrap_or(usize::MAX);
        let oversize = Oversize::parse(vars.raw("PUSHER_OVERSIZE")).unwrap_or_else(|e| {
            vars.error(format!("PUSHER_OVERSIZE: {e}"));
            Oversize::Reject
        });
        let batch_events = vars.bool("PUSHER_BATCH_EVENTS");
        let request_timeout = Duration::from_millis(vars.positive("PUSHER_REQUEST_TIMEOUT_MS"));
        let probe = global.pusher.app.clone().map(|mut app| {
            if app.host.is_none() {
                app.host.clone_from(&global.pusher.host);
                app.port = app.port.or(global.pusher.port);
            }
            app
        });
        let batch = u32::try_from(PUSHER_BATCH).unwrap_or(u32::MAX);
        let dispatch = DispatchHints {
            batch_size: Some(PUSHER_BATCH),
            // Each request is bounded by the request timeout; this deadline is a safety net above it.
            send_timeout: Some(request_timeout.saturating_mul(batch) + Duration::from_secs(5)),
            ..DispatchHints::default()
        };
        let config = Self {
            max_payload_bytes,
            oversize,
            batch_events,
            request_timeout,
            probe,
            ..Self::default()
        };
        Some((config, dispatch))
    }

    fn into_sink(self) -> Result<Arc<dyn EventSink>, SinkError> {
        Ok(Arc::new(crate::PusherSink::new(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_read_when_enabled() {
        let mut g = GlobalSettings::default();
        let mut v = Vars::default();
        assert!(PusherConfig::from_vars(&mut v, &g).is_none());
        g.pusher.enabled = true;
        let mut v: Vars = [
            ("PUSHER_MAX_PAYLOAD_BYTES", "0"),
            ("PUSHER_BATCH_EVENTS", "maybe"),
            ("PUSHER_OVERSIZE", "drop"),
            ("PUSHER_REQUEST_TIMEOUT_MS", "1000"),
        ]
        .into_iter()
        .collect();
        let _ = PusherConfig::from_vars(&mut v, &g);
        let text = v.errors().join("\n");
        for needle in [
            "PUSHER_MAX_PAYLOAD_BYTES must be greater than 0",
            "PUSHER_BATCH_EVENTS=`maybe`",
            "PUSHER_OVERSIZE: `drop` is not a policy: use `reject` or `reference`",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        let mut v: Vars = [
            ("PUSHER_MAX_PAYLOAD_BYTES", "10240"),
            ("PUSHER_BATCH_EVENTS", "true"),
            ("PUSHER_OVERSIZE", "Reference"),
            ("PUSHER_REQUEST_TIMEOUT_MS", "1000"),
        ]
        .into_iter()
        .collect();
        let (config, dispatch) = PusherConfig::from_vars(&mut v, &g).unwrap();
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        assert_eq!(config.oversize, Oversize::Reference);
        assert_eq!(dispatch.batch_size, Some(PUSHER_BATCH));
        assert!(config.into_sink().is_ok());
    }

    #[test]
    fn the_global_app_is_the_probe() {
        let mut v = Vars::with_defaults(
            PusherConfig::VARS,
            [
                ("PUSHER_ENABLED", "true"),
                ("PUSHER_GLOBAL_APP_ID", "1"),
                ("PUSHER_GLOBAL_KEY", "k"),
                ("PUSHER_GLOBAL_SECRET", "hunter2"),
                ("PUSHER_GLOBAL_CLUSTER", "us2"),
                ("PUSHER_HOST", "127.0.0.1"),
                ("PUSHER_PORT", "6001"),
            ],
        );
        let mut g = GlobalSettings::default();
        PusherConfig::read_global(&mut v, &mut g);
        assert!(g.enabled(Channel::Pusher));
        let (config, _) = PusherConfig::from_vars(&mut v, &g).unwrap();
        assert!(v.errors().is_empty(), "{:?}", v.errors());
        let probe = config.probe.unwrap();
        assert_eq!(
            (probe.host.as_deref(), probe.port),
            (Some("127.0.0.1"), Some(6001))
        );
        assert_eq!(probe.secret.expose(), "hunter2");
    }
}
