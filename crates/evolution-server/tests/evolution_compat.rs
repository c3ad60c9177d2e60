//! Coming from Evolution API: its `SERVER_NAME`, its `POST /instance/create` and `/{channel}/set`
//! bodies, and (with `EVENT_NAMING=evolution-v2`) its shape of the settings answers — through the
//! real binary, with a real HTTP receiver.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{API_KEY, Receiver, Server};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// Evolution API 2.3.6's subscription list, in its order (what its answers list for "every event").
const EVOLUTION_EVENTS: [&str; 31] = [
    "APPLICATION_STARTUP",
    "QRCODE_UPDATED",
    "MESSAGES_SET",
    "MESSAGES_UPSERT",
    "MESSAGES_EDITED",
    "MESSAGES_UPDATE",
    "MESSAGES_DELETE",
    "SEND_MESSAGE",
    "SEND_MESSAGE_UPDATE",
    "CONTACTS_SET",
    "CONTACTS_UPSERT",
    "CONTACTS_UPDATE",
    "PRESENCE_UPDATE",
    "CHATS_SET",
    "CHATS_UPSERT",
    "CHATS_UPDATE",
    "CHATS_DELETE",
    "GROUPS_UPSERT",
    "GROUP_UPDATE",
    "GROUP_PARTICIPANTS_UPDATE",
    "CONNECTION_UPDATE",
    "LABELS_EDIT",
    "LABELS_ASSOCIATION",
    "CALL",
    "TYPEBOT_START",
    "TYPEBOT_CHANGE_STATUS",
    "REMOVE_INSTANCE",
    "LOGOUT_INSTANCE",
    "INSTANCE_CREATE",
    "INSTANCE_DELETE",
    "STATUS_INSTANCE",
];

/// The object's keys, sorted (JSON clients read fields by name).
fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

/// `SERVER_NAME=Evolution API` starts the server; server-wide events name the instance
/// `Evolution-API`.
#[tokio::test]
async fn a_server_name_with_spaces_starts_the_server() {
    let receiver = Receiver::start().await;
    let _server = Server::start(
        "server-name",
        &[
            ("SERVER_NAME", "Evolution API"),
            ("EVENT_NAMING", "evolution-v2"),
            ("WEBHOOK_GLOBAL_ENABLED", "true"),
            ("WEBHOOK_GLOBAL_URL", &receiver.url("/global")),
            ("WEBHOOK_EVENTS_APPLICATION_STARTUP", "true"),
        ],
    )
    .await;
    let hits = receiver.wait_for(1, WAIT).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].body["event"], "application.startup");
    assert_eq!(hits[0].body["instance"], "Evolution-API");
}

/// What an Evolution API client sends to `POST /instance/create` and `/{channel}/set` is accepted;
/// `find` and `set` answer Evolution API's stored rows, which can be sent back to `set`; a field
/// nobody sends is still a 400 naming it, and nothing is stored then.
#[tokio::test]
async fn evolution_bodies_are_accepted_and_answered_in_its_shape() {
    let receiver = Receiver::start().await;
    let server = Server::start(
        "evolution-bodies",
        &[("EVENT_NAMING", "evolution-v2"), ("WEBSOCKET_ENABLED", "true")],
    )
    .await;
    let create = |body: Value| server.call("POST", "/instance/create", Some(API_KEY), Some(body));

    // A field nobody sends, a mistyped Evolution field: 400 naming each, nothing stored.
    let (status, body) = create(json!({"instanceName": "acme", "qrcode": "yes", "bogusField": 1})).await;
    assert_eq!(status, 400, "{body}");
    let message = body["response"]["message"].to_string();
    assert!(
        message.contains("qrcode: expected true or false") && message.contains("bogusField: unknown field"),
        "{message}"
    );
    let (_, list) = server
        .call("GET", "/instance/fetchInstances", Some(API_KEY), None)
        .await;
    assert_eq!(list, json!([]));

    // Evolution API's create body (Manager / n8n style), unchanged.
    let (status, body) = create(json!({
        "instanceName": "acme",
        "token": "",
        "qrcode": true,
        "number": "5511999999999",
        "integration": "WHATSAPP-BAILEYS",
        "rejectCall": false,
        "msgCall": "",
        "groupsIgnore": true,
        "alwaysOnline": false,
        "readMessages": false,
        "readStatus": false,
        "syncFullHistory": false,
        "proxyHost": "",
        "proxyPort": "",
        "proxyProtocol": "",
        "proxyUsername": "",
        "proxyPassword": "",
        "webhook": {
            "url": receiver.url("/acme"),
            "byEvents": false,
            "base64": true,
            "headers": {"authorization": "Bearer secret-token"},
            "events": ["MESSAGES_UPSERT"]
        },
        "websocket": {"enabled": true, "events": []}
    }))
    .await;
    assert_eq!(status, 201, "{body}");
    let instance_id = body["instance"]["instanceId"].as_str().unwrap().to_owned();
    assert!(
        body["hash"].as_str().unwrap().len() >= 32,
        "an empty token is generated: {body}"
    );

    // find: Evolution API's stored row.
    let (status, row) = server
        .call("GET", "/webhook/find/acme", Some(API_KEY), None)
        .await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(
        keys(&row),
        [
            "enabled",
            "events",
            "headers",
            "id",
            "instanceId",
            "url",
            "webhookBase64",
            "webhookByEvents"
        ]
    );
    assert_eq!(row["url"], receiver.url("/acme"));
    assert_eq!(row["headers"]["authorization"], "**REDACTED**");
    assert_eq!(row["enabled"], true);
    assert_eq!(row["events"], json!(["MESSAGES_UPSERT"]));
    assert_eq!(row["webhookByEvents"], false);
    assert_eq!(row["webhookBase64"], true);
    assert_eq!(row["instanceId"], instance_id.as_str());
    let (_, websocket) = server
        .call("GET", "/websocket/find/acme", Some(API_KEY), None)
        .await;
    assert_eq!(keys(&websocket), ["enabled", "events", "id", "instanceId"]);
    assert_eq!(
        websocket["events"],
        json!(EVOLUTION_EVENTS),
        "events: [] is every event"
    );
    assert_ne!(websocket["id"], row["id"]);
    let (_, none) = server.call("GET", "/pusher/find/acme", Some(API_KEY), None).await;
    assert_eq!(none, Value::Null);

    // set: the row read back, edited as a client does, with its real header value.
    let mut edited = row.clone();
    edited["webhookByEvents"] = json!(true);
    edited["headers"] = json!({"authorization": "Bearer secret-token"});
    edited["createdAt"] = json!("2025-10-21T11:40:39.123Z");
    edited["updatedAt"] = json!("2025-10-21T11:40:39.123Z");
    let (status, answer) = server
        .call(
            "POST",
            "/webhook/set/acme",
            Some(API_KEY),
            Some(json!({"webhook": edited})),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["webhookByEvents"], true, "the row itself: {answer}");
    assert_eq!(answer["id"], row["id"], "the same row");
    let (status, answer) = server
        .call(
            "POST",
            "/webhook/set/acme",
            Some(API_KEY),
            Some(json!({"webhook": {"enabled": true, "url": receiver.url("/acme"), "nope": 1}})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["response"]["message"].to_string().contains("webhook.nope"),
        "{answer}"
    );

    // The stored settings deliver: byEvents now on, Evolution API's suffix and payload.
    let (status, body) = server
        .call(
            "POST",
            "/events/acme",
            Some(API_KEY),
            Some(json!({"event": "MESSAGES_UPSERT", "data": {"key": {"id": "M1"}}})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let hits = receiver.wait_for(1, WAIT).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].path, "/acme/messages-upsert");
    assert_eq!(hits[0].body["event"], "messages.upsert");
    assert_eq!(hits[0].headers["authorization"], "Bearer secret-token");
}
