//! Settings JSON (the bodies of `/instance/create` and `/{channel}/set`): never panics; what is
//! accepted serializes and parses back to the same settings; every refusal names a field.
#![no_main]

use evolution_events::{ChannelSettings, InstanceSettings, PusherSettings, WebhookSettings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    match InstanceSettings::from_json(&value) {
        Ok(settings) => {
            let again = serde_json::to_value(&settings).expect("settings serialize");
            assert_eq!(InstanceSettings::from_json(&again).expect("round trip"), settings);
            let _ = settings.redacted();
        }
        Err(errors) => assert!(
            errors
                .0
                .iter()
                .all(|e| !e.field.is_empty() && !e.message.is_empty())
        ),
    }
    if let Ok(w) = WebhookSettings::from_json(&value, "webhook") {
        let again = serde_json::to_value(&w).expect("serialize");
        assert_eq!(
            WebhookSettings::from_json(&again, "webhook").expect("round trip"),
            w
        );
    }
    let _ = PusherSettings::from_json(&value, "pusher");
    let _ = ChannelSettings::from_json(&value, "nats");
});
