//! `GET /openapi.json`: the OpenAPI 3.1 description of the REST API, built from the same route
//! list the server mounts (a test calls every documented operation and checks it exists).

use serde_json::{Value, json};

/// One documented operation.
struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    body: Option<Value>,
    ok: (&'static str, Value),
    auth: bool,
}

fn error_ref() -> Value {
    json!({"$ref": "#/components/schemas/Error"})
}

fn events_schema() -> Value {
    json!({"type": "array", "items": {"type": "string", "description": "Event name: MESSAGES_UPSERT, messages.upsert or messages-upsert"}, "description": "Selected events; empty means every event"})
}

fn filter_schema() -> Value {
    json!({"type": "object", "description": "Payload filter: only events whose payload matches are delivered (never stored otherwise). \
Keys are payload paths (`data.key.fromMe`, or nested objects); values are a literal (equality) or operators \
$eq, $ne, $in, $nin, $startsWith, $endsWith, $exists, combined with $and, $or, $not. \
Example: {\"data.key.fromMe\": false, \"data.key.remoteJid\": {\"$endsWith\": \"@g.us\"}}"})
}

/// The fields of Evolution API's stored settings rows, accepted (and ignored) in every settings
/// object, so that what `find` answered can be sent back to `set`.
fn row_fields() -> Value {
    json!({"id": {"description": "ignored"}, "createdAt": {"description": "ignored"},
        "updatedAt": {"description": "ignored"}, "instanceId": {"description": "ignored"}})
}

fn with_row_fields(mut schema: Value) -> Value {
    if let (Some(properties), Value::Object(row)) = (schema["properties"].as_object_mut(), row_fields()) {
        properties.extend(row);
    }
    schema
}

fn channel_settings() -> Value {
    with_row_fields(
        json!({"type": "object", "additionalProperties": false, "required": ["enabled"],
        "properties": {"enabled": {"type": "boolean"}, "events": events_schema(), "filter": filter_schema()}}),
    )
}

fn webhook_settings() -> Value {
    with_row_fields(
        json!({"type": "object", "additionalProperties": false, "required": ["enabled", "url"],
        "properties": {"enabled": {"type": "boolean"}, "url": {"type": "string", "format": "uri"},
            "events": events_schema(), "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "base64": {"type": "boolean"}, "byEvents": {"type": "boolean"},
            "rateLimit": {"type": "integer", "minimum": 1, "maximum": 10000, "description": "at most this many events per second reach the URL"},
            "filter": filter_schema(),
            "webhookBase64": {"type": "boolean", "description": "Evolution API's name of base64"},
            "webhookByEvents": {"type": "boolean", "description": "Evolution API's name of byEvents"},
            "webhook_base64": {"type": "boolean", "description": "Evolution API v1's name of base64"},
            "webhook_by_events": {"type": "boolean", "description": "Evolution API v1's name of byEvents"}}}),
    )
}

fn pusher_settings() -> Value {
    with_row_fields(json!({"type": "object", "additionalProperties": false,
        "required": ["enabled", "appId", "key", "secret", "cluster", "useTLS"],
        "properties": {"enabled": {"type": "boolean"}, "appId": {"type": "string"}, "key": {"type": "string"},
            "secret": {"type": "string"}, "cluster": {"type": "string"}, "useTLS": {"type": "boolean"},
            "events": events_schema(), "host": {"type": "string"}, "port": {"type": "integer"},
            "filter": filter_schema()}}))
}

/// Evolution API's `POST /instance/create` fields that mean nothing here: accepted (type-checked)
/// and ignored.
fn ignored_create_fields() -> Value {
    crate::evolution::ignored_create_fields()
        .map(|name| {
            (
                name.to_owned(),
                json!({"description": "Evolution API field, accepted and ignored"}),
            )
        })
        .collect::<serde_json::Map<String, Value>>()
        .into()
}

fn event_format_schema() -> Value {
    json!({"type": ["string", "null"], "enum": ["evolution", "cloudevents", "cloudevents-structured", null],
        "description": "The format of the instance's events on every channel; null or absent: the server's EVENT_FORMAT"})
}

fn operations() -> Vec<Op> {
    vec![
        Op {
            method: "post",
            path: "/instance/create",
            summary: "Create an instance (global apikey only); channel settings may be given; emits INSTANCE_CREATE. \
                      Evolution API's other fields (integration, qrcode, number, its settings, proxy, Chatwoot and \
                      Typebot fields) are accepted and ignored",
            body: Some({
                let mut body = json!({"type": "object", "additionalProperties": false, "required": ["instanceName"],
                "properties": {"instanceName": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"},
                    "token": {"type": "string", "description": "at least 8 characters; empty or absent: generated"},
                    "eventFormat": event_format_schema(),
                    "webhook": webhook_settings(), "websocket": channel_settings(), "rabbitmq": channel_settings(),
                    "sqs": channel_settings(), "kafka": channel_settings(), "nats": channel_settings(),
                    "pusher": pusher_settings()}});
                if let (Some(properties), Value::Object(ignored)) =
                    (body["properties"].as_object_mut(), ignored_create_fields())
                {
                    properties.extend(ignored);
                }
                body
            }),
            ok: (
                "201",
                json!({"type": "object", "properties": {"instance": {"type": "object"}, "hash": {"type": "string", "description": "the instance token"}}}),
            ),
            auth: true,
        },
        Op {
            method: "get",
            path: "/instance/fetchInstances",
            summary: "List instances (an instance token sees only its own)",
            body: None,
            ok: ("200", json!({"type": "array", "items": {"type": "object"}})),
            auth: true,
        },
        Op {
            method: "delete",
            path: "/instance/delete/{instance}",
            summary: "Delete an instance; emits INSTANCE_DELETE then REMOVE_INSTANCE",
            body: None,
            ok: ("200", json!({"type": "object"})),
            auth: true,
        },
        Op {
            method: "post",
            path: "/{channel}/set/{instance}",
            summary: "Set one channel's settings: body {\"<channel>\": {...}}; a value sent back exactly as find showed it redacted keeps the stored secret",
            body: Some(
                json!({"type": "object", "description": "{\"webhook\": WebhookSettings} | {\"pusher\": PusherSettings} | {\"websocket\"|\"rabbitmq\"|\"sqs\"|\"kafka\"|\"nats\": ChannelSettings}",
                "properties": {"webhook": webhook_settings(), "pusher": pusher_settings(), "websocket": channel_settings(),
                    "rabbitmq": channel_settings(), "sqs": channel_settings(), "kafka": channel_settings(), "nats": channel_settings()}}),
            ),
            ok: (
                "201",
                json!({"type": "object", "description": "the stored settings, secrets redacted: {\"<channel>\": {...}}; \
                    with EVENT_NAMING=evolution-v2, Evolution API's stored row itself (id, the settings with \
                    webhookByEvents/webhookBase64, every event listed, instanceId)"}),
            ),
            auth: true,
        },
        Op {
            method: "get",
            path: "/{channel}/find/{instance}",
            summary: "One channel's settings (secrets redacted), or null; with EVENT_NAMING=evolution-v2 as Evolution \
                      API's stored row",
            body: None,
            ok: ("200", json!({"type": ["object", "null"]})),
            auth: true,
        },
        Op {
            method: "post",
            path: "/events/{instance}",
            summary: "Accept one event or an array of them; answers after the durable commit. Optional W3C `traceparent` / `tracestate` request headers: the events continue that trace (a new one without them), and every delivery carries it",
            body: Some(
                json!({"oneOf": [{"$ref": "#/components/schemas/EventInput"}, {"type": "array", "items": {"$ref": "#/components/schemas/EventInput"}}]}),
            ),
            ok: (
                "202",
                json!({"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "string", "format": "uuid"}}}}),
            ),
            auth: true,
        },
        Op {
            method: "get",
            path: "/deliveries/{instance}/destinations",
            summary: "Endpoint health: per destination of the instance, last success, consecutive failures and state (healthy, failing, disabled: every attempt failed for WEBHOOK_DISABLE_AFTER_SECONDS; setting the channel enabled again redrives what it held)",
            body: None,
            ok: (
                "200",
                json!({"type": "array", "items": {"type": "object", "properties": {
                "channel": {"type": "string"}, "scope": {"type": "string"}, "destination": {"type": "string"},
                "state": {"type": "string", "enum": ["healthy", "failing", "disabled"]},
                "lastSuccess": {"type": ["string", "null"]}, "lastFailure": {"type": ["string", "null"]},
                "failingSince": {"type": ["string", "null"]}, "consecutiveFailures": {"type": "integer"},
                "lastError": {"type": ["string", "null"]}, "disabledAt": {"type": ["string", "null"]}}}}),
            ),
            auth: true,
        },
        Op {
            method: "get",
            path: "/events/{instance}",
            summary: "Catch-up: the kept events whose sequence is greater than ?after= (default 0), in sequence order, at most ?limit= (1 to 1000, default 100), each as the channels send it; ask again from `next` while `more`",
            body: None,
            ok: (
                "200",
                json!({"type": "object", "required": ["instance", "after", "next", "more", "events"],
                    "properties": {"instance": {"type": "string"}, "after": {"type": "integer"},
                        "next": {"type": "integer", "description": "sequence of the last event returned (after, when none)"},
                        "more": {"type": "boolean"}, "events": {"type": "array", "items": {"type": "object"}}}}),
            ),
            auth: true,
        },
        Op {
            method: "get",
            path: "/events/{instance}/{id}/payload",
            summary: "The whole event behind an oversize reference (<CHANNEL>_OVERSIZE=reference), without an apikey: the signed URL of the reference body (?expires=&signature=); 403 once expired (EVENTS_REFERENCE_TTL) or changed",
            body: None,
            ok: ("200", json!({"type": "object"})),
            auth: false,
        },
        Op {
            method: "get",
            path: "/events/{instance}/{id}",
            summary: "One accepted event as its deliveries carry it (resolves a Pusher `truncated` reference); 404 once pruned",
            body: None,
            ok: ("200", json!({"type": "object"})),
            auth: true,
        },
        Op {
            method: "get",
            path: "/deliveries/{instance}",
            summary: "Delivery log, newest first (?status=pending|failed|dead|delivered&channel=&limit=)",
            body: None,
            ok: ("200", json!({"type": "array", "items": {"type": "object"}})),
            auth: true,
        },
        Op {
            method: "post",
            path: "/deliveries/{id}/retry",
            summary: "Send one dead delivery again",
            body: None,
            ok: (
                "200",
                json!({"type": "object", "properties": {"redriven": {"type": "integer"}}}),
            ),
            auth: true,
        },
        Op {
            method: "post",
            path: "/deliveries/{instance}/redrive",
            summary: "Send an instance's dead deliveries again (optional body or query: channel, since, until)",
            body: Some(
                json!({"type": "object", "additionalProperties": false, "properties": {"channel": {"type": "string"}, "since": {"type": "string", "format": "date-time"}, "until": {"type": "string", "format": "date-time"}}}),
            ),
            ok: (
                "200",
                json!({"type": "object", "properties": {"redriven": {"type": "integer"}}}),
            ),
            auth: true,
        },
        Op {
            method: "delete",
            path: "/deliveries/{instance}/dead",
            summary: "Delete an instance's dead deliveries for good (optional body or query: channel, since, until); they are kept until redriven or purged",
            body: Some(
                json!({"type": "object", "additionalProperties": false, "properties": {"channel": {"type": "string"}, "since": {"type": "string", "format": "date-time"}, "until": {"type": "string", "format": "date-time"}}}),
            ),
            ok: (
                "200",
                json!({"type": "object", "properties": {"purged": {"type": "integer"}}}),
            ),
            auth: true,
        },
        Op {
            method: "get",
            path: "/console/api/session",
            summary: "For the web console (/console): who the apikey is (access global or instance, and which) and what this server offers (channels, event names, whether Socket.IO is on)",
            body: None,
            ok: (
                "200",
                json!({"type": "object", "required": ["access", "channels", "events", "websocket"],
                "properties": {"access": {"enum": ["global", "instance"]}, "instance": {"type": "string"},
                    "channels": {"type": "array", "items": {"type": "string"}}, "events": {"type": "array", "items": {"type": "string"}},
                    "websocket": {"type": "boolean"}, "version": {"type": "string"}}}),
            ),
            auth: true,
        },
        Op {
            method: "get",
            path: "/console/api/settings/{channel}/{instance}",
            summary: "For the web console: as GET /{channel}/find/{instance}, in the seed profile's shape whatever EVENT_NAMING says",
            body: None,
            ok: (
                "200",
                json!({"type": "object", "description": "one channel's settings, secrets redacted"}),
            ),
            auth: true,
        },
        Op {
            method: "post",
            path: "/console/api/settings/{channel}/{instance}",
            summary: "For the web console: as POST /{channel}/set/{instance}, answered in the seed profile's shape whatever EVENT_NAMING says",
            body: Some(
                json!({"type": "object", "description": "{\"<channel>\": {...}}, as POST /{channel}/set/{instance}"}),
            ),
            ok: (
                "201",
                json!({"type": "object", "description": "the stored settings, secrets redacted"}),
            ),
            auth: true,
        },
        Op {
            method: "get",
            path: "/health",
            summary: "Liveness",
            body: None,
            ok: ("200", json!({"type": "object"})),
            auth: false,
        },
        Op {
            method: "get",
            path: "/ready",
            summary: "Every sink's health check (run at the same time, each at most 5 s) and the storage; the same answer for 1 s",
            body: None,
            ok: ("200", json!({"type": "object"})),
            auth: false,
        },
        Op {
            method: "get",
            path: "/metrics",
            summary: "Prometheus metrics",
            body: None,
            ok: ("200", json!({"type": "string"})),
            auth: false,
        },
        Op {
            method: "post",
            path: "/format/set/{instance}",
            summary: "Choose the format of the instance's events on every channel: evolution, cloudevents (CloudEvents 1.0, binary mode where the binding has one) or cloudevents-structured; null follows EVENT_FORMAT",
            body: Some(
                json!({"type": "object", "additionalProperties": false, "required": ["eventFormat"],
                    "properties": {"eventFormat": event_format_schema()}}),
            ),
            ok: (
                "201",
                json!({"type": "object", "properties": {"eventFormat": event_format_schema(), "effective": {"type": "string"}}}),
            ),
            auth: true,
        },
        Op {
            method: "get",
            path: "/format/find/{instance}",
            summary: "The instance's eventFormat (null: the server's) and the format its events are written in",
            body: None,
            ok: (
                "200",
                json!({"type": "object", "properties": {"eventFormat": event_format_schema(), "effective": {"type": "string"}}}),
            ),
            auth: true,
        },
        Op {
            method: "get",
            path: "/asyncapi/{instance}",
            summary: "AsyncAPI 3.0 document of the channels the instance's settings enable: servers, each channel's real address and bindings, the envelope of each event, the security schemes",
            body: None,
            ok: ("200", json!({"type": "object"})),
            auth: true,
        },
        Op {
            method: "get",
            path: "/asyncapi",
            summary: "AsyncAPI 3.0 document of the global channels (`{instance}` a parameter of the addresses that hold it); global apikey only",
            body: None,
            ok: ("200", json!({"type": "object"})),
            auth: true,
        },
        Op {
            method: "get",
            path: "/openapi.json",
            summary: "This document",
            body: None,
            ok: ("200", json!({"type": "object"})),
            auth: false,
        },
    ]
}

/// The document.
pub(crate) fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for op in operations() {
        let params: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut operation = json!({
            "summary": op.summary,
            "parameters": params,
            "responses": {
                op.ok.0: {"description": "success", "content": {"application/json": {"schema": op.ok.1}}},
                "4XX": {"description": "bad input or access", "content": {"application/json": {"schema": error_ref()}}},
                "503": {"description": "storage or queue unavailable (Retry-After)", "content": {"application/json": {"schema": error_ref()}}},
            },
        });
        if let Some(body) = op.body {
            operation["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": body}}});
        }
        if op.auth {
            operation["security"] = json!([{"apikey": []}]);
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "evolution events", "version": env!("CARGO_PKG_VERSION"),
            "description": "Delivers events to webhook, WebSocket, RabbitMQ, SQS, Kafka, NATS and Pusher. Operators' web console: GET /console/."},
        "paths": paths,
        "components": {
            "securitySchemes": {"apikey": {"type": "apiKey", "in": "header", "name": "apikey"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"status": {"type": "integer"}, "error": {"type": "string"},
                    "response": {"type": "object", "properties": {"message": {"type": "array", "items": {"type": "string"}}}}}},
                "EventInput": {"type": "object", "additionalProperties": false, "required": ["event"],
                    "properties": {"event": {"type": "string"}, "data": {}, "sender": {"type": "string"}}},
            },
        },
    })
}
