//! What goes on the wire: the target URL and the request headers.

use evolution_events::{Delivery, ErrorKind, EventEnvelope, Uuid, WebhookTarget};
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT};

use crate::classify::error;
use evolution_events::SinkError;

/// The idempotency key header: the event id, the same on every attempt.
pub(crate) const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// Standard Webhooks: when the request was signed (Unix seconds).
pub(crate) const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// Standard Webhooks: `v1,<signature>` for each secret.
pub(crate) const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
/// A destination header whose value is an HS256 key: the sink sends `Authorization: Bearer <JWT>`
/// signed with it instead (Evolution API's `jwt_key`).
pub(crate) const JWT_KEY: &str = "jwt_key";

/// Headers a destination cannot set: the sink owns them (the idempotency key, and the framing
/// headers hyper computes). A destination header with one of these names is ignored.
pub(crate) const RESERVED: [&str; 7] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
];

/// Parses an http(s) URL; `label` names it in the error (the URL itself may hold secrets).
pub(crate) fn parse_url(raw: &str, label: &str, what: &str) -> Result<Url, SinkError> {
    let url = Url::parse(raw).map_err(|e| {
        // `url::ParseError` texts never quote the input.
        error(
            ErrorKind::ConfigInvalid,
            format!("{what} is not an absolute URL ({e})"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(error(
            ErrorKind::ConfigInvalid,
            format!("{what} {label} is not an http:// or https:// URL"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(error(
            ErrorKind::ConfigInvalid,
            format!("{what} {label} has no host"),
        ));
    }
    Ok(url)
}

/// The headers of a POST of event `event_id` to `target`: `content-type: application/json`,
/// `user-agent`, then the target's headers (which may replace those two; [`RESERVED`] names are
/// ignored; a `jwt_key` header becomes `Authorization: Bearer <JWT>`), `webhook-id: <event id>`,
/// and with signing secrets `webhook-timestamp` and `webhook-signature` over `body`.
///
/// # Errors
/// `ConfigInvalid` (never retried) for an invalid header name or value; the value is not shown,
/// `label` names the destination.
pub(crate) fn headers(
    label: &dyn Fn() -> String,
    user_agent: &HeaderValue,
    event_id: Uuid,
    target: &WebhookTarget,
    body: &[u8],
    now: i64,
) -> Result<HeaderMap, SinkError> {
    let mut headers = HeaderMap::with_capacity(3 + target.headers.len());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(USER_AGENT, user_agent.clone());

    let mut extra = HeaderMap::with_capacity(target.headers.len());
    let mut jwt = None;
    for (name, value) in &target.headers {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            error(
                ErrorKind::ConfigInvalid,
                format!(
                    "{}: header name {name:?} is not a valid HTTP header name",
                    label()
                ),
            )
        })?;
        if RESERVED.contains(&header.as_str()) {
            continue;
        }
        if header.as_str() == JWT_KEY {
            let token = crate::sign::jwt(value.expose(), now);
            let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| error(ErrorKind::Unexpected, "a JWT is not a header value"))?;
            bearer.set_sensitive(true);
            jwt = Some(bearer);
            continue;
        }
        let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
            error(
                ErrorKind::ConfigInvalid,
                format!(
                    "{}: the value of header {name:?} is not a valid HTTP header value (value not shown)",
                    label()
                ),
            )
        })?;
        value.set_sensitive(true);
        extra.append(header, value);
    }
    // `extend` replaces the defaults a destination sets, keeping every value it gives.
    headers.extend(extra);
    if let Some(bearer) = jwt {
        // As in Evolution API, the token replaces any stored Authorization header.
        headers.insert(AUTHORIZATION, bearer);
    }

    let id = event_id.hyphenated().to_string();
    let id_value = HeaderValue::from_str(&id)
        .map_err(|_| error(ErrorKind::Unexpected, "the event id is not a header value"))?;
    headers.insert(WEBHOOK_ID, id_value);
    if !target.signing_secrets.is_empty() {
        let signature = crate::sign::signature(&target.signing_secrets, &id, now, body);
        let value = HeaderValue::from_str(&signature)
            .map_err(|_| error(ErrorKind::Unexpected, "a signature is not a header value"))?;
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(now));
        headers.insert(WEBHOOK_SIGNATURE, value);
    }
    Ok(headers)
}

/// Adds the W3C trace context of the event (`traceparent`, `tracestate`), replacing any the
/// destination's own headers set.
pub(crate) fn trace_headers(headers: &mut HeaderMap, envelope: &EventEnvelope) {
    for (name, value) in envelope.trace_headers() {
        // Both were checked to be printable ASCII when the event was accepted.
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

/// CloudEvents' HTTP binding: the content type of the body (`application/cloudevents+json` in
/// structured mode), and in binary mode each attribute as a `ce-` header, its value
/// percent-encoded outside printable ASCII (and `"`, `%`, space), as the binding asks.
pub(crate) fn cloudevent_headers(headers: &mut HeaderMap, delivery: &Delivery) {
    if !delivery.envelope.format().is_cloudevents() {
        return;
    }
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(delivery.binding_content_type()),
    );
    for (name, value) in delivery.binary_attributes().unwrap_or_default() {
        let name = HeaderName::from_bytes(format!("ce-{name}").as_bytes());
        let value = HeaderValue::from_str(&percent_encode(&value));
        if let (Ok(name), Ok(value)) = (name, value) {
            headers.insert(name, value);
        }
    }
}

fn percent_encode(value: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(char::from(b));
        } else {
            let _infallible = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use evolution_events::Sensitive;

    use super::*;

    fn target(headers: &[(&str, &str)]) -> WebhookTarget {
        WebhookTarget {
            rate_limit: None,
            signing_secrets: Vec::new(),
            payload_destination: None,
            base64: true,
            url: "https://hooks.example.com/in".into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), Sensitive::new(*v)))
                .collect(),
        }
    }

    #[test]
    fn defaults_then_destination_headers_then_the_id() {
        let ua = HeaderValue::from_static("evolution-events/test");
        let id = Uuid::now_v7();
        let h = headers(
            &|| "l".to_owned(),
            &ua,
            id,
            &target(&[
                ("X-Token", "secret"),
                ("x-multi", "a"),
                ("X-Multi", "b"),
                ("Webhook-Id", "forged"),
                ("Content-Length", "1"),
            ]),
            b"{}",
            0,
        )
        .unwrap();
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["user-agent"], "evolution-events/test");
        assert_eq!(h["x-token"], "secret");
        assert!(h["x-token"].is_sensitive());
        assert_eq!(h.get_all("x-multi").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(h["webhook-id"], id.to_string().as_str());
        assert!(h.get("content-length").is_none());
        assert!(!format!("{h:?}").contains("secret"));
    }

    #[test]
    fn a_destination_may_replace_content_type_and_user_agent() {
        let ua = HeaderValue::from_static("evolution-events/test");
        let h = headers(
            &|| "l".to_owned(),
            &ua,
            Uuid::now_v7(),
            &target(&[
                ("Content-Type", "application/cloudevents+json"),
                ("User-Agent", "mine"),
            ]),
            b"{}",
            0,
        )
        .unwrap();
        assert_eq!(h["content-type"], "application/cloudevents+json");
        assert_eq!(h.get_all("user-agent").iter().collect::<Vec<_>>(), ["mine"]);
    }

    #[test]
    fn invalid_headers_are_config_errors_without_the_value() {
        let ua = HeaderValue::from_static("ua");
        let e = headers(
            &|| "l".to_owned(),
            &ua,
            Uuid::now_v7(),
            &target(&[("bad name", "x")]),
            b"",
            0,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        assert!(!e.is_retryable());
        assert!(e.message().contains("\"bad name\""), "{e}");
        let e = headers(
            &|| "l".to_owned(),
            &ua,
            Uuid::now_v7(),
            &target(&[("x-token", "hunter2\r\nx-evil: 1")]),
            b"",
            0,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.message().contains("x-token"), "{e}");
    }

    #[test]
    fn signatures_and_jwt() {
        let ua = HeaderValue::from_static("ua");
        let id = Uuid::now_v7();
        let mut t = target(&[("jwt_key", "k3y"), ("Authorization", "Basic old")]);
        let h = headers(&|| "l".to_owned(), &ua, id, &t, b"{}", 1_700_000_000).unwrap();
        let bearer = h["authorization"].to_str().unwrap();
        assert!(
            bearer.starts_with("Bearer ey"),
            "the JWT replaces the stored Authorization"
        );
        assert!(h.get("jwt_key").is_none(), "the key itself is not sent");
        assert!(h.get("webhook-signature").is_none(), "no secret, no signature");
        t.signing_secrets = vec![Sensitive::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")];
        let h = headers(&|| "l".to_owned(), &ua, id, &t, b"{}", 1_700_000_000).unwrap();
        assert_eq!(h["webhook-timestamp"], "1700000000");
        let expected = crate::sign::signature(&t.signing_secrets, &id.to_string(), 1_700_000_000, b"{}");
        assert_eq!(h["webhook-signature"], expected.as_str());
    }

    #[test]
    fn urls_must_be_absolute_http() {
        assert!(parse_url("https://h.example/x?q=1", "l", "webhook URL").is_ok());
        for bad in [
            "ftp://h.example/x",
            "/relative",
            "http://",
            "mailto:a@b.c",
            "not a url",
        ] {
            let e = parse_url(bad, "<label>", "webhook URL").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{bad}");
            assert!(!e.is_retryable());
        }
        let e = parse_url("ftp://u:hunter2@h.example/", "ftp://h.example/", "probe URL").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn cloudevent_header_values_are_percent_encoded_outside_printable_ascii() {
        assert_eq!(
            super::percent_encode("evolution.messages.upsert"),
            "evolution.messages.upsert"
        );
        assert_eq!(super::percent_encode("a b\"c%é"), "a%20b%22c%25%C3%A9");
    }
}
