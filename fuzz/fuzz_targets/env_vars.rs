//! Configuration variables: arbitrary values for the variables the channels read never panic the
//! strict parser; every refusal names its variable.
#![no_main]

use std::collections::BTreeMap;

use evolution_events::{GlobalSettings, Vars};
use evolution_sinks::build;
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "WEBHOOK_GLOBAL_ENABLED",
    "WEBHOOK_REQUEST_TIMEOUT_MS",
    "WEBHOOK_RETRY_MAX_ATTEMPTS",
    "WEBHOOK_RETRY_INITIAL_DELAY_SECONDS",
    "WEBHOOK_RETRY_USE_EXPONENTIAL_BACKOFF",
    "WEBHOOK_RETRY_MAX_DELAY_SECONDS",
    "WEBHOOK_RETRY_JITTER_FACTOR",
    "WEBHOOK_RETRY_NON_RETRYABLE_STATUS_CODES",
    "WEBHOOK_EVENTS_MESSAGES_UPSERT",
    "WEBHOOK_EVENTS_GROUP_UPDATE",
    "RABBITMQ_ENABLED",
    "NATS_ENABLED",
    "SERVER_PORT",
];

fuzz_target!(|input: &str| {
    // One value per line, assigned to the names in order.
    let values: BTreeMap<String, String> = NAMES
        .iter()
        .zip(input.split('\n'))
        .map(|(n, v)| ((*n).to_owned(), v.to_owned()))
        .collect();
    let mut vars = Vars::new(values);
    let _ = vars.bool("WEBHOOK_GLOBAL_ENABLED");
    let _ = vars.number::<u16>("SERVER_PORT", "a port number");
    let _ = vars.events("WEBHOOK_EVENTS_");
    let mut global = GlobalSettings::default();
    build::read_global(&mut vars, &mut global);
    let _ = build::plan(&mut vars, &global);
    for error in vars.errors() {
        assert!(
            NAMES.iter().any(|n| error.contains(n)),
            "an error without its variable: {error}"
        );
    }
});
