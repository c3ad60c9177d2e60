//! A string that never prints.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What [`Sensitive`] prints instead of its value.
pub const REDACTED: &str = "**REDACTED**";

/// `text` with every secret of 3 characters or more replaced by [`REDACTED`], longest first (a
/// shorter "secret" would mangle the message more than it hides). For error messages that may
/// quote a URL, a driver's error or a server's answer.
#[must_use]
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut secrets: Vec<&str> = secrets.iter().copied().filter(|s| s.len() > 2).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for secret in secrets {
        if out.contains(secret) {
            out = out.replace(secret, REDACTED);
        }
    }
    out
}

/// A secret string (a password, a token, a header value). `Debug` and `Display` print
/// [`REDACTED`]; the value is reachable only through [`Sensitive::expose`]. It serializes in clear so
/// that it can be stored: use [`Sensitive::redacted`] before showing it to anyone.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sensitive(String);

impl Sensitive {
    /// Wraps a secret.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy whose value is [`REDACTED`] (or empty, if this one is empty), for API responses.
    #[must_use]
    pub fn redacted(&self) -> Self {
        if self.0.is_empty() {
            Self::default()
        } else {
            Self(REDACTED.to_owned())
        }
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Sensitive {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Sensitive {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_replaces_secrets_longest_first_and_skips_tiny_ones() {
        assert_eq!(scrub("x hunter2 y", &["hunter2"]), format!("x {REDACTED} y"));
        assert_eq!(
            scrub("user:pass-word@host", &["pass", "pass-word"]),
            format!("user:{REDACTED}@host")
        );
        assert_eq!(scrub("a b", &["", "b"]), "a b", "too short to be a secret");
    }

    #[test]
    fn never_prints() {
        let s = Sensitive::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "**REDACTED** **REDACTED**");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(s.redacted().expose(), REDACTED);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"hunter2\"");
    }
}
