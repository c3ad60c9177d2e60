//! How Pusher HTTP API answers and transport errors become [`SinkError`]s.

use std::borrow::Cow;
use std::time::Duration;

use evolution_events::{Channel, ErrorKind, Retry, SinkError};
use serde_json::Value;

/// A Pusher sink error.
pub(crate) fn error(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> SinkError {
    SinkError::new(Channel::Pusher, kind, message)
}

/// At most this much of an answer's body is quoted in an error.
const QUOTE: usize = 200;

fn quote(body: &[u8]) -> String {
    let end = body.len().min(QUOTE);
    let text = String::from_utf8_lossy(&body[..end]).trim().to_owned();
    if body.len() > QUOTE {
        format!("{text}…")
    } else {
        text
    }
}

/// The outcome of an answer with `status` and `body` from the server at `label`.
///
/// | answer | kind | retry |
/// |---|---|---|
/// | 2xx without an `error` | delivered | — |
/// | 2xx with `{"error", "code"}` (soketi answers a bad signature `200 {"code":401}`) | as `code` below | |
/// | 400, 404, 413 | `Rejected` (404: `ConfigInvalid`, no such app) | `Never` |
/// | 401, 403 | `Unauthorized` (bad key, secret or clock; app disabled or over quota) | `Never` |
/// | 408 | `Timeout` | `Backoff` |
/// | 429 | `RateLimited` | `After(Retry-After)` if given, else `Backoff` |
/// | 5xx | `Unavailable` | `After(Retry-After)` on 503 if given, else `Backoff` |
/// | anything else | `Unexpected` | `Backoff` |
pub(crate) fn classify(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
    label: &str,
) -> Result<(), SinkError> {
    let mut status = status;
    if (200..300).contains(&status) {
        let Some(code) = embedded_error(body) else {
            return Ok(());
        };
        status = code;
    }
    let text = quote(body);
    let answer = |what: &str| format!("{label}: {what} (HTTP API answered {status}: {text})");
    let e = match status {
        400 | 413 => error(ErrorKind::Rejected, answer("the server refused the event")).with_retry(Retry::Never),
        404 => error(
            ErrorKind::ConfigInvalid,
            answer("no such app on this server: check appId, cluster and host"),
        )
        .with_retry(Retry::Never),
        401 | 403 => error(
            ErrorKind::Unauthorized,
            answer(
                "the server refused the credentials: check key and secret (and the clock: signatures expire after \
                 600 s), or the app is disabled or over quota",
            ),
        )
        .with_retry(Retry::Never),
        408 => error(ErrorKind::Timeout, answer("the server timed out")),
        429 => {
            let e = error(ErrorKind::RateLimited, answer("rate limited"));
            match retry_after {
                Some(delay) => e.with_retry(Retry::After(delay)),
                None => e,
            }
        }
        500..=599 => {
            let e = error(ErrorKind::Unavailable, answer("the server failed"));
            match retry_after {
                Some(delay) if status == 503 => e.with_retry(Retry::After(delay)),
                _ => e,
            }
        }
        _ => error(ErrorKind::Unexpected, answer("unexpected answer")).with_retry(Retry::Backoff),
    };
    Err(e.with_status(status))
}

/// The `code` of a `{"error": …, "code": 4xx}` body (soketi's way of refusing with HTTP 200).
fn embedded_error(body: &[u8]) -> Option<u16> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("error")?;
    let code = value.get("code").and_then(Value::as_u64).unwrap_or(500);
    Some(
        u16::try_from(code)
            .ok()
            .filter(|c| (100..600).contains(c))
            .unwrap_or(500),
    )
}

/// A transport failure: timeouts are `Timeout`, the rest (refused, reset, DNS, TLS) `Unavailable`.
/// The text never contains the URL (its query carries the signature).
pub(crate) fn transport(e: reqwest::Error, label: &str) -> SinkError {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        detail.push_str(": ");
        detail.push_str(&inner.to_string());
        source = inner.source();
    }
    if timeout {
        error(
            ErrorKind::Timeout,
            format!("{label}: no answer in time: {detail}"),
        )
    } else {
        error(
            ErrorKind::Unavailable,
            format!("{label}: cannot reach the server: {detail}"),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn kind(status: u16, body: &str) -> Option<(ErrorKind, Retry)> {
        classify(status, body.as_bytes(), None, "app 1")
            .err()
            .map(|e| (e.kind(), e.retry()))
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(kind(200, "{}"), None);
        assert_eq!(kind(200, r#"{"ok":true}"#), None);
        assert_eq!(kind(200, ""), None);
        assert_eq!(kind(400, "bad"), Some((ErrorKind::Rejected, Retry::Never)));
        assert_eq!(kind(413, "too big"), Some((ErrorKind::Rejected, Retry::Never)));
        assert_eq!(kind(404, ""), Some((ErrorKind::ConfigInvalid, Retry::Never)));
        assert_eq!(kind(401, ""), Some((ErrorKind::Unauthorized, Retry::Never)));
        assert_eq!(kind(403, ""), Some((ErrorKind::Unauthorized, Retry::Never)));
        assert_eq!(kind(408, ""), Some((ErrorKind::Timeout, Retry::Backoff)));
        assert_eq!(kind(429, ""), Some((ErrorKind::RateLimited, Retry::Backoff)));
        assert_eq!(kind(500, ""), Some((ErrorKind::Unavailable, Retry::Backoff)));
        assert_eq!(kind(302, ""), Some((ErrorKind::Unexpected, Retry::Backoff)));
        let e = classify(503, b"", Some(Duration::from_secs(7)), "app 1").unwrap_err();
        assert_eq!(e.retry(), Retry::After(Duration::from_secs(7)));
        assert_eq!(e.status(), Some(503));
    }

    #[test]
    fn soketi_refuses_a_bad_signature_with_200() {
        let body = r#"{"error":"The secret authentication failed","code":401}"#;
        let e = classify(200, body.as_bytes(), None, "app 1 evolution.acme MESSAGES_UPSERT").unwrap_err();
        assert_eq!(
            (e.kind(), e.retry(), e.status()),
            (ErrorKind::Unauthorized, Retry::Never, Some(401))
        );
        assert!(e.message().contains("The secret authentication failed"), "{e}");
        assert!(
            e.message().starts_with("app 1 evolution.acme MESSAGES_UPSERT: "),
            "{e}"
        );
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = "x".repeat(1000);
        let e = classify(400, body.as_bytes(), None, "app 1").unwrap_err();
        assert!(e.message().len() < 500 && e.message().ends_with("…)"), "{e}");
    }
}
