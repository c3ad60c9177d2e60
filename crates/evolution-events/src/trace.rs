//! W3C Trace Context (`traceparent`, `tracestate`): the trace an event belongs to, stored with it
//! and carried on every delivery.
//!
//! The context an event keeps is the one of its *ingest* span (OpenTelemetry's messaging
//! "create" context): a producer's `traceparent` is the parent of that span, and every delivery
//! carries the ingest span's `traceparent`, so a consumer continues the producer's trace.

use std::fmt;

/// The name of the `traceparent` header (and message property).
pub const TRACEPARENT: &str = "traceparent";
/// The name of the `tracestate` header (and message property).
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` kept (the W3C limit a vendor must propagate is 512 characters).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// One position in a trace: trace id, span id, flags and the vendors' `tracestate`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    state: Option<Box<str>>,
}

/// Why a `traceparent` was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceContextError {
    /// Not `version-traceid-parentid-flags` in lower-case hex.
    #[error(
        "`traceparent` must be `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` in lower case (W3C Trace Context), got `{0}`"
    )]
    Malformed(String),
    /// The trace id or the parent id is all zeros, or the version is `ff`.
    #[error("`traceparent` `{0}` has an all-zero id or the forbidden version ff")]
    Invalid(String),
}

impl TraceContext {
    /// Reads a `traceparent` header and its `tracestate`. A `tracestate` that is not printable
    /// ASCII or longer than [`MAX_TRACESTATE_LEN`] is dropped (as W3C asks of an invalid one).
    ///
    /// # Errors
    /// A `traceparent` that is not W3C Trace Context (version 00, or a later version's first four
    /// fields).
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<Self, TraceContextError> {
        let malformed = || TraceContextError::Malformed(shorten(traceparent));
        let value = traceparent.trim_matches([' ', '\t']);
        let mut parts = value.split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let version = hex_array::<1>(version).ok_or_else(malformed)?;
        // Version 00 has exactly four fields; a later version may append more.
        if version[0] == 0 && parts.next().is_some() {
            return Err(malformed());
        }
        let trace_id = hex_array::<16>(trace).ok_or_else(malformed)?;
        let span_id = hex_array::<8>(span).ok_or_else(malformed)?;
        let flags = hex_array::<1>(flags).ok_or_else(malformed)?;
        if version[0] == 0xff || trace_id == [0; 16] || span_id == [0; 8] {
            return Err(TraceContextError::Invalid(shorten(traceparent)));
        }
        Ok(Self {
            trace_id,
            span_id,
            flags: flags[0],
            state: tracestate.and_then(clean_state),
        })
    }

    /// A context from its parts (a tracer's span, say); `None` when an id is all zeros. A
    /// `tracestate` that is not printable ASCII or too long is dropped.
    #[must_use]
    pub fn from_parts(
        trace_id: [u8; 16],
        span_id: [u8; 8],
        flags: u8,
        tracestate: Option<&str>,
    ) -> Option<Self> {
        (trace_id != [0; 16] && span_id != [0; 8]).then(|| Self {
            trace_id,
            span_id,
            flags,
            state: tracestate.and_then(clean_state),
        })
    }

    /// A new trace: random trace id and span id, sampled, no `tracestate`.
    #[must_use]
    pub fn new_root() -> Self {
        let mut trace_id = [0; 16];
        while trace_id == [0; 16] {
            trace_id = fastrand::u128(..).to_be_bytes();
        }
        Self {
            trace_id,
            span_id: random_span_id(),
            flags: 0x01,
            state: None,
        }
    }

    /// A new span in this trace: the same trace id, flags and `tracestate`, a new random span id.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: random_span_id(),
            flags: self.flags,
            state: self.state.clone(),
        }
    }

    /// A child of `parent`, or a new trace without one.
    #[must_use]
    pub fn child_of(parent: Option<&Self>) -> Self {
        parent.map_or_else(Self::new_root, Self::child)
    }

    /// The `traceparent` header value: `00-<trace id>-<span id>-<flags>`.
    #[must_use]
    pub fn traceparent(&self) -> String {
        // Written digit by digit: it is made for every event stored and every delivery sent, and
        // `format!` with `{:02x}` per byte cost the SQLite writer 4 % of its time on batch ingest.
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    /// The `tracestate` header value, if any.
    #[must_use]
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The header (or message property) names and values a delivery carries: `traceparent`, and
    /// `tracestate` when there is one. Every channel with headers uses these names.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        std::iter::once((TRACEPARENT, self.traceparent()))
            .chain(self.state.as_deref().map(|s| (TRACESTATE, s.to_owned())))
    }

    /// The trace id.
    #[must_use]
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The span id (the parent of whatever continues from this context).
    #[must_use]
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The trace flags (bit 0: sampled).
    #[must_use]
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the sampled flag is set.
    #[must_use]
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 == 0x01
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent())
            .field("tracestate", &self.state)
            .finish()
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

/// A random non-zero span id.
#[must_use]
pub fn random_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// Lower-case hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends the lower-case hex of `bytes` to `out`.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

fn hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *slot = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn clean_state(state: &str) -> Option<Box<str>> {
    let state = state.trim_matches([' ', '\t']);
    let printable = state.bytes().all(|b| (0x20..=0x7e).contains(&b));
    (!state.is_empty() && printable && state.len() <= MAX_TRACESTATE_LEN).then(|| state.into())
}

fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes_back_the_w3c_example() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(header, Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")).unwrap();
        assert_eq!(ctx.traceparent(), header);
        assert_eq!(ctx.tracestate(), Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert!(ctx.sampled());
        let child = ctx.child();
        assert_eq!(child.trace_id(), ctx.trace_id());
        assert_ne!(child.span_id(), ctx.span_id());
        assert_eq!(child.tracestate(), ctx.tracestate());
    }

    #[test]
    fn refuses_what_w3c_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad, None).is_err(), "{bad}");
        }
        // A later version may append fields.
        let later = TraceContext::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
            None,
        )
        .unwrap();
        assert_eq!(
            later.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        // An unusable tracestate is dropped, the traceparent kept.
        let ctx = TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            Some("a=\u{7f}"),
        )
        .unwrap();
        assert_eq!(ctx.tracestate(), None);
        assert!(!ctx.sampled());
    }

    #[test]
    fn new_roots_differ() {
        let (a, b) = (TraceContext::new_root(), TraceContext::new_root());
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(TraceContext::parse(&a.traceparent(), None).is_ok());
    }
}
