//! AsyncAPI 3.0 documents of what the server publishes: `GET /asyncapi/{instance}` (the channels
//! an instance's own settings enable) and `GET /asyncapi` (the global channels, the instance a
//! channel parameter). Every address comes from the router, so from the naming registry: the
//! document says exactly where the events go.

use std::collections::BTreeMap;

use evolution_events::{
    CLOUDEVENTS_JSON, Channel, Destination, EventEnvelope, EventFormat, EventKind, InstanceName,
    InstanceSettings, NamingProfile, RawValue, Scope,
};
use serde_json::{Map, Value, json};

use crate::app::App;

/// The instance name routed for the global document, replaced by `{instance}` in its addresses
/// (lower case: names that lower-case the instance keep it).
const PLACEHOLDER: &str = "instance0placeholder0";

/// The document of `instance`'s own channels.
pub(crate) fn instance_document(app: &App, instance: &InstanceName, settings: &InstanceSettings) -> Value {
    let format = settings.event_format.unwrap_or(app.config.event_format);
    let mut doc = Doc::new(app, Some(instance.as_str()), format);
    doc.add_routes(instance, Some(settings), Scope::Instance);
    let profile = doc.profile;
    doc.finish(
        format!("evolution events: instance {instance}"),
        format!(
            "The channels the settings of instance `{instance}` enable: where each of its events is \
             delivered, in the `{}` naming profile and the `{format}` format, and what every message \
             carries.",
            profile.as_str()
        ),
    )
}

/// The document of the global channels (`*_GLOBAL_*` settings), for any instance.
pub(crate) fn global_document(app: &App) -> Value {
    let format = app.config.event_format;
    let mut doc = Doc::new(app, None, format);
    if let Ok(placeholder) = InstanceName::new(PLACEHOLDER) {
        doc.add_routes(&placeholder, None, Scope::Global);
    }
    let profile = doc.profile;
    doc.finish(
        "evolution events: global channels".to_owned(),
        format!(
            "The global channels of this server (the `*_GLOBAL_*` settings): where the events of every \
             instance are delivered, in the `{}` naming profile and the `{format}` format (an instance \
             with an `eventFormat` of its own has its events written in it); `{{instance}}` in an \
             address is the instance's name.",
            profile.as_str()
        ),
    )
}

struct Doc<'a> {
    app: &'a App,
    profile: NamingProfile,
    /// `Some` for an instance's document (the Kafka key is its name).
    instance: Option<&'a str>,
    servers: Map<String, Value>,
    channels: Map<String, Value>,
    operations: Map<String, Value>,
    schemes: Map<String, Value>,
    format: EventFormat,
    /// The schemas the messages refer to.
    schemas: BTreeMap<String, Value>,
}

impl<'a> Doc<'a> {
    fn new(app: &'a App, instance: Option<&'a str>, format: EventFormat) -> Self {
        Self {
            app,
            profile: app.dispatcher.router().global().naming,
            instance,
            servers: Map::new(),
            channels: Map::new(),
            operations: Map::new(),
            schemes: Map::new(),
            format,
            schemas: BTreeMap::new(),
        }
    }

    /// Every route of `scope` for `instance`, grouped by destination (a destination that several
    /// events go to is one channel with several messages).
    fn add_routes(&mut self, instance: &InstanceName, settings: Option<&InstanceSettings>, scope: Scope) {
        let router = self.app.dispatcher.router();
        let mut groups: Vec<(Channel, Destination, Vec<EventKind>)> = Vec::new();
        for kind in EventKind::all() {
            let envelope = EventEnvelope::new(kind, instance.clone(), RawValue::NULL.to_owned());
            let Ok(routes) = router.route(&envelope, settings) else {
                continue;
            };
            for route in routes.into_iter().filter(|r| r.scope == scope) {
                match groups
                    .iter_mut()
                    .find(|(c, d, _)| *c == route.channel && *d == route.destination)
                {
                    Some((_, _, kinds)) => kinds.push(kind),
                    None => groups.push((route.channel, route.destination, vec![kind])),
                }
            }
        }
        for (channel, destination, kinds) in groups {
            self.add_channel(channel, &destination, &kinds);
        }
    }

    fn add_channel(&mut self, channel: Channel, destination: &Destination, kinds: &[EventKind]) {
        let label = destination.label();
        let Some(shape) = self.shape(destination) else {
            return;
        };
        let id = unique_key(&self.channels, &format!("{channel}-{}", sanitize(&label)));
        let mut messages = Map::new();
        // CloudEvents' binary mode on the channels whose binding has one: the attributes in
        // headers under the binding's prefix, the data as the body.
        let binary = match (self.format, channel) {
            (EventFormat::CloudEvents, Channel::Webhook | Channel::Nats) => Some("ce-"),
            (EventFormat::CloudEvents, Channel::Kafka) => Some("ce_"),
            (EventFormat::CloudEvents, Channel::Rabbitmq) => Some("cloudEvents:"),
            _ => None,
        };
        for kind in kinds {
            let name = shape
                .message_name
                .clone()
                .unwrap_or_else(|| self.profile.payload_event(*kind).to_owned());
            let (schema, content_type, id_location) = match (self.format, binary) {
                (EventFormat::Evolution, _) => {
                    self.schemas
                        .entry(kind.key().to_owned())
                        .or_insert_with(|| envelope_schema(self.profile, *kind, self.instance));
                    (
                        kind.key().to_owned(),
                        "application/json",
                        "$message.payload#/id".to_owned(),
                    )
                }
                (_, Some(prefix)) => {
                    self.schemas.entry("data".to_owned()).or_insert_with(
                        || json!({"description": "The event's data, as the producer gave it (any JSON)."}),
                    );
                    (
                        "data".to_owned(),
                        "application/json",
                        format!("$message.header#/{prefix}id"),
                    )
                }
                (_, None) => {
                    let key = format!("cloudevent-{}", kind.key());
                    self.schemas
                        .entry(key.clone())
                        .or_insert_with(|| cloudevent_schema(*kind, self.instance));
                    (key, CLOUDEVENTS_JSON, "$message.payload#/id".to_owned())
                }
            };
            let mut message = json!({
                "name": placeholder(&name),
                "title": kind.key(),
                "summary": format!("{} ({})", kind.key(), kind.wire()),
                "contentType": content_type,
                "payload": {"$ref": format!("#/components/schemas/{schema}")},
                "correlationId": {
                    "description": "The event id (UUIDv7): the idempotency key, the same on every redelivery.",
                    "location": id_location
                },
            });
            if let Some(headers) = shape.headers {
                let key = match binary {
                    Some(_) => format!("{headers}-cloudevents"),
                    None => headers.to_owned(),
                };
                message["headers"] = json!({"$ref": format!("#/components/schemas/{key}")});
                self.schemas
                    .entry(key)
                    .or_insert_with(|| header_schema(channel, binary));
            }
            if let Some(bindings) = &shape.message_bindings {
                message["bindings"] = bindings.clone();
            }
            messages.insert(kind.key().to_owned(), message);
        }
        let address = placeholder(&shape.address);
        let mut object = json!({
            "address": address,
            "title": placeholder(&label),
            "description": placeholder(&shape.description),
            "servers": [{"$ref": format!("#/servers/{}", shape.server)}],
            "messages": messages,
        });
        if address.contains("{instance}") {
            object["parameters"] = json!({"instance": {"description": "The instance's name."}});
        }
        if let Some(bindings) = shape.channel_bindings {
            object["bindings"] = bindings;
        }
        let refs: Vec<Value> = kinds
            .iter()
            .map(|k| json!({"$ref": format!("#/channels/{id}/messages/{}", k.key())}))
            .collect();
        let mut operation = json!({
            "action": "send",
            "channel": {"$ref": format!("#/channels/{id}")},
            "summary": format!("The server delivers these events to {}", placeholder(&label)),
            "messages": refs,
        });
        if let Some(bindings) = shape.operation_bindings {
            operation["bindings"] = bindings;
        }
        if let Some(scheme) = shape.operation_security {
            operation["security"] = json!([{"$ref": format!("#/components/securitySchemes/{scheme}")}]);
        }
        self.operations.insert(format!("send-{id}"), operation);
        self.channels.insert(id, object);
    }

    /// Where a destination is, in AsyncAPI's terms (registering its server and security scheme).
    fn shape(&mut self, destination: &Destination) -> Option<Shape> {
        let config = &self.app.config;
        Some(match destination {
            Destination::Webhook(t) => {
                let url = url::Url::parse(&t.url).ok()?;
                let host = format!(
                    "{}{}",
                    url.host_str().unwrap_or_default(),
                    url.port().map(|p| format!(":{p}")).unwrap_or_default()
                );
                let server = format!("webhook-{}", sanitize(&host));
                self.servers.entry(server.clone()).or_insert_with(|| {
                    json!({
                        "host": host,
                        "protocol": url.scheme(),
                        "description": "A webhook receiver: the server POSTs each event to it."
                    })
                });
                let signed = !t.signing_secrets.is_empty();
                if signed {
                    self.schemes.entry("webhookSignature".to_owned()).or_insert_with(|| {
                        json!({
                            "type": "httpApiKey",
                            "name": "webhook-signature",
                            "in": "header",
                            "description": "Standard Webhooks: `webhook-signature` = `v1,<base64 HMAC-SHA256 of \
                                `{webhook-id}.{webhook-timestamp}.{body}`>` with the signing secret; verify it \
                                before trusting the body."
                        })
                    });
                }
                Shape {
                    server,
                    address: url.path().to_owned(),
                    description: format!(
                        "HTTP POST to {} (JSON body; `webhook-id` = event id{}).",
                        destination.label(),
                        if signed {
                            ", Standard Webhooks signature"
                        } else {
                            ""
                        }
                    ),
                    headers: Some("headers-webhook"),
                    operation_bindings: Some(json!({"http": {"method": "POST", "bindingVersion": "0.3.0"}})),
                    operation_security: signed.then_some("webhookSignature"),
                    ..Shape::default()
                }
            }
            Destination::Websocket(t) => {
                let (host, secure) = match config.server_url.as_deref().and_then(|u| url::Url::parse(u).ok())
                {
                    Some(u) => (
                        format!(
                            "{}{}",
                            u.host_str().unwrap_or_default(),
                            u.port().map(|p| format!(":{p}")).unwrap_or_default()
                        ),
                        u.scheme() == "https",
                    ),
                    None => (format!("{}:{}", config.host, config.port), false),
                };
                self.schemes.entry("apikey".to_owned()).or_insert_with(|| {
                    json!({
                        "type": "httpApiKey",
                        "name": "apikey",
                        "in": "query",
                        "description": "The global API key (every instance) or an instance's token (that instance \
                            only); also accepted as the handshake's `auth: {apikey}` or an `apikey` header."
                    })
                });
                self.servers.entry("socketio".to_owned()).or_insert_with(|| {
                    json!({
                        "host": host,
                        "protocol": if secure { "wss" } else { "ws" },
                        "pathname": "/socket.io",
                        "description": "Socket.IO (v4) on the server's own listener; the channel address is the namespace, the message name the Socket.IO event.",
                        "security": [{"$ref": "#/components/securitySchemes/apikey"}]
                    })
                });
                let room = match &t.room {
                    Some(room) => format!(", to the sockets of room `{room}`"),
                    None => String::new(),
                };
                Shape {
                    server: "socketio".to_owned(),
                    address: t.namespace.clone(),
                    description: format!(
                        "Socket.IO namespace `{}`, event `{}`{room}; one argument, the envelope.",
                        t.namespace, t.event
                    ),
                    message_name: Some(t.event.clone()),
                    ..Shape::default()
                }
            }
            Destination::Rabbitmq(t) => {
                let uri = config.value("RABBITMQ_URI").unwrap_or_default();
                let (host, scheme, vhost, credentials) = broker_address(uri, "amqp", 5672);
                let vhost = if vhost.is_empty() { "/".to_owned() } else { vhost };
                self.server_with_credentials(
                    "rabbitmq",
                    &host,
                    &scheme,
                    "RabbitMQ (AMQP 0-9-1).",
                    credentials,
                );
                Shape {
                    server: "rabbitmq".to_owned(),
                    address: t.routing_key.clone(),
                    description: format!(
                        "Published to the durable topic exchange `{}` with routing key `{}`; the durable queue `{}` is bound to it with that key.",
                        t.exchange, t.routing_key, t.queue
                    ),
                    headers: Some("headers-rabbitmq"),
                    channel_bindings: Some(json!({"amqp": {
                        "is": "routingKey",
                        "exchange": {"name": t.exchange, "type": "topic", "durable": true, "autoDelete": false, "vhost": vhost},
                        "bindingVersion": "0.3.0"
                    }})),
                    operation_bindings: Some(json!({"amqp": {"deliveryMode": 2, "bindingVersion": "0.3.0"}})),
                    message_bindings: Some(
                        json!({"amqp": {"contentEncoding": "utf-8", "messageType": "evolution-event", "bindingVersion": "0.3.0"}}),
                    ),
                    ..Shape::default()
                }
            }
            Destination::Sqs(t) => {
                let region = config.value("SQS_REGION").unwrap_or("us-east-1");
                let host = match config.value("SQS_ENDPOINT").filter(|e| !e.trim().is_empty()) {
                    Some(endpoint) => broker_address(endpoint, "https", 443).0,
                    None => format!("sqs.{region}.amazonaws.com"),
                };
                self.servers.entry("sqs".to_owned()).or_insert_with(|| {
                    json!({
                        "host": host,
                        "protocol": "sqs",
                        "description": format!("Amazon SQS, region {region}; the queue URL is resolved from its name (GetQueueUrl)."),
                    })
                });
                let mut queue = json!({"name": t.queue, "fifoQueue": t.fifo});
                if t.fifo {
                    queue["deduplicationScope"] = json!("messageGroup");
                }
                Shape {
                    server: "sqs".to_owned(),
                    address: t.queue.clone(),
                    description: if t.fifo {
                        format!(
                            "SQS FIFO queue `{}`: message group `{}`, deduplication id = event id.",
                            t.queue,
                            t.group_id.as_deref().unwrap_or("the instance")
                        )
                    } else {
                        format!("SQS queue `{}`.", t.queue)
                    },
                    headers: Some("headers-sqs"),
                    ..Shape::default()
                }
            }
            Destination::Kafka(t) => {
                let brokers = config.value("KAFKA_BROKERS").unwrap_or_default();
                let first = brokers.split(',').next().unwrap_or_default().trim().to_owned();
                let ssl = config.value("KAFKA_SSL_ENABLED").is_some_and(truthy);
                let mut server = json!({
                    "host": first,
                    "protocol": if ssl { "kafka-secure" } else { "kafka" },
                    "description": format!("Kafka; bootstrap servers {brokers}."),
                });
                if config.value("KAFKA_SASL_ENABLED").is_some_and(truthy) {
                    let mechanism = config
                        .value("KAFKA_SASL_MECHANISM")
                        .unwrap_or("plain")
                        .to_ascii_lowercase();
                    let kind = match mechanism.as_str() {
                        "scram-sha-256" => "scramSha256",
                        "scram-sha-512" => "scramSha512",
                        _ => "plain",
                    };
                    self.schemes.entry("kafkaSasl".to_owned()).or_insert_with(|| {
                        json!({"type": kind, "description": "SASL with the user and password the operator gives you."})
                    });
                    server["security"] = json!([{"$ref": "#/components/securitySchemes/kafkaSasl"}]);
                }
                self.servers.entry("kafka".to_owned()).or_insert(server);
                Shape {
                    server: "kafka".to_owned(),
                    address: t.topic.clone(),
                    description: format!(
                        "Kafka topic `{}`, record key `{}` (the instance: one partition, in order); headers `event`, `instance`, `id`.",
                        t.topic, t.key
                    ),
                    headers: Some("headers-kafka"),
                    channel_bindings: Some(json!({"kafka": {"topic": t.topic, "bindingVersion": "0.5.0"}})),
                    message_bindings: Some(json!({"kafka": {
                        "key": {"type": "string", "const": placeholder(&t.key)},
                        "bindingVersion": "0.5.0"
                    }})),
                    ..Shape::default()
                }
            }
            Destination::Nats(t) => {
                let uri = config.value("NATS_URI").unwrap_or_default();
                let (host, _, _, credentials) = broker_address(uri, "nats", 4222);
                self.server_with_credentials(
                    "nats",
                    &host,
                    "nats",
                    "NATS (core; JetStream when NATS_JETSTREAM=true).",
                    credentials,
                );
                Shape {
                    server: "nats".to_owned(),
                    address: t.subject.clone(),
                    description: format!(
                        "NATS subject `{}`; headers `Nats-Msg-Id` (= event id), `event`, `instance`, `id`.",
                        t.subject
                    ),
                    headers: Some("headers-nats"),
                    ..Shape::default()
                }
            }
            Destination::Pusher(t) => {
                let app = &t.app;
                let (host, secure) = match (&app.host, app.port) {
                    (Some(host), port) => (
                        format!("{host}{}", port.map(|p| format!(":{p}")).unwrap_or_default()),
                        app.use_tls,
                    ),
                    (None, _) => (format!("ws-{}.pusher.com", app.cluster), true),
                };
                let server = format!("pusher-{}", sanitize(&app.app_id));
                self.servers.entry(server.clone()).or_insert_with(|| {
                    json!({
                        "host": host,
                        "protocol": if secure { "wss" } else { "ws" },
                        "pathname": format!("/app/{}", app.key),
                        "description": format!("Pusher Channels, app {} (key `{}`, cluster `{}`): subscribe with a Pusher client.", app.app_id, app.key, app.cluster),
                    })
                });
                Shape {
                    server,
                    address: t.channel.clone(),
                    description: format!("Pusher channel `{}`, event `{}`.", t.channel, t.event),
                    message_name: Some(t.event.clone()),
                    ..Shape::default()
                }
            }
            _ => return None,
        })
    }

    fn server_with_credentials(
        &mut self,
        key: &str,
        host: &str,
        protocol: &str,
        description: &str,
        credentials: bool,
    ) {
        let mut server = json!({"host": host, "protocol": protocol, "description": description});
        if credentials {
            self.schemes.entry("userPassword".to_owned()).or_insert_with(|| {
                json!({"type": "userPassword", "description": "The user and password the operator gives you."})
            });
            server["security"] = json!([{"$ref": "#/components/securitySchemes/userPassword"}]);
        }
        self.servers.entry(key.to_owned()).or_insert(server);
    }

    fn finish(self, title: String, description: String) -> Value {
        let schemas: Map<String, Value> = self.schemas.into_iter().collect();
        let mut components = json!({"schemas": schemas});
        if !self.schemes.is_empty() {
            components["securitySchemes"] = Value::Object(self.schemes);
        }
        json!({
            "asyncapi": "3.0.0",
            "info": {
                "title": title,
                "version": env!("CARGO_PKG_VERSION"),
                "description": description,
            },
            "defaultContentType": "application/json",
            "servers": self.servers,
            "channels": self.channels,
            "operations": self.operations,
            "components": components,
        })
    }
}

/// One destination in AsyncAPI's terms.
#[derive(Default)]
struct Shape {
    server: String,
    address: String,
    description: String,
    /// The message's name on the wire when it is not the payload's `event` (Socket.IO, Pusher).
    message_name: Option<String>,
    headers: Option<&'static str>,
    channel_bindings: Option<Value>,
    operation_bindings: Option<Value>,
    message_bindings: Option<Value>,
    operation_security: Option<&'static str>,
}

/// The envelope of `kind` (DESIGN §4), `event` fixed to its name in `profile`.
fn envelope_schema(profile: NamingProfile, kind: EventKind, instance: Option<&str>) -> Value {
    let mut instance_schema = json!({"type": "string", "description": "The instance the event belongs to.", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"});
    if let Some(instance) = instance {
        instance_schema["const"] = json!(instance);
    }
    json!({
        "type": "object",
        "title": format!("{} envelope", kind.key()),
        "required": ["id", "event", "instance", "data", "date_time", "sender", "server_url", "apikey", "sequence"],
        "properties": {
            "id": {"type": "string", "format": "uuid", "description": "UUIDv7; the idempotency key."},
            "event": {"type": "string", "const": profile.payload_event(kind)},
            "instance": instance_schema,
            "data": {"description": "The event's data, as the producer gave it (any JSON)."},
            "date_time": {"type": "string", "format": "date-time", "description": "When the event was accepted: UTC, RFC 3339, milliseconds."},
            "sender": {"type": ["string", "null"], "description": "The instance's own JID, when the producer gave it."},
            "server_url": {"type": ["string", "null"], "description": "SERVER_URL."},
            "apikey": {"type": ["string", "null"], "description": "The instance token when AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES=true; else null."},
            "sequence": {"type": "integer", "minimum": 1, "description": "Per-instance counter, without gaps."},
        },
    })
}

/// A CloudEvent of `kind` in CloudEvents' JSON format (structured mode).
fn cloudevent_schema(kind: EventKind, instance: Option<&str>) -> Value {
    let mut subject = json!({"type": "string", "description": "The instance the event belongs to."});
    if let Some(instance) = instance {
        subject["const"] = json!(instance);
    }
    json!({
        "type": "object",
        "title": format!("{} CloudEvent", kind.key()),
        "required": ["specversion", "id", "source", "type", "time", "subject", "datacontenttype", "sequence", "data"],
        "properties": cloudevent_properties(kind, subject),
    })
}

fn cloudevent_properties(kind: EventKind, subject: Value) -> Value {
    json!({
        "specversion": {"type": "string", "const": "1.0"},
        "id": {"type": "string", "format": "uuid", "description": "The event id (UUIDv7)."},
        "source": {"type": "string", "format": "uri-reference", "description": "SERVER_URL, else /evolution-events."},
        "type": {"type": "string", "const": NamingProfile::cloudevents_type(kind)},
        "time": {"type": "string", "format": "date-time"},
        "subject": subject,
        "datacontenttype": {"type": "string", "const": "application/json"},
        "sequence": {"type": "string", "pattern": "^[0-9]{20}$", "description": "The per-instance sequence, zero-padded (CloudEvents' sequence extension)."},
        "sender": {"type": "string", "description": "The instance's own JID, when the producer gave it."},
        "apikey": {"type": "string", "description": "The instance token, only when AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES=true."},
        "traceparent": {"type": "string", "description": "W3C Trace Context (distributed-tracing extension)."},
        "tracestate": {"type": "string"},
        "data": {"description": "The event's data, as the producer gave it (any JSON)."},
    })
}

/// The headers (or message attributes) a channel puts on every message; with `binary`, also the
/// CloudEvent's attributes under that prefix.
fn header_schema(channel: Channel, binary: Option<&str>) -> Value {
    let trace = json!({
        "traceparent": {"type": "string", "description": "W3C Trace Context of the event's ingest span."},
        "tracestate": {"type": "string", "description": "W3C tracestate, when the producer sent one."},
    });
    let mut properties = match channel {
        Channel::Webhook => json!({
            "content-type": {"type": "string", "const": "application/json"},
            "webhook-id": {"type": "string", "format": "uuid", "description": "The event id (idempotency key)."},
            "webhook-timestamp": {"type": "string", "description": "Unix seconds of the signature (signed webhooks)."},
            "webhook-signature": {"type": "string", "description": "Standard Webhooks signature (signed webhooks)."},
        }),
        Channel::Nats => json!({
            "Nats-Msg-Id": {"type": "string", "format": "uuid", "description": "The event id (JetStream de-duplication)."},
            "event": {"type": "string"},
            "instance": {"type": "string"},
            "id": {"type": "string", "format": "uuid"},
            "Content-Type": {"type": "string", "const": "application/json"},
        }),
        _ => json!({
            "event": {"type": "string", "description": "The payload's `event`."},
            "instance": {"type": "string"},
            "id": {"type": "string", "format": "uuid", "description": "The event id (idempotency key)."},
        }),
    };
    if let (Some(p), Some(t)) = (properties.as_object_mut(), trace.as_object()) {
        p.extend(t.clone());
    }
    if let (Some(prefix), Some(p)) = (binary, properties.as_object_mut()) {
        let attributes = [
            ("specversion", json!({"type": "string", "const": "1.0"})),
            ("id", json!({"type": "string", "format": "uuid"})),
            ("source", json!({"type": "string"})),
            (
                "type",
                json!({"type": "string", "description": "evolution.<event wire name>"}),
            ),
            ("time", json!({"type": "string", "format": "date-time"})),
            (
                "subject",
                json!({"type": "string", "description": "The instance."}),
            ),
            ("sequence", json!({"type": "string", "pattern": "^[0-9]{20}$"})),
            ("sender", json!({"type": "string"})),
            ("apikey", json!({"type": "string"})),
            ("traceparent", json!({"type": "string"})),
            ("tracestate", json!({"type": "string"})),
        ];
        for (name, schema) in attributes {
            p.insert(format!("{prefix}{name}"), schema);
        }
        // `datacontenttype` is the content type: a header, or AMQP's `content_type` property.
        let content_type = match channel {
            Channel::Rabbitmq => None,
            Channel::Nats => Some("Content-Type"),
            _ => Some("content-type"),
        };
        if let Some(name) = content_type {
            p.insert(
                name.to_owned(),
                json!({"type": "string", "const": "application/json", "description": "datacontenttype"}),
            );
        }
    }
    let what = match channel {
        Channel::Webhook => "HTTP headers",
        Channel::Rabbitmq => "AMQP headers (message_id = event id, delivery mode 2)",
        Channel::Sqs => "SQS message attributes (String)",
        Channel::Kafka => "Kafka record headers",
        _ => "headers",
    };
    json!({"type": "object", "description": what, "properties": properties})
}

/// `host:port`, scheme, path (a vhost) and whether the URI carries credentials — never the
/// credentials themselves.
fn broker_address(uri: &str, default_scheme: &str, default_port: u16) -> (String, String, String, bool) {
    let first = uri.split(',').next().unwrap_or_default().trim();
    match url::Url::parse(first) {
        Ok(u) if u.has_host() => {
            let host = format!(
                "{}:{}",
                u.host_str().unwrap_or_default(),
                u.port().unwrap_or(default_port)
            );
            let path = percent_decode(u.path().trim_start_matches('/'));
            let credentials = !u.username().is_empty() || u.password().is_some();
            (host, u.scheme().to_owned(), path, credentials)
        }
        _ => (first.to_owned(), default_scheme.to_owned(), String::new(), false),
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("v={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn truthy(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes")
}

/// The placeholder instance of the global document as `{instance}`.
fn placeholder(text: &str) -> String {
    text.replace(PLACEHOLDER, "{instance}")
}

/// A map key AsyncAPI accepts (`[A-Za-z0-9_-]`), the global placeholder as `instance`.
fn sanitize(text: &str) -> String {
    let text = text.replace(PLACEHOLDER, "instance");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

/// `key`, or `key-2`, `key-3`… if taken.
fn unique_key(map: &Map<String, Value>, key: &str) -> String {
    if !map.contains_key(key) {
        return key.to_owned();
    }
    (2..)
        .map(|n| format!("{key}-{n}"))
        .find(|k| !map.contains_key(k))
        .unwrap_or_else(|| key.to_owned())
}
