//! The naming registry, whole (DESIGN §4): a plain-text snapshot of every name on every channel for
//! both naming profiles and both scopes, plus the properties the names must have:
//!
//! - every name is valid for its channel (and the only names the longest instance name breaks are
//!   SQS queue names over 80 characters, refused with a clear message);
//! - within one profile and scope, no two event kinds share a per-event destination;
//! - instance destinations of two different instances never collide.
//!
//! The snapshot lives in `tests/snapshots/registry.txt`. After an intended naming change, regenerate
//! it with `UPDATE_SNAPSHOTS=1 cargo test -p evolution-events --test registry` and review the diff.
//!
//! Destinations shared by design (excluded from the per-event uniqueness check, and checked to be
//! identical for every event kind instead):
//! - WebSocket, `seed` profile: the emission on namespace `/` whose event is named after the
//!   instance (room = the instance), in both scopes: one stream per instance, the payload's `event`
//!   field says which event it is;
//! - WebSocket, `seed` profile, global scope: the emission of event `*` to room `*` (every event of
//!   every instance);
//! - SQS single-queue mode (`SQS_GLOBAL_FORCE_SINGLE_QUEUE`), global scope: one queue for every event;
//! - Webhook without `byEvents`: the configured URL itself, for every event.
//!
//! Other shared parts are not destinations and are not checked: the RabbitMQ exchange (the routing
//! key and the queue are per event), the Kafka record key (a partitioning key), the Pusher channel
//! (the Pusher event is per event), the SQS FIFO message group.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::path::PathBuf;

use evolution_events::instance::MAX_INSTANCE_NAME_LEN;
use evolution_events::naming::{
    GLOBAL_EVENT, RabbitmqNaming, SQS_MAX_QUEUE_NAME, SqsNaming, check_sqs_queue,
};
use evolution_events::{
    Destination, EventKind, InstanceName, KafkaTarget, NamingProfile, NatsTarget, PusherApp, PusherTarget,
    RabbitmqTarget, Scope, Sensitive, SqsTarget, WebhookTarget, WebsocketTarget,
};

/// The instance of the snapshot (DESIGN §4's table).
const INSTANCE: &str = "minha-instancia";
/// The webhook base URL of the snapshot (the seed's example).
const WEBHOOK_BASE: &str = "https://meusite.com/webhook";
/// `RABBITMQ_EXCHANGE_NAME` and `RABBITMQ_PREFIX_KEY`.
const RABBITMQ: RabbitmqNaming<'static> = RabbitmqNaming {
    exchange: "evolution",
    prefix: "evolution",
};
/// Prefix of SQS queues (`seed`), Kafka topics, NATS subjects and Pusher channels (`seed`).
const PREFIX: &str = "evolution";
/// `SQS_GLOBAL_PREFIX_NAME`.
const SQS_GLOBAL_PREFIX: &str = "global";
/// Both scopes.
const SCOPES: [Scope; 2] = [Scope::Instance, Scope::Global];
/// SQS naming variants: (label, `SQS_FIFO`, `SQS_GLOBAL_FORCE_SINGLE_QUEUE`).
const SQS_VARIANTS: [(&str, bool, bool); 4] = [
    ("sqs", false, false),
    ("sqs fifo", true, false),
    ("sqs single", false, true),
    ("sqs single fifo", true, true),
];
/// A realistic instance name of the maximum length (64).
const LONGEST_INSTANCE: &str = "clinica-odontologica-sorriso-feliz-unidade-centro-sao-paulo-sp01";

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Instance => "instance",
        Scope::Global => "global",
    }
}

fn instance(name: &str) -> InstanceName {
    InstanceName::new(name).unwrap_or_else(|e| panic!("{e}"))
}

fn pusher_app() -> PusherApp {
    PusherApp {
        app_id: "123456".to_owned(),
        key: "abc123".to_owned(),
        secret: Sensitive::new("xyz789"),
        cluster: "us2".to_owned(),
        use_tls: true,
        host: None,
        port: None,
    }
}

/// Every destination of one event kind, for one profile, scope and instance.
struct Names {
    /// The payload's `event` field.
    event: &'static str,
    /// Webhook with `byEvents`.
    webhook: WebhookTarget,
    /// Webhook without `byEvents` (shared by design).
    webhook_plain: WebhookTarget,
    websocket: Vec<WebsocketTarget>,
    rabbitmq: RabbitmqTarget,
    /// One per [`SQS_VARIANTS`] entry, same order.
    sqs: Vec<(&'static str, bool, SqsTarget)>,
    kafka: KafkaTarget,
    nats: NatsTarget,
    pusher: PusherTarget,
}

impl Names {
    fn new(profile: NamingProfile, scope: Scope, instance: &InstanceName, kind: EventKind) -> Self {
        let webhook = |by_events| WebhookTarget {
            signing_secrets: Vec::new(),
            payload_destination: None,
            base64: true,
            url: profile
                .webhook_url(WEBHOOK_BASE, kind, by_events)
                .unwrap_or_else(|e| panic!("{e}")),
            headers: vec![],
        };
        Self {
            event: profile.payload_event(kind),
            webhook: webhook(true),
            webhook_plain: webhook(false),
            websocket: profile.websocket(scope, instance, kind),
            rabbitmq: profile.rabbitmq(scope, instance, kind, RABBITMQ),
            sqs: SQS_VARIANTS
                .iter()
                .map(|&(label, fifo, single_queue)| {
                    let opts = SqsNaming {
                        prefix: PREFIX,
                        global_prefix: SQS_GLOBAL_PREFIX,
                        single_queue,
                        fifo,
                        server: "evolution",
                    };
                    (label, single_queue, profile.sqs(scope, instance, kind, opts))
                })
                .collect(),
            kafka: profile.kafka(scope, instance, kind, PREFIX),
            nats: profile.nats(scope, instance, kind, PREFIX),
            pusher: profile.pusher(instance, kind, PREFIX, pusher_app()),
        }
    }

    /// Every destination, as the Router would hand it to a sink.
    fn destinations(&self) -> Vec<Destination> {
        let mut out = vec![
            Destination::Webhook(self.webhook.clone()),
            Destination::Webhook(self.webhook_plain.clone()),
        ];
        out.extend(self.websocket.iter().cloned().map(Destination::Websocket));
        out.push(Destination::Rabbitmq(self.rabbitmq.clone()));
        out.extend(self.sqs.iter().map(|(_, _, t)| Destination::Sqs(t.clone())));
        out.push(Destination::Kafka(self.kafka.clone()));
        out.push(Destination::Nats(self.nats.clone()));
        out.push(Destination::Pusher(self.pusher.clone()));
        out
    }
}

/// Every (profile, scope, kind), in snapshot order.
fn combinations() -> impl Iterator<Item = (NamingProfile, Scope, EventKind)> {
    NamingProfile::ALL.into_iter().flat_map(|profile| {
        SCOPES
            .into_iter()
            .flat_map(move |scope| EventKind::all().map(move |kind| (profile, scope, kind)))
    })
}

fn websocket_label(t: &WebsocketTarget) -> String {
    format!(
        "namespace={} event={} room={}",
        t.namespace,
        t.event,
        t.room.as_deref().unwrap_or("-")
    )
}

/// Whether a WebSocket emission is shared by every event kind by design (see the crate docs).
fn websocket_shared(profile: NamingProfile, instance: &InstanceName, t: &WebsocketTarget) -> bool {
    profile == NamingProfile::Seed
        && t.namespace == "/"
        && (t.event == instance.as_str() || t.event == GLOBAL_EVENT)
}

// ---------------------------------------------------------------------------------------------
// Snapshot
// ---------------------------------------------------------------------------------------------

fn line(out: &mut String, text: impl Display) {
    out.push_str(&text.to_string());
    out.push('\n');
}

fn row(out: &mut String, label: &str, value: impl Display) {
    line(out, format_args!("  {label:<17}{value}"));
}

/// The whole naming table as plain text.
fn render() -> String {
    let mut out = String::new();
    line(
        &mut out,
        "# Naming registry snapshot (DESIGN §4). Generated by tests/registry.rs; do not edit.",
    );
    line(
        &mut out,
        "# Regenerate: UPDATE_SNAPSHOTS=1 cargo test -p evolution-events --test registry",
    );
    line(&mut out, format_args!("# instance:   {INSTANCE}"));
    line(
        &mut out,
        format_args!("# webhook:    base {WEBHOOK_BASE}, byEvents"),
    );
    line(
        &mut out,
        format_args!(
            "# rabbitmq:   exchange {}, prefix {}",
            RABBITMQ.exchange, RABBITMQ.prefix
        ),
    );
    line(
        &mut out,
        format_args!(
            "# sqs:        prefix {PREFIX}, global prefix {SQS_GLOBAL_PREFIX}; variants: standard, fifo \
             (SQS_FIFO), single (SQS_GLOBAL_FORCE_SINGLE_QUEUE), single fifo"
        ),
    );
    line(&mut out, format_args!("# kafka, nats, pusher: prefix {PREFIX}"));
    let inst = instance(INSTANCE);
    let mut current = None;
    for (profile, scope, kind) in combinations() {
        if current != Some((profile, scope)) {
            current = Some((profile, scope));
            line(&mut out, "");
            line(
                &mut out,
                format_args!("=== profile {profile}, scope {} ===", scope_name(scope)),
            );
        }
        let n = Names::new(profile, scope, &inst, kind);
        line(&mut out, "");
        line(&mut out, kind);
        row(&mut out, "payload event", n.event);
        row(&mut out, "webhook byEvents", &n.webhook.url);
        for t in &n.websocket {
            row(&mut out, "websocket", websocket_label(t));
        }
        let r = &n.rabbitmq;
        row(
            &mut out,
            "rabbitmq",
            format_args!(
                "exchange={} routing_key={} queue={}",
                r.exchange, r.routing_key, r.queue
            ),
        );
        for (label, _, t) in &n.sqs {
            row(
                &mut out,
                label,
                format_args!(
                    "queue={} fifo={} group={}",
                    t.queue,
                    t.fifo,
                    t.group_id.as_deref().unwrap_or("-")
                ),
            );
        }
        row(
            &mut out,
            "kafka",
            format_args!("topic={} key={}", n.kafka.topic, n.kafka.key),
        );
        row(&mut out, "nats", format_args!("subject={}", n.nats.subject));
        row(
            &mut out,
            "pusher",
            format_args!("channel={} event={}", n.pusher.channel, n.pusher.event),
        );
    }
    out
}

fn snapshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/registry.txt")
}

#[test]
fn registry_snapshot() {
    let actual = render();
    let path = snapshot_path();
    let hint = "if the change is intended, run `UPDATE_SNAPSHOTS=1 cargo test -p evolution-events --test \
                registry` and review the diff of tests/snapshots/registry.txt";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        std::fs::write(&path, &actual).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        eprintln!("updated {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the snapshot {}: {e}; {hint}", path.display()));
    if expected == actual {
        return;
    }
    let mut exp = expected.lines();
    let mut act = actual.lines();
    let mut number = 1;
    loop {
        match (exp.next(), act.next()) {
            (Some(e), Some(a)) if e == a => number += 1,
            (None, None) => panic!(
                "the naming table differs from {} only in line endings or a final newline; {hint}",
                path.display()
            ),
            (e, a) => panic!(
                "the naming table differs from {} at line {number}:\n  snapshot: {}\n  actual:   {}\n{hint}",
                path.display(),
                e.unwrap_or("<end of file>"),
                a.unwrap_or("<end of output>"),
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validity
// ---------------------------------------------------------------------------------------------

#[test]
fn every_name_is_valid_for_its_channel() {
    for name in [INSTANCE, "a", "A_1-b", "0", "evolution", "global"] {
        let inst = instance(name);
        for (profile, scope, kind) in combinations() {
            for d in Names::new(profile, scope, &inst, kind).destinations() {
                if let Err(e) = d.validate() {
                    panic!(
                        "{profile}/{}/{kind}, instance `{name}`: {} is invalid: {e}",
                        scope_name(scope),
                        d.label()
                    );
                }
            }
        }
    }
}

#[test]
fn the_longest_instance_name_only_breaks_sqs_names_over_80() {
    assert_eq!(LONGEST_INSTANCE.len(), MAX_INSTANCE_NAME_LEN);
    let inst = instance(LONGEST_INSTANCE);
    let mut refused = BTreeSet::new();
    for (profile, scope, kind) in combinations() {
        for d in Names::new(profile, scope, &inst, kind).destinations() {
            let what = format!("{profile}/{}/{kind}: {}", scope_name(scope), d.label());
            match (&d, d.validate()) {
                (Destination::Sqs(t), Ok(())) => assert!(
                    t.queue.len() <= SQS_MAX_QUEUE_NAME,
                    "{what}: accepted a queue name of {} characters",
                    t.queue.len()
                ),
                (_, Ok(())) => {}
                (Destination::Sqs(t), Err(e)) if t.queue.len() > SQS_MAX_QUEUE_NAME => {
                    assert!(e.rule.contains("at most 80"), "{what}: unclear refusal: {e}");
                    refused.insert((profile.as_str(), t.queue.clone()));
                }
                (_, Err(e)) => panic!("{what}: {e}"),
            }
        }
    }
    // The seed profile's queues are `evolution-{instance}-{event}` (`.fifo`): at 64 characters of
    // instance name, all of them are over 80 but the standard `…-call` (79).
    let seed_refused = refused
        .iter()
        .filter(|(p, _)| *p == NamingProfile::Seed.as_str())
        .count();
    assert_eq!(
        seed_refused,
        2 * EventKind::all().len() - 1,
        "seed queues refused: {refused:#?}"
    );
    // The direct check says the same, and tells what to do.
    let long = format!(
        "{PREFIX}-{LONGEST_INSTANCE}-{}",
        EventKind::MessagesUpsert.kebab()
    );
    let err = check_sqs_queue(&long, false).expect_err("over 80 characters");
    assert!(
        err.rule.contains("at most 80") && err.rule.contains("SQS_GLOBAL_FORCE_SINGLE_QUEUE"),
        "{err}"
    );
}

#[test]
fn the_longest_instance_name_valid_everywhere_is_39_characters() {
    // `seed` FIFO: `evolution-` (10) + name + `-group-participants-update` (26) + `.fifo` (5) <= 80.
    // `evolution-v2`: name + `_group_participants_update` (26) + `.fifo` (5) <= 80, i.e. 49.
    let all_valid = |len: usize| {
        let inst = instance(&LONGEST_INSTANCE[..len]);
        combinations().all(|(profile, scope, kind)| {
            Names::new(profile, scope, &inst, kind)
                .destinations()
                .iter()
                .all(|d| d.validate().is_ok())
        })
    };
    let longest = (1..=MAX_INSTANCE_NAME_LEN)
        .rev()
        .find(|&len| all_valid(len))
        .unwrap_or(0);
    assert_eq!(longest, 39);
}

// ---------------------------------------------------------------------------------------------
// Uniqueness
// ---------------------------------------------------------------------------------------------

/// The destinations of one event that must differ from every other event's: (what, name).
fn per_event(profile: NamingProfile, scope: Scope, inst: &InstanceName, n: &Names) -> Vec<(String, String)> {
    let mut out = vec![
        ("webhook byEvents".to_owned(), n.webhook.url.clone()),
        (
            "rabbitmq routing key".to_owned(),
            format!("exchange {} key {}", n.rabbitmq.exchange, n.rabbitmq.routing_key),
        ),
        ("rabbitmq queue".to_owned(), n.rabbitmq.queue.clone()),
        ("kafka topic".to_owned(), n.kafka.topic.clone()),
        ("nats subject".to_owned(), n.nats.subject.clone()),
        (
            "pusher".to_owned(),
            format!("channel {} event {}", n.pusher.channel, n.pusher.event),
        ),
    ];
    for (label, single, t) in &n.sqs {
        if !(*single && scope == Scope::Global) {
            out.push(((*label).to_owned(), t.queue.clone()));
        }
    }
    for t in &n.websocket {
        if !websocket_shared(profile, inst, t) {
            out.push(("websocket".to_owned(), websocket_label(t)));
        }
    }
    out
}

/// The destinations every event of one profile, scope and instance shares by design.
fn shared(profile: NamingProfile, scope: Scope, inst: &InstanceName, n: &Names) -> BTreeSet<String> {
    let mut out = BTreeSet::from([format!("webhook {}", n.webhook_plain.url)]);
    for (label, single, t) in &n.sqs {
        if *single && scope == Scope::Global {
            out.insert(format!("{label} {}", t.queue));
        }
    }
    for t in &n.websocket {
        if websocket_shared(profile, inst, t) {
            out.insert(format!("websocket {}", websocket_label(t)));
        }
    }
    out
}

#[test]
fn no_two_event_kinds_share_a_per_event_destination() {
    let inst = instance(INSTANCE);
    let mut failures = Vec::new();
    for profile in NamingProfile::ALL {
        for scope in SCOPES {
            let mut seen: HashMap<(String, String), EventKind> = HashMap::new();
            let mut shared_by_all: Option<BTreeSet<String>> = None;
            for kind in EventKind::all() {
                let n = Names::new(profile, scope, &inst, kind);
                for key in per_event(profile, scope, &inst, &n) {
                    if let Some(other) = seen.get(&key) {
                        failures.push(format!(
                            "{profile}/{}: {kind} and {other} share {} `{}`",
                            scope_name(scope),
                            key.0,
                            key.1
                        ));
                    } else {
                        seen.insert(key, kind);
                    }
                }
                let s = shared(profile, scope, &inst, &n);
                match &shared_by_all {
                    None => shared_by_all = Some(s),
                    Some(first) => assert_eq!(
                        first,
                        &s,
                        "{profile}/{}/{kind}: a destination shared by design differs between events",
                        scope_name(scope)
                    ),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Instance names chosen to try to forge each other's names (separators, prefixes, the names of
/// the global destinations).
const TRICKY_INSTANCES: &[&str] = &[
    INSTANCE,
    "minha",
    "minha-instancia-2",
    "a",
    "a-b",
    "a_b",
    "a-messages",
    "a_messages",
    "a-send",
    "a_send",
    "send",
    "evolution",
    "global",
    "singlequeue",
    LONGEST_INSTANCE,
];

#[test]
fn instance_destinations_of_two_instances_never_collide() {
    // The webhook URL is each instance's own setting, not derived from the instance name: it is not
    // checked here. Pusher apps are per instance too, but two instances may share one app, so the
    // (channel, event) pair is checked.
    for profile in NamingProfile::ALL {
        let mut seen: HashMap<String, (&str, EventKind)> = HashMap::new();
        let mut failures = Vec::new();
        for &name in TRICKY_INSTANCES {
            let inst = instance(name);
            for kind in EventKind::all() {
                let n = Names::new(profile, Scope::Instance, &inst, kind);
                let mut keys: Vec<String> = n
                    .websocket
                    .iter()
                    .map(|t| format!("websocket {}", websocket_label(t)))
                    .collect();
                keys.push(format!(
                    "rabbitmq exchange {} key {}",
                    n.rabbitmq.exchange, n.rabbitmq.routing_key
                ));
                keys.push(format!("rabbitmq queue {}", n.rabbitmq.queue));
                keys.extend(n.sqs.iter().map(|(_, _, t)| format!("sqs {}", t.queue)));
                keys.push(format!("kafka topic {}", n.kafka.topic));
                keys.push(format!("nats subject {}", n.nats.subject));
                keys.push(format!(
                    "pusher channel {} event {}",
                    n.pusher.channel, n.pusher.event
                ));
                for key in keys {
                    match seen.get(&key) {
                        Some(&(other, other_kind)) if other != name => failures.push(format!(
                            "{profile}: `{name}` {kind} and `{other}` {other_kind} share {key}"
                        )),
                        Some(_) => {}
                        None => {
                            seen.insert(key, (name, kind));
                        }
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[test]
fn no_event_token_ends_another_so_instance_names_cannot_forge_one() {
    // Instance names may contain `-` and `_`, which also separate the instance from the event in
    // SQS queue names (`evolution-{instance}-{kebab}`, `{instance}_{snake}`). Instance `a-b` with
    // event X could only collide with instance `a` and event `b-X` if some event's token ended
    // with `-` + another's. (Dotted names are safe: instance names have no dots.)
    for a in EventKind::all() {
        for b in EventKind::all().filter(|b| *b != a) {
            assert!(
                !b.kebab().ends_with(&format!("-{}", a.kebab())),
                "{b} ends with {a}"
            );
            assert!(
                !b.snake().ends_with(&format!("_{}", a.snake())),
                "{b} ends with {a}"
            );
        }
    }
}
