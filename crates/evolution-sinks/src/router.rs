//! The Router: from an event and the settings to the deliveries it needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use evolution_events::naming::{RabbitmqNaming, SqsNaming};
use evolution_events::{
    Channel, CustomTarget, Destination, EventEnvelope, EventKind, EventSelection, FieldError, GlobalSettings,
    InstanceName, InstanceSettings, NameError, NamingProfile, Scope, ValidationErrors, WebhookTarget,
};

/// One delivery the Router wants: a channel, the scope that asked for it, the resolved destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The channel.
    pub channel: Channel,
    /// Instance settings or global settings.
    pub scope: Scope,
    /// Where it goes.
    pub destination: Destination,
}

#[derive(Clone, Debug)]
struct CustomRoute {
    channel: Channel,
    events: EventSelection,
    target: String,
}

/// Turns (event, global settings, instance settings) into routes, with every name taken from
/// the naming registry. Identical destinations are delivered once: a global and an instance
/// setting that resolve to the same target produce one route (the instance one).
#[derive(Clone, Debug)]
pub struct Router {
    global: GlobalSettings,
    custom: Vec<CustomRoute>,
    /// Tells routers with other settings apart: [`CheckedSettings`] skip validation only on the
    /// router that checked them.
    id: u64,
}

/// A fresh id for a router or a dispatcher (process-wide, never reused).
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An instance's settings as a [`Router`] checked them when they were saved: every destination
/// they and the global settings name for this instance, for any event, is valid on its channel.
/// Routing with them ([`Dispatcher::emit`](crate::Dispatcher::emit)) validates nothing again, and
/// the Dispatcher keeps the deliveries of each event kind it has routed once (destinations and
/// ordering keys shared, not rebuilt per event).
///
/// Made by [`Router::check`]; keep one per instance and make a new one when its settings change.
#[derive(Clone, Debug)]
pub struct CheckedSettings {
    instance: InstanceName,
    settings: InstanceSettings,
    router: u64,
    /// Per event kind ([`EventKind::index`]), the deliveries the Dispatcher planned.
    pub(crate) planned: Box<[OnceLock<Arc<crate::dispatcher::Planned>>]>,
}

impl CheckedSettings {
    /// The instance they were checked for.
    #[must_use]
    pub fn instance(&self) -> &InstanceName {
        &self.instance
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &InstanceSettings {
        &self.settings
    }

    /// Whether `router` checked them for `instance`: only then can routing skip validation.
    pub(crate) fn checked_by(&self, router: &Router, instance: &InstanceName) -> bool {
        self.router == router.id && self.instance == *instance
    }
}

impl Router {
    /// A router over the global settings.
    ///
    /// # Errors
    /// Every problem of the global settings (a global webhook enabled without a valid URL, global
    /// Pusher enabled without an app, prefixes that make invalid names), naming the setting.
    pub fn new(global: GlobalSettings) -> Result<Self, ValidationErrors> {
        let mut errors = Vec::new();
        let check = |errors: &mut Vec<FieldError>, field: &str, result: Result<(), NameError>| {
            if let Err(e) = result {
                errors.push(FieldError {
                    field: field.to_owned(),
                    message: e.to_string(),
                });
            }
        };
        if global.webhook.enabled {
            check(
                &mut errors,
                "WEBHOOK_GLOBAL_URL",
                evolution_events::naming::check_webhook_url(&global.webhook.url),
            );
        }
        if let Some(url) = &global.webhook.errors_url {
            check(
                &mut errors,
                "WEBHOOK_EVENTS_ERRORS_WEBHOOK",
                evolution_events::naming::check_webhook_url(url),
            );
        }
        if global.pusher.global_enabled && global.pusher.app.is_none() {
            errors.push(FieldError {
                field: "PUSHER_GLOBAL_APP_ID".to_owned(),
                message: "PUSHER_GLOBAL_ENABLED=true needs PUSHER_GLOBAL_APP_ID, PUSHER_GLOBAL_KEY, \
                          PUSHER_GLOBAL_SECRET and PUSHER_GLOBAL_CLUSTER"
                    .to_owned(),
            });
        }
        let router = Self {
            global,
            custom: Vec::new(),
            id: next_id(),
        };
        // Every global route of every event must produce valid names.
        let probe = InstanceName::new("x").map_err(|e| {
            ValidationErrors(vec![FieldError {
                field: "instance".into(),
                message: e.to_string(),
            }])
        })?;
        for kind in EventKind::all() {
            let mut routes = Vec::new();
            router.global_routes(&probe, kind, &mut routes, true);
            for route in routes {
                let field = match route.channel.env_prefix() {
                    Some(prefix) => format!("{prefix}_*"),
                    None => route.channel.to_string(),
                };
                check(&mut errors, &field, route.destination.validate());
            }
        }
        errors.dedup();
        if errors.is_empty() {
            Ok(router)
        } else {
            Err(ValidationErrors(errors))
        }
    }

    /// Also delivers the selected events to a custom channel's `target` (for sinks a library
    /// user adds; see `examples/custom_sink.rs`).
    #[must_use]
    pub fn with_custom_route(
        mut self,
        channel: Channel,
        events: EventSelection,
        target: impl Into<String>,
    ) -> Self {
        self.custom.push(CustomRoute {
            channel,
            events,
            target: target.into(),
        });
        // Settings checked before did not see this route.
        self.id = next_id();
        self
    }

    /// The global settings.
    #[must_use]
    pub fn global(&self) -> &GlobalSettings {
        &self.global
    }

    /// The routes of one event.
    ///
    /// # Errors
    /// A [`NameError`] if a destination would be refused by its channel. Settings checked by
    /// [`Router::check`] never produce one.
    pub fn route(
        &self,
        event: &EventEnvelope,
        settings: Option<&InstanceSettings>,
    ) -> Result<Vec<Route>, NameError> {
        let routes = self.routes_of(event.instance(), event.kind(), settings)?;
        for route in &routes {
            // Webhook URLs were checked when they were joined (`webhook_url`).
            if !matches!(route.destination, Destination::Webhook(_)) {
                route.destination.validate()?;
            }
        }
        Ok(routes)
    }

    /// The routes of an event of `kind` for `instance`, without validating their names: `settings`
    /// were checked by this router ([`CheckedSettings`]).
    pub(crate) fn route_checked(&self, kind: EventKind, settings: &CheckedSettings) -> Vec<Route> {
        // `check` ran `instance_routes` for every kind, so it cannot fail here; were it to, the
        // instance routes it could not name are left out rather than sent somewhere else.
        self.routes_of(&settings.instance, kind, Some(&settings.settings))
            .unwrap_or_default()
    }

    fn routes_of(
        &self,
        instance: &InstanceName,
        kind: EventKind,
        settings: Option<&InstanceSettings>,
    ) -> Result<Vec<Route>, NameError> {
        let mut routes = Vec::new();
        if let Some(settings) = settings {
            self.instance_routes(instance, kind, settings, &mut routes, false)?;
        }
        self.global_routes(instance, kind, &mut routes, false);
        if self.global.naming == NamingProfile::EvolutionV2
            && let Some(own) = settings.and_then(|s| s.webhook.as_ref())
        {
            // Evolution API names the instance's webhook URL as every webhook body's `destination`
            // when the instance has one.
            for route in &mut routes {
                if let (Scope::Global, Destination::Webhook(target)) = (route.scope, &mut route.destination)
                    && target.payload_destination.is_some()
                {
                    target.payload_destination = Some(own.url.clone());
                }
            }
        }
        for custom in &self.custom {
            if custom.events.matches(kind) {
                push(
                    &mut routes,
                    custom.channel,
                    Scope::Global,
                    Destination::Custom(CustomTarget {
                        target: custom.target.clone(),
                    }),
                );
            }
        }
        Ok(routes)
    }

    /// Checks `settings` for `instance` once, when they are saved ([`Router::validate_instance`],
    /// plus the names the global settings give this instance), so that routing its events
    /// validates nothing again.
    ///
    /// # Errors
    /// Every problem found, each under the channel's field.
    pub fn check(
        &self,
        instance: &InstanceName,
        settings: InstanceSettings,
    ) -> Result<CheckedSettings, ValidationErrors> {
        let mut errors = match self.validate_instance(instance, &settings) {
            Ok(()) => Vec::new(),
            Err(e) => e.0,
        };
        for kind in EventKind::all() {
            let mut routes = Vec::new();
            self.global_routes(instance, kind, &mut routes, false);
            invalid_names(routes, &mut errors);
        }
        errors.dedup();
        if !errors.is_empty() {
            return Err(ValidationErrors(errors));
        }
        Ok(CheckedSettings {
            instance: instance.clone(),
            settings,
            router: self.id,
            planned: EventKind::all().map(|_| OnceLock::new()).collect(),
        })
    }

    /// Checks that every event the settings select produces valid names on its channel (an
    /// instance name too long for SQS, say), reporting each problem under the channel's field.
    ///
    /// # Errors
    /// Every problem found.
    pub fn validate_instance(
        &self,
        instance: &InstanceName,
        settings: &InstanceSettings,
    ) -> Result<(), ValidationErrors> {
        let mut errors: Vec<FieldError> = Vec::new();
        for kind in EventKind::all() {
            let mut routes = Vec::new();
            if let Err(e) = self.instance_routes(instance, kind, settings, &mut routes, true) {
                errors.push(FieldError {
                    field: e.channel.to_string(),
                    message: e.to_string(),
                });
            }
            invalid_names(routes, &mut errors);
        }
        errors.dedup();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors))
        }
    }

    /// Every distinct route the instance's own settings produce, over every event they select
    /// (global routes are not included): what to provision when the settings are saved (see
    /// [`Dispatcher::prepare`](crate::Dispatcher::prepare)). Routes that could not be named are
    /// left out ([`Router::validate_instance`] reports them).
    #[must_use]
    pub fn instance_destinations(&self, instance: &InstanceName, settings: &InstanceSettings) -> Vec<Route> {
        let mut routes = Vec::new();
        for kind in EventKind::all() {
            let mut more = Vec::new();
            if self
                .instance_routes(instance, kind, settings, &mut more, false)
                .is_ok()
            {
                for route in more {
                    push(&mut routes, route.channel, route.scope, route.destination);
                }
            }
        }
        routes
    }

    /// `all_selected`: ignore the per-channel enabled switches (validation of settings that may be
    /// enabled later).
    fn instance_routes(
        &self,
        instance: &InstanceName,
        kind: EventKind,
        settings: &InstanceSettings,
        routes: &mut Vec<Route>,
        all_selected: bool,
    ) -> Result<(), NameError> {
        let g = &self.global;
        let profile = g.naming;
        let wants = |channel: Channel| settings.wants(channel, kind) || all_selected;
        if let Some(w) = &settings.webhook
            && (wants(Channel::Webhook) && (w.enabled || !w.url.is_empty()))
        {
            let url = profile.webhook_url(&w.url, kind, w.by_events)?;
            let headers = w.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            push(
                routes,
                Channel::Webhook,
                Scope::Instance,
                Destination::Webhook(WebhookTarget {
                    url,
                    headers,
                    signing_secrets: if w.secrets.is_empty() {
                        g.webhook.signing_secrets.clone()
                    } else {
                        w.secrets.clone()
                    },
                    payload_destination: (profile == NamingProfile::EvolutionV2).then(|| w.url.clone()),
                    base64: w.base64,
                }),
            );
        }
        if (g.websocket.enabled || all_selected) && settings.websocket.is_some() && wants(Channel::Websocket)
        {
            for t in profile.websocket(Scope::Instance, instance, kind) {
                push(
                    routes,
                    Channel::Websocket,
                    Scope::Instance,
                    Destination::Websocket(t),
                );
            }
        }
        if (g.rabbitmq.enabled || all_selected) && settings.rabbitmq.is_some() && wants(Channel::Rabbitmq) {
            let t = profile.rabbitmq(Scope::Instance, instance, kind, self.rabbitmq_naming());
            push(
                routes,
                Channel::Rabbitmq,
                Scope::Instance,
                Destination::Rabbitmq(t),
            );
        }
        if (g.sqs.broker.enabled || all_selected) && settings.sqs.is_some() && wants(Channel::Sqs) {
            let t = profile.sqs(Scope::Instance, instance, kind, self.sqs_naming());
            push(routes, Channel::Sqs, Scope::Instance, Destination::Sqs(t));
        }
        if (g.kafka.enabled || all_selected) && settings.kafka.is_some() && wants(Channel::Kafka) {
            let t = profile.kafka(Scope::Instance, instance, kind, &g.kafka.prefix);
            push(routes, Channel::Kafka, Scope::Instance, Destination::Kafka(t));
        }
        if (g.nats.enabled || all_selected) && settings.nats.is_some() && wants(Channel::Nats) {
            let t = profile.nats(Scope::Instance, instance, kind, &g.nats.prefix);
            push(routes, Channel::Nats, Scope::Instance, Destination::Nats(t));
        }
        if let Some(p) = &settings.pusher
            && (g.pusher.enabled || all_selected)
            && wants(Channel::Pusher)
        {
            let mut app = p.app();
            if app.host.is_none() {
                app.host.clone_from(&g.pusher.host);
                app.port = app.port.or(g.pusher.port);
            }
            let t = profile.pusher(instance, kind, &g.pusher_prefix, app);
            push(routes, Channel::Pusher, Scope::Instance, Destination::Pusher(t));
        }
        Ok(())
    }

    /// `all`: every channel's global routes whatever its switches (validation).
    fn global_routes(&self, instance: &InstanceName, kind: EventKind, routes: &mut Vec<Route>, all: bool) {
        let g = &self.global;
        let profile = g.naming;
        // `Router::new` refused an invalid global URL, so `webhook_url` succeeds here.
        if g.webhook.enabled
            && (all || g.webhook.events.contains(&kind))
            && let Ok(url) = profile.webhook_url(&g.webhook.url, kind, g.webhook.by_events)
        {
            // Evolution API's `destination` of a global delivery: the global URL with the event's
            // segment (`Router::route` puts the instance's own URL there when it has a webhook).
            let payload_destination = (profile == NamingProfile::EvolutionV2)
                .then(|| format!("{}/{}", g.webhook.url, profile.webhook_segment(kind)));
            let target = WebhookTarget {
                url,
                headers: Vec::new(),
                signing_secrets: g.webhook.signing_secrets.clone(),
                payload_destination,
                base64: true,
            };
            push(
                routes,
                Channel::Webhook,
                Scope::Global,
                Destination::Webhook(target),
            );
        }
        if let Some(url) = &g.webhook.errors_url
            && kind == EventKind::Errors
        {
            let target = WebhookTarget {
                url: url.clone(),
                headers: Vec::new(),
                signing_secrets: g.webhook.signing_secrets.clone(),
                payload_destination: None,
                base64: true,
            };
            push(
                routes,
                Channel::Webhook,
                Scope::Global,
                Destination::Webhook(target),
            );
        }
        if all
            || (g.websocket.enabled
                && g.websocket.global_events
                && g.websocket.events.as_ref().is_none_or(|e| e.contains(&kind)))
        {
            for t in profile.websocket(Scope::Global, instance, kind) {
                push(
                    routes,
                    Channel::Websocket,
                    Scope::Global,
                    Destination::Websocket(t),
                );
            }
        }
        let on = |b: &evolution_events::GlobalBroker| {
            all || (b.enabled && b.global_enabled && b.events.contains(&kind))
        };
        if on(&g.rabbitmq) {
            let t = profile.rabbitmq(Scope::Global, instance, kind, self.rabbitmq_naming());
            push(routes, Channel::Rabbitmq, Scope::Global, Destination::Rabbitmq(t));
        }
        if on(&g.sqs.broker) {
            let t = profile.sqs(Scope::Global, instance, kind, self.sqs_naming());
            push(routes, Channel::Sqs, Scope::Global, Destination::Sqs(t));
        }
        if on(&g.kafka) {
            let t = profile.kafka(Scope::Global, instance, kind, &g.kafka.prefix);
            push(routes, Channel::Kafka, Scope::Global, Destination::Kafka(t));
        }
        if on(&g.nats) {
            let t = profile.nats(Scope::Global, instance, kind, &g.nats.prefix);
            push(routes, Channel::Nats, Scope::Global, Destination::Nats(t));
        }
        if let Some(app) = &g.pusher.app
            && (all || (g.pusher.enabled && g.pusher.global_enabled && g.pusher.events.contains(&kind)))
        {
            let mut app = app.clone();
            if app.host.is_none() {
                app.host.clone_from(&g.pusher.host);
                app.port = app.port.or(g.pusher.port);
            }
            let t = profile.pusher(instance, kind, &g.pusher_prefix, app);
            push(routes, Channel::Pusher, Scope::Global, Destination::Pusher(t));
        }
    }

    fn rabbitmq_naming(&self) -> RabbitmqNaming<'_> {
        RabbitmqNaming {
            exchange: &self.global.rabbitmq_exchange,
            prefix: &self.global.rabbitmq.prefix,
        }
    }

    fn sqs_naming(&self) -> SqsNaming<'_> {
        let s = &self.global.sqs;
        SqsNaming {
            prefix: &s.broker.prefix,
            global_prefix: &s.global_prefix,
            single_queue: s.force_single_queue,
            fifo: s.fifo,
            server: &self.global.server_name,
        }
    }
}

/// Adds to `errors` every route whose names its channel would refuse, under the channel's field.
fn invalid_names(routes: Vec<Route>, errors: &mut Vec<FieldError>) {
    for route in routes {
        if let Err(e) = route.destination.validate() {
            errors.push(FieldError {
                field: route.channel.to_string(),
                message: e.to_string(),
            });
        }
    }
}

/// Adds a route unless the same channel already has the same destination.
fn push(routes: &mut Vec<Route>, channel: Channel, scope: Scope, destination: Destination) {
    // The same target whatever the payload names as its `destination`.
    let same = |a: &Destination, b: &Destination| match (a, b) {
        (Destination::Webhook(a), Destination::Webhook(b)) => {
            (&a.url, &a.headers, &a.signing_secrets) == (&b.url, &b.headers, &b.signing_secrets)
        }
        _ => a == b,
    };
    if !routes
        .iter()
        .any(|r| r.channel == channel && same(&r.destination, &destination))
    {
        routes.push(Route {
            channel,
            scope,
            destination,
        });
    }
}
