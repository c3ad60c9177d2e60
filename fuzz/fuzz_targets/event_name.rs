//! Event-name parsing: never panics, and every name it accepts maps back to itself through the
//! registry's own names.
#![no_main]

use evolution_events::EventKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    match EventKind::parse(input) {
        Ok(kind) => {
            assert_eq!(EventKind::parse(kind.key()), Ok(kind));
            assert_eq!(EventKind::parse(kind.wire()), Ok(kind));
            assert_eq!(EventKind::parse(&kind.kebab()), Ok(kind));
        }
        Err(e) => assert!(
            e.to_string().contains("MESSAGES_UPSERT"),
            "the error lists the valid names"
        ),
    }
});
