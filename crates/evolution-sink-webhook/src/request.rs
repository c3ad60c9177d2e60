//! What goes on the wire: the target URL and the request headers.

use evolution_events::{ErrorKind, Uuid, WebhookTarget};
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT};

use crate::classify::error;
use evolution_events::SinkError;

/// The idempotency key header: the event id, the same on every attempt.
pub(crate) const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");

/// Headers a destination cannot set: the sink owns them (the idempotency key, and the framing
/// headers hyper computes). A destination header with one of these names is ignored.
pub(crate) const RESERVED: [&str; 5] = [
    "webhook-id",
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
/// ignored), and `webhook-id: <event id>`.
///
/// # Errors
/// `ConfigInvalid` (never retried) for an invalid header name or value; the value is not shown,
/// `label` names the destination.
pub(crate) fn headers(
    label: &str,
    user_agent: &HeaderValue,
    event_id: Uuid,
    target: &WebhookTarget,
) -> Result<HeaderMap, SinkError> {
    let mut headers = HeaderMap::with_capacity(3 + target.headers.len());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(USER_AGENT, user_agent.clone());

    let mut extra = HeaderMap::with_capacity(target.headers.len());
    for (name, value) in &target.headers {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            error(
                ErrorKind::ConfigInvalid,
                format!("{label}: header name {name:?} is not a valid HTTP header name"),
            )
        })?;
        if RESERVED.contains(&header.as_str()) {
            continue;
        }
        let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
            error(
                ErrorKind::ConfigInvalid,
                format!(
                    "{label}: the value of header {name:?} is not a valid HTTP header value (value not shown)"
                ),
            )
        })?;
        value.set_sensitive(true);
        extra.append(header, value);
    }
    // `extend` replaces the defaults a destination sets, keeping every value it gives.
    headers.extend(extra);

    let id = HeaderValue::from_str(&event_id.hyphenated().to_string())
        .map_err(|_| error(ErrorKind::Unexpected, "the event id is not a header value"))?;
    headers.insert(WEBHOOK_ID, id);
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use evolution_events::Sensitive;

    use super::*;

    fn target(headers: &[(&str, &str)]) -> WebhookTarget {
        WebhookTarget {
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
            "l",
            &ua,
            id,
            &target(&[
                ("X-Token", "secret"),
                ("x-multi", "a"),
                ("X-Multi", "b"),
                ("Webhook-Id", "forged"),
                ("Content-Length", "1"),
            ]),
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
            "l",
            &ua,
            Uuid::now_v7(),
            &target(&[
                ("Content-Type", "application/cloudevents+json"),
                ("User-Agent", "mine"),
            ]),
        )
        .unwrap();
        assert_eq!(h["content-type"], "application/cloudevents+json");
        assert_eq!(h.get_all("user-agent").iter().collect::<Vec<_>>(), ["mine"]);
    }

    #[test]
    fn invalid_headers_are_config_errors_without_the_value() {
        let ua = HeaderValue::from_static("ua");
        let e = headers("l", &ua, Uuid::now_v7(), &target(&[("bad name", "x")])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        assert!(!e.is_retryable());
        assert!(e.message().contains("\"bad name\""), "{e}");
        let e = headers(
            "l",
            &ua,
            Uuid::now_v7(),
            &target(&[("x-token", "hunter2\r\nx-evil: 1")]),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.message().contains("x-token"), "{e}");
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
}
