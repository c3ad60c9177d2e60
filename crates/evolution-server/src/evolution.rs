//! Coming from Evolution API: the `POST /instance/create` fields its clients send that have no
//! meaning here (accepted, type-checked, ignored), and its shape of the settings answers of
//! `/{channel}/set` and `/{channel}/find` (`EVENT_NAMING=evolution-v2`).

use evolution_events::naming::EVOLUTION_SUBSCRIPTIONS;
use evolution_events::{Channel, EventSelection, InstanceSettings, NamingProfile, Uuid};
use evolution_outbox::InstanceRecord;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The JSON type an ignored field must have (as Evolution API's schema checks it).
#[derive(Clone, Copy, Debug)]
enum Kind {
    Bool,
    Text,
    Number,
    TextOrNumber,
    Events,
    Integration,
}

/// Evolution API 2.3.6's `integration` values.
const INTEGRATIONS: [&str; 3] = ["WHATSAPP-BAILEYS", "WHATSAPP-BUSINESS", "EVOLUTION"];

/// The fields of Evolution API's `POST /instance/create` that concern WhatsApp, its chatbots or
/// its legacy flat channel fields (which Evolution API itself ignores): accepted and ignored. The
/// nested channel objects (`webhook`, `rabbitmq`, …), `instanceName` and `token` are read as usual.
const IGNORED_CREATE_FIELDS: &[(&str, Kind)] = &[
    // The instance (WhatsApp connection)
    ("instanceId", Kind::Text),
    ("qrcode", Kind::Bool),
    ("number", Kind::Text),
    ("integration", Kind::Integration),
    ("businessId", Kind::Text),
    ("status", Kind::Text),
    // Its settings
    ("rejectCall", Kind::Bool),
    ("msgCall", Kind::Text),
    ("groupsIgnore", Kind::Bool),
    ("alwaysOnline", Kind::Bool),
    ("readMessages", Kind::Bool),
    ("readStatus", Kind::Bool),
    ("syncFullHistory", Kind::Bool),
    ("wavoipToken", Kind::Text),
    // Its proxy
    ("proxyHost", Kind::Text),
    ("proxyPort", Kind::TextOrNumber),
    ("proxyProtocol", Kind::Text),
    ("proxyUsername", Kind::Text),
    ("proxyPassword", Kind::Text),
    // Legacy flat channel fields (ignored by Evolution API 2.x too)
    ("webhookUrl", Kind::Text),
    ("webhookByEvents", Kind::Bool),
    ("webhookBase64", Kind::Bool),
    ("webhookEvents", Kind::Events),
    ("rabbitmqEnabled", Kind::Bool),
    ("rabbitmqEvents", Kind::Events),
    ("sqsEnabled", Kind::Bool),
    ("sqsEvents", Kind::Events),
    // Chatwoot
    ("chatwootAccountId", Kind::TextOrNumber),
    ("chatwootToken", Kind::Text),
    ("chatwootUrl", Kind::Text),
    ("chatwootSignMsg", Kind::Bool),
    ("chatwootReopenConversation", Kind::Bool),
    ("chatwootConversationPending", Kind::Bool),
    ("chatwootImportContacts", Kind::Bool),
    ("chatwootNameInbox", Kind::Text),
    ("chatwootMergeBrazilContacts", Kind::Bool),
    ("chatwootImportMessages", Kind::Bool),
    ("chatwootDaysLimitImportMessages", Kind::Number),
    ("chatwootOrganization", Kind::Text),
    ("chatwootLogo", Kind::Text),
    ("chatwootAutoCreate", Kind::Bool),
    // Typebot
    ("typebotUrl", Kind::Text),
    ("typebot", Kind::Bool),
    ("typebotExpire", Kind::Number),
    ("typebotKeywordFinish", Kind::Text),
    ("typebotDelayMessage", Kind::Number),
    ("typebotUnknownMessage", Kind::Text),
    ("typebotListeningFromMe", Kind::Bool),
];

/// Every ignored field's name (for the docs and the error listing what is accepted).
pub(crate) fn ignored_create_fields() -> impl Iterator<Item = &'static str> {
    IGNORED_CREATE_FIELDS.iter().map(|(name, _)| *name)
}

/// `None` when `key` is not one of Evolution API's ignored create fields; otherwise `Ok` when its
/// value has the field's type (`null` always does), or the problem, naming the field.
pub(crate) fn check_ignored_create_field(key: &str, value: &Value) -> Option<Result<(), String>> {
    let (_, kind) = IGNORED_CREATE_FIELDS.iter().find(|(name, _)| *name == key)?;
    let ok = match (kind, value) {
        (_, Value::Null)
        | (Kind::Bool, Value::Bool(_))
        | (Kind::Text, Value::String(_))
        | (Kind::Number, Value::Number(_))
        | (Kind::TextOrNumber, Value::String(_) | Value::Number(_)) => true,
        (Kind::Events, Value::Array(items)) => items.iter().all(Value::is_string),
        (Kind::Integration, Value::String(s)) => INTEGRATIONS.contains(&s.as_str()),
        _ => false,
    };
    Some(if ok {
        Ok(())
    } else {
        let expected = match kind {
            Kind::Bool => "true or false".to_owned(),
            Kind::Text => "a string".to_owned(),
            Kind::Number => "a number".to_owned(),
            Kind::TextOrNumber => "a string or a number".to_owned(),
            Kind::Events => "an array of event names".to_owned(),
            Kind::Integration => format!("one of {}", INTEGRATIONS.join(", ")),
        };
        Err(format!(
            "{key}: expected {expected} (accepted for Evolution API clients, and ignored)"
        ))
    })
}

/// A stable id of an instance's settings of one channel (Evolution API's row `id`): derived from
/// the instance id and the channel, so `set` and `find` answer the same one.
fn row_id(record: &InstanceRecord, channel: Channel) -> Uuid {
    let digest = Sha256::new()
        .chain_update(record.id.as_bytes())
        .chain_update(channel.as_str().as_bytes())
        .finalize();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The events as Evolution API lists them: every event of its subscription list, in its order,
/// for "every event"; `GROUP_UPDATE` for `GROUPS_UPDATE`.
fn events(selection: &EventSelection) -> Value {
    let kinds = if selection.kinds().is_empty() {
        &EVOLUTION_SUBSCRIPTIONS[..]
    } else {
        selection.kinds()
    };
    kinds
        .iter()
        .map(|k| Value::from(NamingProfile::EvolutionV2.settings_event(*k)))
        .collect()
}

/// `channel`'s settings as Evolution API's stored row (`find` and `set` answer it): `id`,
/// the settings with Evolution API's field names, `instanceId`; `null` when the channel is not
/// configured. Secrets are shown redacted, as in every answer of this server. The row's
/// `createdAt`/`updatedAt` are not kept, so not shown.
pub(crate) fn settings_row(record: &InstanceRecord, settings: &InstanceSettings, channel: Channel) -> Value {
    let settings = settings.redacted();
    let mut row = Map::new();
    row.insert("id".to_owned(), json!(row_id(record, channel)));
    let (enabled, selection) = match channel {
        Channel::Webhook => {
            let Some(w) = &settings.webhook else {
                return Value::Null;
            };
            row.insert("url".to_owned(), json!(w.url));
            row.insert("headers".to_owned(), json!(w.headers));
            (w.enabled, &w.events)
        }
        Channel::Pusher => {
            let Some(p) = &settings.pusher else {
                return Value::Null;
            };
            row.insert("appId".to_owned(), json!(p.app_id));
            row.insert("key".to_owned(), json!(p.key));
            row.insert("secret".to_owned(), json!(p.secret));
            row.insert("cluster".to_owned(), json!(p.cluster));
            row.insert("useTLS".to_owned(), json!(p.use_tls));
            (p.enabled, &p.events)
        }
        Channel::Websocket | Channel::Rabbitmq | Channel::Sqs | Channel::Kafka | Channel::Nats => {
            let basic = match channel {
                Channel::Websocket => &settings.websocket,
                Channel::Rabbitmq => &settings.rabbitmq,
                Channel::Sqs => &settings.sqs,
                Channel::Kafka => &settings.kafka,
                _ => &settings.nats,
            };
            let Some(b) = basic else {
                return Value::Null;
            };
            (b.enabled, &b.events)
        }
        Channel::Custom(_) => return Value::Null,
    };
    row.insert("enabled".to_owned(), json!(enabled));
    row.insert("events".to_owned(), events(selection));
    if let (Channel::Webhook, Some(w)) = (channel, &settings.webhook) {
        row.insert("webhookByEvents".to_owned(), json!(w.by_events));
        row.insert("webhookBase64".to_owned(), json!(w.base64));
    }
    row.insert("instanceId".to_owned(), json!(record.id));
    Value::Object(row)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ignored_fields_are_type_checked() {
        assert_eq!(check_ignored_create_field("instanceName", &json!("x")), None);
        assert_eq!(check_ignored_create_field("bogus", &json!(1)), None);
        for (key, value) in [
            ("qrcode", json!(true)),
            ("integration", json!("WHATSAPP-BAILEYS")),
            ("number", json!("5511999999999")),
            ("proxyPort", json!(3128)),
            ("proxyPort", json!("3128")),
            ("webhookEvents", json!(["MESSAGES_UPSERT"])),
            ("rejectCall", Value::Null),
        ] {
            assert_eq!(check_ignored_create_field(key, &value), Some(Ok(())), "{key}");
        }
        let e = check_ignored_create_field("qrcode", &json!("yes"))
            .unwrap()
            .unwrap_err();
        assert!(e.starts_with("qrcode: expected true or false"), "{e}");
        let e = check_ignored_create_field("integration", &json!("TELEGRAM"))
            .unwrap()
            .unwrap_err();
        assert!(
            e.contains("WHATSAPP-BAILEYS, WHATSAPP-BUSINESS, EVOLUTION"),
            "{e}"
        );
    }
}
