//! The operators' web console at `/console` (ADR 0020): plain HTML, CSS and JavaScript embedded in
//! the binary (no build step, no CDN), driving the REST API and the Socket.IO endpoint from the
//! browser. Two JSON routes exist for it only, under `/console/api`:
//!
//! - `GET /console/api/session`: who the `apikey` is (global or which instance) and what this
//!   server offers (the channels it can deliver to, every event name, whether Socket.IO is on);
//! - `GET` and `POST /console/api/settings/{channel}/{instance}`: `find` and `set` of a channel's
//!   settings in one shape whatever `EVENT_NAMING` says (the seed profile's; Evolution API's rows
//!   have other field names), secrets redacted; a value sent back redacted keeps the stored secret.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router as Http};
use evolution_events::{Channel, EventKind};
use serde_json::{Value, json};

use crate::api::{Access, ApiResult, authorize, instance_access, json_body, save_channel};
use crate::app::App;
use crate::error::ApiError;

const INDEX_HTML: &str = include_str!("../console/index.html");
const CONSOLE_CSS: &str = include_str!("../console/console.css");
const CONSOLE_JS: &str = include_str!("../console/console.js");
/// socket.io-client's browser build (MIT; `console/vendor/README.md`).
const SOCKET_IO_JS: &str = include_str!("../console/vendor/socket.io.min.js");
const SOCKET_IO_LICENSE: &str = include_str!("../console/vendor/socket.io-client.LICENSE");

/// Scripts and styles from this server only, nothing inline; connections to this server only
/// (fetch, and Socket.IO's polling and websocket transports); never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes, mounted by [`crate::api::routes`].
pub(crate) fn routes() -> Http<Arc<App>> {
    Http::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route(
            "/console/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/socket.io.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", SOCKET_IO_JS) }),
        )
        .route(
            "/console/socket.io-client.LICENSE",
            get(|| async { asset("text/plain; charset=utf-8", SOCKET_IO_LICENSE) }),
        )
        .route("/console/api/session", get(session))
        .route("/console/api/settings/{channel}/{instance}", get(find).post(save))
}

/// One embedded file, never cached stale (it changes with the binary) and with the console's
/// security headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// `GET /console/api/session`.
async fn session(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult {
    let access = authorize(&app, &headers)?;
    let channels: Vec<&str> = evolution_sinks::build::AVAILABLE
        .iter()
        .copied()
        .filter(|c| app.config.global.enabled(*c))
        .map(Channel::as_str)
        .collect();
    let events: Vec<&str> = EventKind::all().map(EventKind::key).collect();
    let websocket = app.dispatcher.channels().any(|c| c == Channel::Websocket);
    let mut body = json!({
        "access": "global",
        "channels": channels,
        "events": events,
        "websocket": websocket,
        "version": env!("CARGO_PKG_VERSION"),
    });
    if let Access::Instance(own) = access {
        body["access"] = json!("instance");
        body["instance"] = json!(own.name);
    }
    Ok(Json(body).into_response())
}

/// `GET /console/api/settings/{channel}/{instance}`: `channel`'s settings in the console's shape
/// (the seed profile's, whatever `EVENT_NAMING` says), secrets redacted.
async fn find(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((channel, instance)): Path<(String, String)>,
) -> ApiResult {
    let channel = Channel::parse_built_in(&channel).map_err(|e| ApiError::not_found(e.to_string()))?;
    let record = instance_access(&app, &headers, &instance)?;
    Ok(Json(record.settings.redacted().get(channel)).into_response())
}

/// `POST /console/api/settings/{channel}/{instance}`: `POST /{channel}/set/{instance}` (a value
/// sent back redacted keeps the stored secret), answered in the console's shape
/// (`{"<channel>": {…}}`, secrets redacted) whatever `EVENT_NAMING` says.
async fn save(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((channel, instance)): Path<(String, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let channel = Channel::parse_built_in(&channel).map_err(|e| ApiError::not_found(e.to_string()))?;
    let record = instance_access(&app, &headers, &instance)?;
    let body = json_body(body)?;
    let updated = save_channel(&app, &record, channel, body).await?;
    tracing::info!(instance = %record.name, channel = %channel, "settings saved from the console");
    let answer = json!({ channel.as_str(): updated.settings.redacted().get(channel) });
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}
