//! The operators' web console at `/console` (ADR 0020): plain HTML, CSS and JavaScript embedded in
//! the binary (no build step, no CDN), driving the REST API and the Socket.IO endpoint from the
//! browser. Two JSON routes exist for it only, under `/console/api`:
//!
//! - `GET /console/api/session`: who the `apikey` is (global or which instance) and what this
//!   server offers (the channels it can deliver to, every event name, whether Socket.IO is on);
//! - `POST /console/api/settings/{channel}/{instance}`: `POST /{channel}/set/{instance}` where a
//!   field sent back exactly as `find` showed it redacted keeps its stored value, so a form filled
//!   from the redacted settings can be saved without knowing (or wiping) the secrets.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router as Http};
use evolution_events::{Channel, EventKind};
use serde_json::{Value, json};

use crate::api::{Access, ApiResult, authorize, instance_access, set_channel};
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
        .route(
            "/console/api/settings/{channel}/{instance}",
            post(set_keeping_secrets),
        )
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

/// `POST /console/api/settings/{channel}/{instance}`: the body of `POST /{channel}/set/{instance}`
/// with every redacted value that came back unchanged replaced by the stored one.
async fn set_keeping_secrets(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((channel, instance)): Path<(String, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let parsed = Channel::parse_built_in(&channel).map_err(|e| ApiError::not_found(e.to_string()))?;
    let record = instance_access(&app, &headers, &instance)?;
    let body = match body {
        Ok(Json(mut value)) => {
            let stored = record.settings.get(parsed);
            let shown = record.settings.redacted().get(parsed);
            if let Some(sent) = value.get_mut(parsed.as_str()) {
                keep_hidden(sent, &shown, &stored);
            }
            Ok(Json(value))
        }
        Err(e) => Err(e),
    };
    let response = set_channel(State(app), headers, Path((channel, instance)), body).await?;
    if response.status() == StatusCode::CREATED {
        tracing::info!(instance = %record.name, channel = %parsed, "settings saved from the console");
    }
    Ok(response)
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
        // if the form changed its shape: then it is a new value, left as sent.
        (sent, shown, stored) => {
            if *sent == *shown && shown != stored {
                *sent = stored.clone();
            }
        }
    }
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
