//! Classification of HTTP answers and transport errors into [`SinkError`]s.
//!
//! Every message names the destination by its label (no user info, no query string) and never
//! shows a header value; transport error texts are scrubbed of the URL's secrets.

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use evolution_events::{Channel, ErrorKind, Retry, SinkError, error_chain, scrub};
use reqwest::{StatusCode, Url};

/// How many bytes of an answer's body a message quotes.
pub(crate) const EXCERPT_BYTES: usize = 200;

/// What the HTTP client reported, with the URL and its secrets removed (the `source` of transport
/// errors).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct HttpError(pub(crate) String);

/// A webhook [`SinkError`].
pub(crate) fn error(kind: ErrorKind, message: impl Into<std::borrow::Cow<'static, str>>) -> SinkError {
    SinkError::new(Channel::Webhook, kind, message)
}

/// Classifies an HTTP answer from `label` (see the crate documentation's table): `Ok` for 2xx, an
/// error carrying the status otherwise.
///
/// `retry_after` is the raw `Retry-After` header, honoured on 429 and 503; `body` is (a prefix
/// of) the answer's body, of which [`EXCERPT_BYTES`] are quoted; `now` dates an HTTP-date
/// `Retry-After`.
pub(crate) fn classify(
    label: &str,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now: SystemTime,
) -> Result<(), SinkError> {
    let answered = format!("{label} answered {}", status_text(status));
    let kind = match status {
        200..=299 => return Ok(()),
        300..=399 => {
            return Err(error(
                ErrorKind::Rejected,
                format!("{answered}: redirects are not followed (Location not shown)"),
            )
            .with_status(status)
            .with_retry(Retry::Never));
        }
        410 => {
            return Err(error(
                ErrorKind::Rejected,
                format!(
                    "{answered}: the receiver no longer accepts these events; an instance's webhook is disabled \
                     (enable it again with POST /webhook/set/{{instance}})"
                ),
            )
            .with_status(status)
            .with_retry(Retry::Never));
        }
        408 => ErrorKind::Timeout,
        429 => ErrorKind::RateLimited,
        401 | 403 => ErrorKind::Unauthorized,
        400..=499 => ErrorKind::Rejected,
        500..=599 => ErrorKind::Unavailable,
        _ => ErrorKind::Unexpected,
    };
    let retry = match (
        status,
        retry_after.and_then(|value| parse_retry_after(value, now)),
    ) {
        (429 | 503, Some(delay)) => Retry::After(delay),
        _ => Retry::Backoff,
    };
    let quoted = excerpt(body);
    let message = if quoted.is_empty() {
        answered
    } else {
        format!("{answered}; body {quoted:?}")
    };
    Err(error(kind, message).with_status(status).with_retry(retry))
}

/// `404 Not Found`, or just `599` for a status without a standard reason.
fn status_text(status: u16) -> String {
    match StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

/// A `Retry-After` value (delta-seconds or HTTP-date) as a delay from `now`; a date in the past
/// is no delay. `None` if it is neither.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to fit a u64 is "very long": the retry policy caps it anyway.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The first [`EXCERPT_BYTES`] of `body` (cut at a character boundary when it is UTF-8), decoded
/// lossily and trimmed, with `…` when cut.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let mut end = body.len().min(EXCERPT_BYTES);
    if end < body.len() {
        // Do not split a UTF-8 sequence: step back over continuation bytes (at most 3).
        let mut back = 0;
        while back < 3 && end > 0 && body.get(end).is_some_and(|b| b & 0xC0 == 0x80) {
            end -= 1;
            back += 1;
        }
    }
    let text = String::from_utf8_lossy(body.get(..end).unwrap_or_default());
    let text = text.trim();
    if end < body.len() {
        format!("{text}…")
    } else {
        text.to_owned()
    }
}

/// What kind of transport failure an error is (the facts `reqwest::Error` tells).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TransportFacts {
    /// The request could not be built (bad URL, bad header).
    pub(crate) builder: bool,
    /// A connect or request deadline passed.
    pub(crate) timeout: bool,
    /// The host name could not be resolved.
    pub(crate) dns: bool,
    /// No connection could be established.
    pub(crate) connect: bool,
    /// A redirect policy refused (never, redirects are not followed at all).
    pub(crate) redirect: bool,
}

impl TransportFacts {
    fn of(e: &reqwest::Error) -> Self {
        Self {
            builder: e.is_builder(),
            timeout: e.is_timeout(),
            dns: e.is_dns(),
            connect: e.is_connect(),
            redirect: e.is_redirect(),
        }
    }
}

/// The kind, retry class and short description of a transport failure.
pub(crate) fn transport_class(facts: TransportFacts) -> (ErrorKind, Retry, &'static str) {
    if facts.builder {
        (
            ErrorKind::ConfigInvalid,
            Retry::Never,
            "the request cannot be built",
        )
    } else if facts.timeout {
        (ErrorKind::Timeout, Retry::Backoff, "timed out")
    } else if facts.dns {
        (ErrorKind::Unavailable, Retry::Backoff, "cannot resolve the host")
    } else if facts.connect {
        (ErrorKind::Unavailable, Retry::Backoff, "cannot connect")
    } else if facts.redirect {
        (ErrorKind::Rejected, Retry::Never, "redirects are not followed")
    } else {
        // Connection reset, closed before the answer, body errors.
        (ErrorKind::Unavailable, Retry::Backoff, "the request failed")
    }
}

/// Classifies a request to `label` that got no HTTP answer. `secrets` are texts to hide from the
/// client's error text (see [`url_secrets`]).
pub(crate) fn classify_transport(label: &str, e: &reqwest::Error, secrets: &[&str]) -> SinkError {
    if let Some(refused) = forbidden(e) {
        return forbidden_error(label, refused);
    }
    let (kind, retry, what) = transport_class(TransportFacts::of(e));
    // The error's own Display names the URL: describe only its causes.
    let detail = scrub(&error_chain(e.source()), secrets);
    let out = error(kind, format!("{label}: {what}")).with_retry(retry);
    if detail.is_empty() {
        out
    } else {
        out.with_source(HttpError(detail))
    }
}

/// The SSRF refusal in an error's chain, if the resolver refused the target.
fn forbidden(e: &reqwest::Error) -> Option<&crate::network::Forbidden> {
    let mut next: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(err) = next {
        if let Some(refused) = err.downcast_ref::<crate::network::Forbidden>() {
            return Some(refused);
        }
        next = err.source();
    }
    None
}

/// A permanent refusal of a target in a special-purpose network.
pub(crate) fn forbidden_error(label: &str, refused: &crate::network::Forbidden) -> SinkError {
    error(ErrorKind::Rejected, format!("{label}: {refused}")).with_retry(Retry::Never)
}

/// The parts of a URL that may be secret: the URL itself (as given and as parsed), its user
/// name, password, query and fragment.
pub(crate) fn url_secrets<'a>(raw: &'a str, url: &'a Url) -> Vec<&'a str> {
    let mut secrets = vec![raw, url.as_str(), url.username()];
    secrets.extend(url.password());
    secrets.extend(url.query());
    secrets.extend(url.fragment());
    secrets
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL: &str = "https://hooks.example.com/in";

    fn answer(status: u16, retry_after: Option<&str>, body: &str) -> SinkError {
        let Err(e) = classify(LABEL, status, retry_after, body.as_bytes(), SystemTime::now()) else {
            panic!("{status} classified as delivered")
        };
        e
    }

    #[test]
    fn success_is_every_2xx() {
        for status in [200, 201, 202, 204, 299] {
            assert!(classify(LABEL, status, None, b"ignored", SystemTime::now()).is_ok());
        }
    }

    #[test]
    fn redirects_are_permanent_and_hide_the_location() {
        for status in [301, 302, 303, 307, 308] {
            let e = answer(status, None, "see https://elsewhere.example/?token=secret");
            assert_eq!(e.kind(), ErrorKind::Rejected);
            assert_eq!(e.retry(), Retry::Never);
            assert_eq!(e.status(), Some(status));
            assert!(
                e.message()
                    .contains("redirects are not followed (Location not shown)")
            );
            assert!(!e.to_string().contains("token=secret"), "{e}");
        }
    }

    #[test]
    fn error_statuses_map_to_kinds_and_are_all_retried_by_backoff() {
        let table = [
            (400, ErrorKind::Rejected),
            (401, ErrorKind::Unauthorized),
            (403, ErrorKind::Unauthorized),
            (404, ErrorKind::Rejected),
            (408, ErrorKind::Timeout),
            (409, ErrorKind::Rejected),
            (413, ErrorKind::Rejected),
            (422, ErrorKind::Rejected),
            (429, ErrorKind::RateLimited),
            (500, ErrorKind::Unavailable),
            (502, ErrorKind::Unavailable),
            (503, ErrorKind::Unavailable),
            (504, ErrorKind::Unavailable),
            (599, ErrorKind::Unavailable),
            (101, ErrorKind::Unexpected),
            (600, ErrorKind::Unexpected),
        ];
        for (status, kind) in table {
            let e = answer(status, None, "");
            assert_eq!(e.kind(), kind, "status {status}");
            assert_eq!(e.retry(), Retry::Backoff, "status {status}");
            assert_eq!(e.status(), Some(status));
            assert!(e.message().starts_with(LABEL), "{e}");
        }
        assert_eq!(
            answer(404, None, "").to_string(),
            "webhook sink: rejected: https://hooks.example.com/in answered 404 Not Found (status 404)"
        );
    }

    #[test]
    fn gone_is_permanent_and_says_the_webhook_is_disabled() {
        let e = answer(410, None, "");
        assert_eq!(
            (e.kind(), e.retry(), e.status()),
            (ErrorKind::Rejected, Retry::Never, Some(410))
        );
        assert!(e.message().contains("webhook is disabled"), "{e}");
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_only() {
        let e = answer(429, Some("7"), "");
        assert_eq!(e.retry(), Retry::After(Duration::from_secs(7)));
        let e = answer(503, Some(" 120 "), "");
        assert_eq!(e.retry(), Retry::After(Duration::from_secs(120)));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        for status in [500, 502, 404, 408] {
            assert_eq!(answer(status, Some("7"), "").retry(), Retry::Backoff, "{status}");
        }
        assert_eq!(answer(429, Some("soon"), "").retry(), Retry::Backoff);
        assert_eq!(answer(429, Some("-5"), "").retry(), Retry::Backoff);
        assert_eq!(answer(429, None, "").retry(), Retry::Backoff);
    }

    #[test]
    fn retry_after_accepts_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let in_90s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&in_90s, now), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:47 1994", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:40:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        let e = classify(LABEL, 503, Some(&in_90s), b"", now).unwrap_err();
        assert_eq!(e.retry(), Retry::After(Duration::from_secs(90)));
    }

    #[test]
    fn bodies_are_quoted_short() {
        let e = answer(500, None, "  boom\nline two  ");
        assert_eq!(
            e.message(),
            r#"https://hooks.example.com/in answered 500 Internal Server Error; body "boom\nline two""#
        );
        let long = "é".repeat(150); // 300 bytes
        let quoted = excerpt(long.as_bytes());
        assert_eq!(quoted, format!("{}…", "é".repeat(100)));
        let odd = format!("{}€", "a".repeat(199)); // the euro sign straddles byte 200
        assert_eq!(excerpt(odd.as_bytes()), format!("{}…", "a".repeat(199)));
        assert_eq!(excerpt(b"\xff\xfeok"), "\u{fffd}\u{fffd}ok");
        assert_eq!(excerpt(b""), "");
        assert_eq!(excerpt(&[b'x'; 200]), "x".repeat(200));
    }

    #[test]
    fn transport_classes() {
        let f = TransportFacts::default;
        let cases = [
            (
                TransportFacts { builder: true, ..f() },
                ErrorKind::ConfigInvalid,
                Retry::Never,
            ),
            (
                TransportFacts {
                    timeout: true,
                    connect: true,
                    ..f()
                },
                ErrorKind::Timeout,
                Retry::Backoff,
            ),
            (
                TransportFacts {
                    dns: true,
                    connect: true,
                    ..f()
                },
                ErrorKind::Unavailable,
                Retry::Backoff,
            ),
            (
                TransportFacts { connect: true, ..f() },
                ErrorKind::Unavailable,
                Retry::Backoff,
            ),
            (
                TransportFacts {
                    redirect: true,
                    ..f()
                },
                ErrorKind::Rejected,
                Retry::Never,
            ),
            (f(), ErrorKind::Unavailable, Retry::Backoff),
        ];
        for (facts, kind, retry) in cases {
            let (k, r, _) = transport_class(facts);
            assert_eq!((k, r), (kind, retry), "{facts:?}");
        }
    }

    #[test]
    fn scrub_hides_url_secrets() {
        let raw = "https://user:hunter2@hooks.example.com/in?token=abc#frag";
        let url = Url::parse(raw).unwrap();
        let secrets = url_secrets(raw, &url);
        let text = format!("failed for {raw} with hunter2 and token=abc and frag");
        let clean = scrub(&text, &secrets);
        for secret in ["hunter2", "token=abc", "frag", "user"] {
            assert!(!clean.contains(secret), "{clean}");
        }
        assert_eq!(scrub("nothing here", &["", "x-y"]), "nothing here");
    }

    #[test]
    fn chains_skip_repeated_messages() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Middle);
        #[derive(Debug, thiserror::Error)]
        #[error("tcp connect error: refused")]
        struct Middle(#[source] std::io::Error);
        let e = Outer(Middle(std::io::Error::other("refused")));
        assert_eq!(error_chain(Some(&e)), "outer: tcp connect error: refused");
        assert_eq!(error_chain(None), "");
    }

    #[tokio::test]
    async fn real_transport_errors() {
        // Connection refused: a port nobody listens on.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let raw = format!("http://user:hunter2@127.0.0.1:{port}/hook?token=abc");
        let url = Url::parse(&raw).unwrap();
        let client = reqwest::Client::builder().build().unwrap();
        let e = client.post(url.clone()).send().await.unwrap_err();
        let label = format!("http://127.0.0.1:{port}/hook");
        let e = classify_transport(&label, &e, &url_secrets(&raw, &url));
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(e.is_retryable());
        let shown = e.to_string();
        assert!(shown.contains("cannot connect"), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("token"), "{shown}");

        // Timeout: a listener that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let e = client
            .post(format!("http://{addr}/slow"))
            .send()
            .await
            .unwrap_err();
        let e = classify_transport("slow", &e, &[]);
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert_eq!(e.retry(), Retry::Backoff);
        held.abort();

        // Builder: a request that cannot be built.
        let e = client.post("http://exa mple.com/").build().unwrap_err();
        let e = classify_transport("bad", &e, &[]);
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{e}");
        assert!(!e.is_retryable());
    }
}
