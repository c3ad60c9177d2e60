//! Instance names.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest instance name accepted.
pub const MAX_INSTANCE_NAME_LEN: usize = 64;

/// A validated instance (tenant) name: `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`. Names of this form are
/// valid in every channel's names (routing keys, topics, subjects, queues, channels), so a name that
/// passes here never fails at delivery time. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceName(Arc<str>);

impl InstanceName {
    /// Validates a name.
    ///
    /// # Errors
    /// Returns [`InvalidInstanceName`] saying what is wrong and what is allowed.
    pub fn new(name: &str) -> Result<Self, InvalidInstanceName> {
        let invalid = |reason: &'static str| InvalidInstanceName {
            name: name.to_owned(),
            reason,
        };
        let mut chars = name.chars();
        match chars.next() {
            None => return Err(invalid("it is empty")),
            Some(c) if !c.is_ascii_alphanumeric() => {
                return Err(invalid("it must start with a letter or a digit"));
            }
            Some(_) => {}
        }
        if name.len() > MAX_INSTANCE_NAME_LEN {
            return Err(invalid("it is longer than 64 characters"));
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(invalid(
                "only ASCII letters, digits, `_` and `-` are allowed (no dots, spaces or wildcards)",
            ));
        }
        if crate::rules::SOCKETIO_RESERVED.contains(&name) {
            return Err(invalid(
                "it is reserved by Socket.IO (connect, connect_error, disconnect, disconnecting, newListener, removeListener)",
            ));
        }
        Ok(Self(Arc::from(name)))
    }

    /// The instance name closest to a free-form label (Evolution API's `SERVER_NAME`, such as
    /// `Evolution API` or `evo.prod`): every run of characters a name cannot hold becomes one `-`,
    /// leading and trailing `-`/`_` are dropped and the result is cut to 64 characters
    /// (`Evolution API` → `Evolution-API`). A valid name is kept as is.
    ///
    /// # Errors
    /// [`InvalidInstanceName`] when nothing usable is left (no ASCII letter or digit) or the result
    /// is reserved.
    pub fn from_label(label: &str) -> Result<Self, InvalidInstanceName> {
        if let Ok(name) = Self::new(label) {
            return Ok(name);
        }
        let mut out = String::with_capacity(label.len());
        for c in label.chars() {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                out.push(c);
            } else if !out.ends_with('-') {
                out.push('-');
            }
        }
        let trimmed = out.trim_matches(|c| c == '-' || c == '_');
        let cut: String = trimmed.chars().take(MAX_INSTANCE_NAME_LEN).collect();
        Self::new(cut.trim_end_matches(['-', '_'])).map_err(|e| InvalidInstanceName {
            name: label.to_owned(),
            reason: e.reason,
        })
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::borrow::Borrow<str> for InstanceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for InstanceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for InstanceName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for InstanceName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::new(&name).map_err(serde::de::Error::custom)
    }
}

/// An instance name that is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid instance name `{name}`: {reason}; a name is 1 to 64 characters matching ^[A-Za-z0-9][A-Za-z0-9_-]{{0,63}}$"
)]
pub struct InvalidInstanceName {
    /// The refused name.
    pub name: String,
    /// Why.
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        for ok in ["a", "minha-instancia", "A_1-b", &"x".repeat(64)] {
            assert!(InstanceName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "a.b",
            "a b",
            "a*",
            "a>",
            "ção",
            &"x".repeat(65),
            "connect",
            "disconnect",
        ] {
            let err = InstanceName::new(bad).unwrap_err();
            assert!(err.to_string().contains("invalid instance name"), "{bad}");
        }
    }

    #[test]
    fn labels_become_names() {
        for (label, name) in [
            ("evolution", "evolution"),
            ("Evolution API", "Evolution-API"),
            ("evo.prod.eu-1", "evo-prod-eu-1"),
            ("  Minha  Empresa ", "Minha-Empresa"),
            ("_x.", "x"),
            ("ção 1", "o-1"),
        ] {
            assert_eq!(InstanceName::from_label(label).unwrap().as_str(), name, "{label}");
        }
        assert_eq!(
            InstanceName::from_label(&"a b".repeat(40))
                .unwrap()
                .as_str()
                .len(),
            64
        );
        for bad in ["", "...", "çã", "connect"] {
            assert!(InstanceName::from_label(bad).is_err(), "{bad}");
        }
    }
}
