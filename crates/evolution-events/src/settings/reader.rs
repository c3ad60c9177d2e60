//! The JSON validation reader: reads a settings object field by field and collects every
//! problem, each naming its field.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use super::EventSelection;
use crate::kind::EventKind;
use crate::secret::Sensitive;

/// One problem in a settings document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the field: `webhook.events[2]`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a settings document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<FieldError>);

/// Checks a Standard Webhooks signing secret: `whsec_` followed by base64 of at least 16 bytes.
///
/// # Errors
/// What is wrong, without the secret.
pub fn check_signing_secret(secret: &str) -> Result<(), &'static str> {
    use base64::Engine as _;
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return Err("a signing secret starts with `whsec_` (Standard Webhooks format)");
    };
    match base64::engine::general_purpose::STANDARD.decode(encoded) {
        Ok(key) if key.len() >= 16 => Ok(()),
        Ok(_) => Err("a signing secret holds at least 16 bytes (24 base64 characters after `whsec_`)"),
        Err(_) => Err("the part after `whsec_` is not valid base64"),
    }
}

/// One settings object read by `parse` (fields named under `path`): the settings, or every problem
/// found.
pub(super) fn read<T: Default>(
    value: &Value,
    path: &str,
    parse: fn(&Value, &str, &mut Vec<FieldError>) -> Option<T>,
) -> Result<T, ValidationErrors> {
    let mut errors = Vec::new();
    let parsed = parse(value, path, &mut errors);
    finish(parsed.unwrap_or_default(), errors)
}

/// `Ok(value)`, or every problem found.
pub(super) fn finish<T>(value: T, errors: Vec<FieldError>) -> Result<T, ValidationErrors> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(ValidationErrors(errors))
    }
}

pub(super) fn join(path: &str, field: &str) -> String {
    // An empty key is shown as `""`, so that every error names a field.
    let field = if field.is_empty() { "\"\"" } else { field };
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

pub(super) fn as_object<'a>(
    value: &'a Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a Map<String, Value>> {
    if let Value::Object(obj) = value {
        Some(obj)
    } else {
        errors.push(FieldError {
            field: if path.is_empty() {
                "(body)".to_owned()
            } else {
                path.to_owned()
            },
            message: format!("expected a JSON object, got {}", type_name(value)),
        });
        None
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    Optional,
    Required,
    NonEmpty,
}

/// Reads one JSON object field by field, collecting every problem.
pub(super) struct Reader<'a> {
    obj: &'a Map<String, Value>,
    path: String,
    errors: &'a mut Vec<FieldError>,
    known: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(value: &'a Value, path: &str, errors: &'a mut Vec<FieldError>) -> Option<Self> {
        let obj = as_object(value, path, errors)?;
        Some(Self {
            obj,
            path: path.to_owned(),
            errors,
            known: Vec::new(),
        })
    }

    pub(super) fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: join(&self.path, field),
            message: message.into(),
        });
    }

    fn get(&mut self, field: &'static str, need: Need) -> Option<&'a Value> {
        self.known.push(field);
        match self.obj.get(field) {
            None | Some(Value::Null) if need != Need::Optional => {
                self.error(field, "is required");
                None
            }
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub(super) fn bool(&mut self, field: &'static str, need: Need) -> bool {
        match self.get(field, need) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                let got = type_name(other);
                self.error(field, format!("expected true or false, got {got}"));
                false
            }
        }
    }

    /// An optional boolean under any of `names` (the first is the field's own name, the others
    /// aliases): two of them with different values are an error naming the later one.
    pub(super) fn bool_aliased(&mut self, names: &[&'static str]) -> bool {
        let mut found: Option<(&'static str, bool)> = None;
        for name in names {
            if self.obj.get(*name).is_none_or(Value::is_null) {
                self.known.push(name);
                continue;
            }
            let value = self.bool(name, Need::Optional);
            match found {
                Some((first, earlier)) if earlier != value => {
                    self.error(name, format!("contradicts `{first}`; give one of them"));
                }
                Some(_) => {}
                None => found = Some((name, value)),
            }
        }
        found.is_some_and(|(_, value)| value)
    }

    /// Fields accepted and ignored (Evolution API's stored-row fields that clients send back).
    pub(super) fn ignore(&mut self, fields: &[&'static str]) {
        self.known.extend_from_slice(fields);
    }

    pub(super) fn string(&mut self, field: &'static str, need: Need) -> String {
        match self.get(field, need) {
            None => String::new(),
            Some(Value::String(s)) if need == Need::NonEmpty && s.trim().is_empty() => {
                self.error(field, "cannot be empty");
                String::new()
            }
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                let got = type_name(other);
                self.error(field, format!("expected a string, got {got}"));
                String::new()
            }
        }
    }

    pub(super) fn optional_string(&mut self, field: &'static str) -> Option<String> {
        let present = self.obj.get(field).is_some_and(|v| !v.is_null());
        let s = self.string(field, Need::Optional);
        present.then_some(s)
    }

    pub(super) fn port(&mut self, field: &'static str) -> Option<u16> {
        match self.get(field, Need::Optional) {
            None => None,
            Some(v) => match v.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|p| *p != 0) {
                Some(p) => Some(p),
                None => {
                    self.error(field, "expected a port number from 1 to 65535");
                    None
                }
            },
        }
    }

    pub(super) fn events(&mut self, field: &'static str) -> EventSelection {
        let Some(value) = self.get(field, Need::Optional) else {
            return EventSelection::all();
        };
        let Value::Array(items) = value else {
            let got = type_name(value);
            self.error(field, format!("expected an array of event names, got {got}"));
            return EventSelection::all();
        };
        let mut kinds = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(name) => match EventKind::parse(name) {
                    Ok(kind) => kinds.push(kind),
                    Err(e) => self.error(&format!("{field}[{i}]"), e.to_string()),
                },
                other => {
                    let got = type_name(other);
                    self.error(
                        &format!("{field}[{i}]"),
                        format!("expected an event name, got {got}"),
                    );
                }
            }
        }
        EventSelection::only(kinds)
    }

    pub(super) fn headers(&mut self, field: &'static str) -> BTreeMap<String, Sensitive> {
        let mut out = BTreeMap::new();
        let Some(value) = self.get(field, Need::Optional) else {
            return out;
        };
        let Value::Object(map) = value else {
            let got = type_name(value);
            self.error(
                field,
                format!("expected an object of header names to string values, got {got}"),
            );
            return out;
        };
        for (name, v) in map {
            let path = format!("{field}.{name}");
            if name.is_empty() || !name.bytes().all(is_header_token) {
                self.error(&path, "not a valid HTTP header name");
                continue;
            }
            match v {
                Value::String(s) if s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) => {
                    self.error(&path, "a header value cannot contain CR, LF or NUL");
                }
                Value::String(s) => {
                    out.insert(name.clone(), Sensitive::new(s.clone()));
                }
                other => {
                    let got = type_name(other);
                    self.error(&path, format!("expected a string, got {got}"));
                }
            }
        }
        out
    }

    pub(super) fn secrets(&mut self, field: &'static str) -> Vec<Sensitive> {
        let items: Vec<Value> = match self.get(field, Need::Optional) {
            None => return Vec::new(),
            Some(Value::String(s)) => vec![Value::String(s.clone())],
            Some(Value::Array(a)) => a.clone(),
            Some(other) => {
                let got = type_name(other);
                self.error(
                    field,
                    format!("expected a `whsec_…` string or an array of them, got {got}"),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = if items.len() == 1 {
                field.to_owned()
            } else {
                format!("{field}[{i}]")
            };
            match item.as_str().map(check_signing_secret) {
                Some(Ok(())) => out.push(Sensitive::new(item.as_str().unwrap_or_default())),
                Some(Err(why)) => self.error(&path, why),
                None => self.error(&path, "expected a `whsec_…` string"),
            }
        }
        out
    }

    pub(super) fn finish(self) {
        for key in self.obj.keys() {
            if !self.known.contains(&key.as_str()) {
                let expected = self.known.join(", ");
                self.errors.push(FieldError {
                    field: join(&self.path, key),
                    message: format!("unknown field; expected one of: {expected}"),
                });
            }
        }
    }
}

fn is_header_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
