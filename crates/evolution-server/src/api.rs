//! The REST API (DESIGN §6).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router as Http};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use evolution_events::{
    Channel, EVENT_FORMAT_FIELD, EventKind, InstanceName, InstanceSettings, RawValue, Uuid,
    parse_event_format,
};
use evolution_outbox::{DeliveryQuery, InstanceRecord, RedriveFilter, StatusFilter};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::{App, random_token};
use crate::error::ApiError;
use crate::instances::Instance;
use crate::metrics;

pub(crate) type ApiResult<T = Response> = Result<T, ApiError>;

/// Who is calling.
pub(crate) enum Access {
    /// The global `AUTHENTICATION_API_KEY`: everything.
    Global,
    /// An instance token: that instance only.
    Instance(Arc<Instance>),
}

/// The routes.
pub(crate) fn routes(app: Arc<App>) -> Http {
    let body_limit = app.config.max_body_bytes;
    let routes = Http::new()
        .route("/instance/create", post(create_instance))
        .route("/instance/fetchInstances", get(fetch_instances))
        .route("/instance/delete/{instance}", delete(delete_instance))
        .route("/format/set/{instance}", post(set_format))
        .route("/format/find/{instance}", get(find_format))
        .route("/{channel}/set/{instance}", post(set_channel))
        .route("/{channel}/find/{instance}", get(find_channel))
        .route("/events/{instance}", post(post_events).get(events_after))
        .route("/events/{instance}/{id}", get(get_event))
        .route("/events/{instance}/{id}/payload", get(get_referenced))
        .route("/deliveries/{target}", get(list_deliveries))
        .route("/deliveries/{target}/retry", post(retry_delivery))
        .route("/deliveries/{target}/redrive", post(redrive))
        .route("/deliveries/{target}/dead", delete(purge_dead))
        .route("/deliveries/{target}/destinations", get(destination_health))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::render))
        .route("/asyncapi", get(asyncapi_global))
        .route("/asyncapi/{instance}", get(asyncapi_instance))
        .route(
            "/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
        // The operators' web console (`/console`) and its two JSON routes.
        .merge(crate::console::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(Arc::clone(&app));
    // Socket.IO (`WEBSOCKET_ENABLED=true`) on the same listener, under /socket.io.
    #[cfg(feature = "websocket")]
    let routes = match app.take_websocket_layer() {
        Some(socketio) => routes.layer(socketio),
        None => routes,
    };
    routes
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see GET /openapi.json")
}

pub(crate) fn authorize(app: &App, headers: &HeaderMap) -> ApiResult<Access> {
    let Some(key) = headers.get("apikey").and_then(|v| v.to_str().ok()) else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing `apikey` header"));
    };
    if crate::instances::constant_time_eq(key.as_bytes(), app.api_key.expose().as_bytes()) {
        return Ok(Access::Global);
    }
    app.instance_by_token(key)
        .map(Access::Instance)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "invalid `apikey`"))
}

/// Authorizes access to `instance` and returns it: 403 for another instance's token, 404 if it
/// does not exist (only the global key learns that).
pub(crate) fn instance_access(app: &App, headers: &HeaderMap, instance: &str) -> ApiResult<Arc<Instance>> {
    match authorize(app, headers)? {
        Access::Instance(own) if own.name.as_str() == instance => Ok(own),
        Access::Instance(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this apikey belongs to another instance and cannot access `{instance}`"),
        )),
        Access::Global => app
            .instance(instance)
            .ok_or_else(|| ApiError::not_found(format!("The \"{instance}\" instance does not exist"))),
    }
}

pub(crate) fn json_body(body: Result<Json<Value>, JsonRejection>) -> ApiResult<Value> {
    body.map(|Json(v)| v).map_err(|e| match e {
        JsonRejection::JsonDataError(e) => {
            ApiError::bad_request(format!("invalid JSON body: {}", e.body_text()))
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(e) => body_error(&e),
        other => ApiError::bad_request(other.body_text()),
    })
}

fn body_error(e: &BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is larger than EVENTS_MAX_BODY_BYTES",
        )
    } else {
        ApiError::bad_request(e.body_text())
    }
}

/// Parses one channel's settings into `settings`, collecting errors under `channel.…`.
fn parse_channel(
    app: &App,
    channel: Channel,
    value: &Value,
    settings: &mut InstanceSettings,
    errors: &mut Vec<String>,
) {
    if !evolution_sinks::build::AVAILABLE.contains(&channel) {
        errors.push(format!(
            "{channel}: this server was built without the {channel} channel (cargo feature `{channel}` of \
             evolution-server)"
        ));
        return;
    }
    if !app.config.global.enabled(channel) {
        let switch = channel.switch_var().unwrap_or_default();
        errors.push(format!(
            "{channel}: the {channel} channel is disabled on this server ({switch}=false)"
        ));
        return;
    }
    if let Err(e) = settings.set(channel, value) {
        errors.extend(e.0.iter().map(ToString::to_string));
    }
}

/// Prepares what the settings deliver to through the sinks (`Dispatcher::prepare`: SQS queues and
/// Kafka topics are created, webhook URLs checked against the SSRF protection): a destination the
/// sink refuses is a 400; a backend that is down is only logged (the sinks provision on first use).
async fn provision(
    app: &App,
    instance: &InstanceName,
    settings: &InstanceSettings,
    errors: &mut Vec<String>,
) {
    for (channel, e) in app.dispatcher.prepare(instance, settings).await {
        if e.kind() == evolution_events::ErrorKind::Rejected {
            errors.push(format!("{channel}: {e}"));
        } else {
            tracing::warn!(%instance, %channel, error = %e, "cannot provision the destinations now; done on first use");
        }
    }
}

fn instance_json(app: &App, r: &InstanceRecord) -> Value {
    let mut v = json!({
        "instanceName": r.name,
        "instanceId": r.id,
        "status": "created",
        "createdAt": r.created_at,
        "settings": r.settings.redacted(),
    });
    if app.config.expose_in_fetch {
        v["token"] = Value::String(r.token.expose().to_owned());
    }
    v
}

async fn create_instance(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    if !matches!(authorize(&app, &headers)?, Access::Global) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only the global apikey can create instances",
        ));
    }
    let body = json_body(body)?;
    let Value::Object(fields) = body else {
        return Err(ApiError::bad_request("(body): expected a JSON object"));
    };
    let mut errors = Vec::new();
    let mut name = None;
    let mut token = None;
    let mut settings = InstanceSettings::default();
    for (key, value) in &fields {
        match key.as_str() {
            "instanceName" => match value.as_str().map(InstanceName::new) {
                Some(Ok(n)) => name = Some(n),
                Some(Err(e)) => errors.push(format!("instanceName: {e}")),
                None => errors.push("instanceName: expected a string".to_owned()),
            },
            "token" => match value {
                // Evolution API generates one for an empty or missing token, as here.
                Value::Null => {}
                Value::String(t) if t.trim().is_empty() => {}
                Value::String(t) if t.trim().len() >= 8 => token = Some(t.trim().to_owned()),
                _ => errors.push("token: expected a string of at least 8 characters".to_owned()),
            },
            EVENT_FORMAT_FIELD => {
                let mut problems = Vec::new();
                settings.event_format = parse_event_format(value, &mut problems);
                errors.extend(problems.iter().map(ToString::to_string));
            }
            other if let Some(checked) = crate::evolution::check_ignored_create_field(other, value) => {
                if let Err(e) = checked {
                    errors.push(e);
                }
            }
            other => match Channel::parse_built_in(other) {
                Ok(channel) => {
                    // As in Evolution API, a channel given at creation is enabled unless it says otherwise.
                    let mut value = value.clone();
                    if let Value::Object(obj) = &mut value {
                        obj.entry("enabled").or_insert(Value::Bool(true));
                    }
                    parse_channel(&app, channel, &value, &mut settings, &mut errors);
                }
                Err(_) => errors.push(format!(
                    "{other}: unknown field; expected instanceName, token, eventFormat, webhook, websocket, rabbitmq, \
                     sqs, kafka, nats, pusher or one of Evolution API's fields accepted and ignored here ({})",
                    crate::evolution::ignored_create_fields().collect::<Vec<_>>().join(", ")
                )),
            },
        }
    }
    if name.is_none() && !fields.contains_key("instanceName") {
        errors.push("instanceName: is required".to_owned());
    }
    let mut checked = None;
    if let Some(name) = &name {
        match app.dispatcher.router().check(name, settings.clone()) {
            Ok(c) => checked = Some(c),
            Err(e) => errors.extend(e.0.iter().map(ToString::to_string)),
        }
        if app.instance(name.as_str()).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("instanceName: an instance named `{name}` already exists"),
            ));
        }
        if errors.is_empty() {
            provision(&app, name, &settings, &mut errors).await;
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::many(StatusCode::BAD_REQUEST, errors));
    }
    let (Some(name), Some(checked)) = (name, checked) else {
        return Err(ApiError::bad_request("instanceName: is required"));
    };
    let record = InstanceRecord {
        id: Uuid::new_v4(),
        name: name.clone(),
        token: token.unwrap_or_else(random_token).into(),
        settings,
        created_at: Utc::now(),
    };
    if app.instance_by_token(record.token.expose()).is_some()
        || crate::instances::constant_time_eq(
            record.token.expose().as_bytes(),
            app.api_key.expose().as_bytes(),
        )
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "token: this token is already in use; choose another",
        ));
    }
    app.store.create_instance(&record).await?;
    app.cache_checked(Instance::checked(record.clone(), checked));
    let data = json!({"instanceName": name, "instanceId": record.id});
    let event = app.envelope(EventKind::InstanceCreate, name.clone(), &data, None);
    if let Err(e) = app.emit(vec![event]).await {
        // Nothing half-stored: without its INSTANCE_CREATE event the instance is not created.
        app.uncache(&name);
        if let Err(undo) = app.store.delete_instance(&name).await {
            tracing::error!(instance = %name, error = %undo, "could not roll back an instance");
        }
        return Err(e.into());
    }
    tracing::info!(instance = %name, "instance created");
    let body = json!({
        "instance": {"instanceName": name, "instanceId": record.id, "status": "created"},
        "hash": record.token.expose(),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn fetch_instances(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult {
    let list: Vec<Value> = match authorize(&app, &headers)? {
        Access::Global => app
            .all_instances()
            .iter()
            .map(|r| instance_json(&app, r))
            .collect(),
        Access::Instance(own) => vec![instance_json(&app, &own)],
    };
    Ok(Json(list).into_response())
}

async fn delete_instance(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(instance): Path<String>,
) -> ApiResult {
    let record = instance_access(&app, &headers, &instance)?;
    let data = json!({"instanceName": record.name, "instanceId": record.id});
    let deleted = app.envelope(EventKind::InstanceDelete, record.name.clone(), &data, None);
    let removed = app.envelope(EventKind::RemoveInstance, record.name.clone(), &Value::Null, None);
    app.emit(vec![deleted, removed]).await?;
    app.store.delete_instance(&record.name).await?;
    app.uncache(&record.name);
    #[cfg(feature = "websocket")]
    if let Some(websocket) = &app.websocket {
        // Its token no longer opens anything, including the connections it already opened.
        websocket.disconnect_instance(&record.name).await;
    }
    tracing::info!(instance = %record.name, "instance deleted");
    Ok(
        Json(json!({"status": "SUCCESS", "error": false, "response": {"message": "Instance deleted"}}))
            .into_response(),
    )
}

fn route_channel(channel: &str) -> ApiResult<Channel> {
    Channel::parse_built_in(channel).map_err(|e| ApiError::not_found(e.to_string()))
}

async fn set_channel(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((channel, instance)): Path<(String, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let channel = route_channel(&channel)?;
    let record = instance_access(&app, &headers, &instance)?;
    let updated = save_channel(&app, &record, channel, json_body(body)?).await?;
    let answer = settings_answer(&app, &updated, channel);
    // Evolution API answers the stored row itself; the seed profile wraps it in its channel's key.
    let answer = match app.config.global.naming {
        evolution_events::NamingProfile::Seed => json!({ channel.as_str(): answer }),
        evolution_events::NamingProfile::EvolutionV2 => answer,
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// Validates, provisions, stores and caches `{"<channel>": {…}}` as `record`'s settings of
/// `channel`, and returns the updated record. A value sent back exactly as `find` showed it
/// redacted keeps the stored secret ([`keep_hidden`]), so what `find` answered can be sent back.
pub(crate) async fn save_channel(
    app: &App,
    record: &Instance,
    channel: Channel,
    mut body: Value,
) -> ApiResult<InstanceRecord> {
    let key = channel.as_str();
    let mut errors: Vec<String> = body
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .filter(|k| k.as_str() != key)
        .map(|k| format!("{k}: unknown field; this route takes only `{key}`"))
        .collect();
    let Some(value) = body.as_object_mut().and_then(|o| o.get_mut(key)) else {
        return Err(ApiError::bad_request(format!(
            "{key}: is required: send {{\"{key}\": {{…}}}}"
        )));
    };
    keep_hidden(
        value,
        &record.settings.redacted().get(channel),
        &record.settings.get(channel),
    );
    let mut settings = record.settings.clone();
    parse_channel(app, channel, value, &mut settings, &mut errors);
    let mut checked = None;
    if errors.is_empty() {
        match app.dispatcher.router().check(&record.name, settings.clone()) {
            Ok(c) => checked = Some(c),
            Err(e) => errors.extend(e.0.iter().map(ToString::to_string)),
        }
    }
    if errors.is_empty() {
        provision(app, &record.name, &settings, &mut errors).await;
    }
    let Some(checked) = checked.filter(|_| errors.is_empty()) else {
        return Err(ApiError::many(StatusCode::BAD_REQUEST, errors));
    };
    if !app.store.update_settings(&record.name, &settings).await? {
        return Err(ApiError::not_found(format!(
            "The \"{}\" instance does not exist",
            record.name
        )));
    }
    let updated = InstanceRecord {
        settings,
        ..record.record().clone()
    };
    app.cache_checked(Instance::checked(updated.clone(), checked));
    if updated.settings.get(channel)["enabled"] == true {
        // Enabled again: the destinations disabled for failing that it still names are back, with
        // what they held.
        let destinations: Vec<evolution_events::Destination> = app
            .dispatcher
            .router()
            .instance_destinations(&record.name, &updated.settings)
            .into_iter()
            .filter(|r| r.channel == channel)
            .map(|r| r.destination)
            .collect();
        let held = app
            .dispatcher
            .enable_destinations(channel, &record.name, &destinations);
        if !held.is_empty() {
            let filter = RedriveFilter {
                ids: held,
                instance: Some(record.name.clone()),
                ..RedriveFilter::default()
            };
            let n = app.outbox.redrive(&filter).await?;
            tracing::info!(instance = %record.name, %channel, redriven = n, "a disabled destination is enabled again");
        }
    }
    Ok(updated)
}

/// Replaces, in `sent`, every value equal to what `shown` (the redacted settings) holds at the
/// same place, where that differs from `stored` (so it was hidden), with the stored value.
fn keep_hidden(sent: &mut Value, shown: &Value, stored: &Value) {
    match (sent, shown, stored) {
        (Value::Object(sent), Value::Object(shown), Value::Object(stored)) => {
            for (key, value) in sent.iter_mut() {
                if let (Some(shown), Some(stored)) = (shown.get(key), stored.get(key)) {
                    keep_hidden(value, shown, stored);
                }
            }
        }
        (Value::Array(sent), Value::Array(shown), Value::Array(stored)) => {
            for (value, (shown, stored)) in sent.iter_mut().zip(shown.iter().zip(stored)) {
                keep_hidden(value, shown, stored);
            }
        }
        // A single secret shown redacted may come back as the array of one (or the reverse) only
        // if the client changed its shape: then it is a new value, left as sent.
        (sent, shown, stored) => {
            if *sent == *shown && shown != stored {
                *sent = stored.clone();
            }
        }
    }
}

/// `channel`'s settings as `set` and `find` show them (secrets redacted): as given, or Evolution
/// API's stored row with `EVENT_NAMING=evolution-v2` (`crate::evolution::settings_row`).
fn settings_answer(app: &App, record: &InstanceRecord, channel: Channel) -> Value {
    match app.config.global.naming {
        evolution_events::NamingProfile::Seed => record.settings.redacted().get(channel),
        evolution_events::NamingProfile::EvolutionV2 => {
            crate::evolution::settings_row(record, &record.settings, channel)
        }
    }
}

async fn find_channel(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((channel, instance)): Path<(String, String)>,
) -> ApiResult {
    let channel = route_channel(&channel)?;
    let record = instance_access(&app, &headers, &instance)?;
    Ok(Json(settings_answer(&app, &record, channel)).into_response())
}

/// `POST /format/set/{instance}` `{"eventFormat": "cloudevents" | "cloudevents-structured" |
/// "evolution" | null}`: the format of the instance's events on every channel (`null`: the
/// server's `EVENT_FORMAT`). Events accepted afterwards are written in it.
async fn set_format(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(instance): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let record = instance_access(&app, &headers, &instance)?;
    let body = json_body(body)?;
    let Some(fields) = body.as_object() else {
        return Err(ApiError::bad_request("(body): expected {\"eventFormat\": …}"));
    };
    let mut errors: Vec<String> = fields
        .keys()
        .filter(|k| k.as_str() != EVENT_FORMAT_FIELD)
        .map(|k| format!("{k}: unknown field; this route takes only `{EVENT_FORMAT_FIELD}`"))
        .collect();
    let Some(value) = fields.get(EVENT_FORMAT_FIELD) else {
        return Err(ApiError::bad_request(format!(
            "{EVENT_FORMAT_FIELD}: is required: send {{\"{EVENT_FORMAT_FIELD}\": \"cloudevents\"}} (or null for the server's)"
        )));
    };
    let mut problems = Vec::new();
    let mut settings = record.settings.clone();
    settings.event_format = parse_event_format(value, &mut problems);
    errors.extend(problems.iter().map(ToString::to_string));
    if !errors.is_empty() {
        return Err(ApiError::many(StatusCode::BAD_REQUEST, errors));
    }
    let checked = app
        .dispatcher
        .router()
        .check(&record.name, settings.clone())
        .map_err(|e| {
            ApiError::many(
                StatusCode::BAD_REQUEST,
                e.0.iter().map(ToString::to_string).collect(),
            )
        })?;
    if !app.store.update_settings(&record.name, &settings).await? {
        return Err(ApiError::not_found(format!(
            "The \"{instance}\" instance does not exist"
        )));
    }
    let updated = InstanceRecord {
        settings: settings.clone(),
        ..record.record().clone()
    };
    app.cache_checked(Instance::checked(updated, checked));
    Ok((StatusCode::CREATED, Json(format_answer(&app, &settings))).into_response())
}

/// `GET /format/find/{instance}`: the instance's `eventFormat` (`null`: the server's) and the
/// format its events are written in.
async fn find_format(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(instance): Path<String>,
) -> ApiResult {
    let record = instance_access(&app, &headers, &instance)?;
    Ok(Json(format_answer(&app, &record.settings)).into_response())
}

fn format_answer(app: &App, settings: &InstanceSettings) -> Value {
    json!({
        EVENT_FORMAT_FIELD: settings.event_format,
        "effective": settings.event_format.unwrap_or(app.config.event_format),
    })
}

/// `GET /asyncapi/{instance}`: the AsyncAPI 3.0 document of the instance's own channels.
async fn asyncapi_instance(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(instance): Path<String>,
) -> ApiResult {
    let record = instance_access(&app, &headers, &instance)?;
    Ok(Json(crate::asyncapi::instance_document(
        &app,
        &record.name,
        &record.settings,
    ))
    .into_response())
}

/// `GET /asyncapi`: the AsyncAPI 3.0 document of the global channels (global key only).
async fn asyncapi_global(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult {
    match authorize(&app, &headers)? {
        Access::Global => Ok(Json(crate::asyncapi::global_document(&app)).into_response()),
        Access::Instance(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the global channels' document needs the global API key; an instance token reads GET /asyncapi/{instance}",
        )),
    }
}

/// One event of `POST /events/{instance}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventInput {
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    sender: Option<String>,
}

async fn post_events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(instance): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let record = instance_access(&app, &headers, &instance)?;
    let body = body.map_err(|e| body_error(&e))?;
    let is_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let inputs: Vec<EventInput> = if is_array {
        serde_json::from_slice(&body)
    } else {
        serde_json::from_slice(&body).map(|one| vec![one])
    }
    .map_err(|e| {
        ApiError::bad_request(format!(
            "invalid event body: {e}; send {{\"event\": \"MESSAGES_UPSERT\", \"data\": {{…}}, \"sender\": \"…\"}} or an array of them"
        ))
    })?;
    if inputs.is_empty() {
        return Err(ApiError::bad_request(
            "(body): the array is empty; send at least one event",
        ));
    }
    if inputs.len() > app.config.max_events_per_request {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "(body): {} events in one request; at most {} (EVENTS_MAX_PER_REQUEST)",
                inputs.len(),
                app.config.max_events_per_request
            ),
        ));
    }
    let mut errors = Vec::new();
    let mut events = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.into_iter().enumerate() {
        let field = if is_array {
            format!("[{i}].event")
        } else {
            "event".to_owned()
        };
        match EventKind::parse(&input.event) {
            Ok(kind) => {
                let data = input.data.unwrap_or_else(|| RawValue::NULL.to_owned());
                events.push(app.envelope_raw(kind, record.name.clone(), Some(&record), data, input.sender));
            }
            Err(e) => errors.push(format!("{field}: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::many(StatusCode::BAD_REQUEST, errors));
    }
    let parent = crate::telemetry::parent_from_headers(&headers);
    let stored = app.emit_for(&record, events, parent.as_ref()).await?;
    let ids: Vec<Uuid> = stored.iter().map(|e| e.id()).collect();
    Ok((StatusCode::ACCEPTED, Json(json!({ "ids": ids }))).into_response())
}

/// `GET /events/{instance}/{id}`: one accepted event, as its deliveries carry it, while the outbox
/// keeps it (how a Pusher client resolves a `truncated` reference).
async fn get_event(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((instance, id)): Path<(String, String)>,
) -> ApiResult {
    let record = instance_access(&app, &headers, &instance)?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request(format!("id: `{id}` is not an event id (a UUID)")))?;
    match app.outbox.event(&record.name, id).await? {
        Some(event) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            event.payload(),
        )
            .into_response()),
        None => Err(ApiError::not_found(format!(
            "id: no event {id} of instance {}: never accepted, or pruned (an event is kept until 24 hours \
             after its last delivery)",
            record.name
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedQuery {
    expires: u64,
    signature: String,
}

/// `GET /events/{instance}/{id}/payload?expires=&signature=`: the whole event behind a reference
/// (an event larger than its channel's limit, `<CHANNEL>_OVERSIZE=reference`), without an apikey:
/// the URL's signature is the authorization. A changed or expired URL is a 403.
async fn get_referenced(
    State(app): State<Arc<App>>,
    Path((instance, id)): Path<(String, String)>,
    query: Result<Query<SignedQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{}: a reference URL carries expires and signature", e.body_text()),
        )
    })?;
    app.signer
        .check(&instance, &id, q.expires, &q.signature)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))?;
    let (Ok(name), Ok(uuid)) = (InstanceName::new(&instance), Uuid::parse_str(&id)) else {
        return Err(ApiError::not_found("no such event"));
    };
    match app.outbox.event(&name, uuid).await? {
        Some(event) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            event.payload(),
        )
            .into_response()),
        None => Err(ApiError::not_found(format!(
            "no event {id} of instance {instance} is kept any more (pruned after OUTBOX_RETENTION)"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AfterQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// The answer of `GET /events/{instance}?after=`: each event's payload as its deliveries carry it.
#[derive(serde::Serialize)]
struct EventsAfter<'a> {
    instance: &'a str,
    after: u64,
    /// The sequence of the last event returned (`after` when none): the next request's `after`.
    next: u64,
    /// `limit` events were returned: ask again from `next`.
    more: bool,
    events: Vec<&'a RawValue>,
}

/// `GET /events/{instance}?after=<sequence>&limit=<n>`: the kept events of the instance whose
/// sequence is greater than `after`, in sequence order, with the bodies the channels send — how a
/// consumer that saw a gap in `sequence` fills it. Same access as Socket.IO replay: the global key,
/// or the instance's own token.
async fn events_after(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(instance): Path<String>,
    query: Result<Query<AfterQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let record = instance_access(&app, &headers, &instance)?;
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; after is a sequence (0 or more), limit is 1 to 1000",
            e.body_text()
        ))
    })?;
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit: must be from 1 to 1000"));
    }
    let events = app.outbox.events_after(&record.name, after, limit).await?;
    let payloads: Vec<Bytes> = events
        .iter()
        .map(evolution_outbox::StoredEvent::payload)
        .collect();
    let mut bodies = Vec::with_capacity(payloads.len());
    for payload in &payloads {
        let raw: &RawValue = serde_json::from_slice(payload).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("a stored event of {} cannot be read back: {e}", record.name),
            )
        })?;
        bodies.push(raw);
    }
    let body = EventsAfter {
        instance: record.name.as_str(),
        after,
        next: events.last().map_or(after, |e| e.envelope.sequence()),
        more: events.len() == limit,
        events: bodies,
    };
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    status: Option<StatusFilter>,
    channel: Option<String>,
    limit: Option<usize>,
}

async fn list_deliveries(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(instance): Path<String>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let record = instance_access(&app, &headers, &instance)?;
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; status is one of pending, failed, dead, delivered; limit is 1 to 1000",
            e.body_text()
        ))
    })?;
    let channel = q
        .channel
        .as_deref()
        .map(Channel::parse_built_in)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("channel: {e}")))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit: must be from 1 to 1000"));
    }
    let log = app
        .outbox
        .deliveries(&DeliveryQuery {
            instance: Some(record.name.clone()),
            channel,
            status: q.status,
            limit,
        })
        .await?;
    Ok(Json(log).into_response())
}

async fn retry_delivery(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(target): Path<String>,
) -> ApiResult {
    let id: u64 = target
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{target}` is not a delivery id (a number)")))?;
    let instance = match authorize(&app, &headers)? {
        Access::Global => None,
        Access::Instance(own) => Some(own.name.clone()),
    };
    let filter = RedriveFilter {
        ids: vec![id],
        instance,
        ..RedriveFilter::default()
    };
    match app.outbox.redrive(&filter).await? {
        0 => Err(ApiError::not_found(format!(
            "no dead delivery {id} that this apikey may retry"
        ))),
        n => Ok(Json(json!({ "redriven": n })).into_response()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    channel: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

/// The dead letters of `instance` that the request's `channel`, `since` and `until` (query string
/// or JSON body) select.
fn dead_filter(
    app: &App,
    headers: &HeaderMap,
    instance: &str,
    query: Result<Query<RedriveBody>, axum::extract::rejection::QueryRejection>,
    body: &Bytes,
) -> Result<RedriveFilter, ApiError> {
    let record = instance_access(app, headers, instance)?;
    let Query(from_query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let params = if body.iter().all(u8::is_ascii_whitespace) {
        from_query
    } else {
        serde_json::from_slice::<RedriveBody>(body)
            .map_err(|e| ApiError::bad_request(format!("invalid body: {e}; fields: channel, since, until")))?
    };
    let channel = params
        .channel
        .as_deref()
        .map(Channel::parse_built_in)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("channel: {e}")))?;
    Ok(RedriveFilter {
        ids: Vec::new(),
        channel,
        instance: Some(record.name.clone()),
        since: params.since,
        until: params.until,
    })
}

async fn redrive(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(instance): Path<String>,
    query: Result<Query<RedriveBody>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> ApiResult {
    let filter = dead_filter(&app, &headers, &instance, query, &body)?;
    let n = app.outbox.redrive(&filter).await?;
    Ok(Json(json!({ "redriven": n })).into_response())
}

/// Deletes dead letters for good (they are kept until redriven or purged).
async fn purge_dead(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(instance): Path<String>,
    query: Result<Query<RedriveBody>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> ApiResult {
    let filter = dead_filter(&app, &headers, &instance, query, &body)?;
    let n = app.outbox.purge(&filter).await?;
    Ok(Json(json!({ "purged": n })).into_response())
}

/// `GET /deliveries/{instance}/destinations`: per destination of the instance that this server
/// attempted, its last success, consecutive failures and state (`healthy`, `failing`, `disabled`).
async fn destination_health(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(instance): Path<String>,
) -> ApiResult {
    let record = instance_access(&app, &headers, &instance)?;
    let list: Vec<Value> = app
        .dispatcher
        .destination_health(&record.name)
        .into_iter()
        .map(|h| {
            json!({
                "channel": h.channel,
                "scope": h.scope,
                "destination": h.destination,
                "state": h.state.as_str(),
                "lastSuccess": h.last_success,
                "lastFailure": h.last_failure,
                "failingSince": h.failing_since,
                "consecutiveFailures": h.consecutive_failures,
                "lastError": h.last_error,
                "disabledAt": h.disabled_at,
            })
        })
        .collect();
    Ok(Json(list).into_response())
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// How long `GET /ready` answers the same checks: an unauthenticated caller polling it cannot make
/// the server probe every broker more often than this.
pub(crate) const READY_TTL: Duration = Duration::from_secs(1);

async fn ready(State(app): State<Arc<App>>) -> Response {
    let (ok, checks) = {
        let mut cached = app.ready.lock().await;
        match &*cached {
            Some((at, ok, checks)) if at.elapsed() < READY_TTL => (*ok, checks.clone()),
            _ => {
                let (ok, checks) = readiness(&app).await;
                *cached = Some((tokio::time::Instant::now(), ok, checks.clone()));
                (ok, checks)
            }
        }
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let accepted = app.accepted.load(Ordering::Relaxed);
    (code, Json(json!({"status": if ok { "ready" } else { "unavailable" }, "checks": checks, "accepted": accepted })))
        .into_response()
}

/// The storage and every sink's health check, the sinks' at the same time (each at most 5 s).
async fn readiness(app: &App) -> (bool, Value) {
    let mut checks = serde_json::Map::new();
    let mut ok = true;
    let storage = app.outbox.stats(Channel::Webhook).await;
    checks.insert(
        "storage".to_owned(),
        match storage {
            Ok(_) => json!("ok"),
            Err(e) => {
                ok = false;
                json!(e.to_string())
            }
        },
    );
    let sinks = app
        .dispatcher
        .channels()
        .filter_map(|channel| Some((channel, app.dispatcher.sink(channel)?)))
        .map(|(channel, sink)| async move {
            let status = match tokio::time::timeout(Duration::from_secs(5), sink.health_check()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("health check timed out after 5 s".to_owned()),
            };
            (channel, status)
        });
    for (channel, status) in futures_util::future::join_all(sinks).await {
        let status = match status {
            Ok(()) => json!("ok"),
            Err(e) => {
                ok = false;
                json!(e)
            }
        };
        checks.insert(channel.to_string(), status);
    }
    (ok, Value::Object(checks))
}

#[cfg(test)]
mod tests {
    use super::keep_hidden;
    use serde_json::json;

    #[test]
    fn redacted_values_sent_back_keep_the_stored_ones() {
        let stored = json!({"url": "https://u:pw@h.example/x?token=abc", "headers": {"Authorization": "Bearer s3cret", "X-Plain": "v"},
            "secret": ["whsec_a", "whsec_b"], "enabled": true});
        let shown = json!({"url": "https://u:**REDACTED**@h.example/x?token=**REDACTED**",
            "headers": {"Authorization": "**REDACTED**", "X-Plain": "**REDACTED**"},
            "secret": ["**REDACTED**", "**REDACTED**"], "enabled": true});
        let mut sent = json!({"url": "https://u:**REDACTED**@h.example/x?token=**REDACTED**",
            "headers": {"Authorization": "**REDACTED**", "X-Plain": "new", "X-New": "**REDACTED**"},
            "secret": ["**REDACTED**", "whsec_new"], "enabled": false});
        keep_hidden(&mut sent, &shown, &stored);
        assert_eq!(
            sent,
            json!({"url": "https://u:pw@h.example/x?token=abc",
                "headers": {"Authorization": "Bearer s3cret", "X-Plain": "new", "X-New": "**REDACTED**"},
                "secret": ["whsec_a", "whsec_new"], "enabled": false})
        );
    }

    #[test]
    fn values_that_were_never_hidden_are_left_as_sent() {
        let stored = json!({"url": "https://h.example/x", "events": ["MESSAGES_UPSERT"]});
        let shown = stored.clone();
        let mut sent = json!({"url": "https://h.example/x", "events": ["MESSAGES_UPSERT"]});
        keep_hidden(&mut sent, &shown, &stored);
        assert_eq!(sent, shown);
    }
}
