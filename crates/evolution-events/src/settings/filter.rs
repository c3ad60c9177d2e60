//! Payload filters of a destination (`"filter"` in a channel's settings): which events, by the
//! content of their payload, a destination receives.
//!
//! The vocabulary is Hookdeck Outpost's and Convoy's: a JSON object whose keys are paths of the
//! payload (`data.key.fromMe`, or nested objects `{"data": {"key": {"fromMe": …}}}`) and whose
//! values are either a literal (equality) or operators — `$eq`, `$ne`, `$in`, `$nin`,
//! `$startsWith`, `$endsWith`, `$exists` — combined with `$and`, `$or` and `$not`. Keys of one
//! object must all hold (an implicit `$and`).
//!
//! ```json
//! {"data.key.fromMe": false}
//! {"data.key.remoteJid": {"$endsWith": "@g.us"}}
//! {"$or": [{"data.messageType": {"$in": ["conversation", "imageMessage"]}}, {"event": "CALL"}]}
//! ```
//!
//! Paths start at the payload: `id`, `event` (as the naming profile writes it), `instance`,
//! `data…`, `date_time`, `sender`, `server_url`. `sequence` is assigned after routing and `apikey`
//! is a secret: neither can be filtered on. A number in a path indexes an array
//! (`data.messages.0.key.id`).

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use super::reader::FieldError;
use crate::envelope::EventEnvelope;
use crate::naming::NamingProfile;

/// The field operators.
const FIELD_OPERATORS: [&str; 7] = ["$eq", "$ne", "$in", "$nin", "$startsWith", "$endsWith", "$exists"];
/// The operators accepted anywhere, for error messages.
const ALL_OPERATORS: &str = "$eq, $ne, $in, $nin, $startsWith, $endsWith, $exists, $and, $or, $not";
/// Roots of the payload a path may start with.
const ROOTS: [&str; 7] = [
    "id",
    "event",
    "instance",
    "data",
    "date_time",
    "sender",
    "server_url",
];

/// A payload filter, checked when the settings are saved ([`Filter::parse`]) and evaluated on each
/// event ([`Filter::matches`]). Serializes as it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    source: Value,
    root: Node,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Field { path: Vec<String>, op: Op },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    StartsWith(String),
    EndsWith(String),
    Exists(bool),
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.source.serialize(serializer)
    }
}

impl Filter {
    /// Parses a filter; `field` names it in errors (`webhook.filter`), each problem under the path
    /// and operator it concerns (`webhook.filter.data.key.fromMe.$eqq`).
    ///
    /// # Errors
    /// Every problem found: unknown operators, operands of the wrong type, empty objects or
    /// arrays, paths that do not start at a payload field.
    pub fn parse(value: &Value, field: &str) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let root = match value {
            Value::Object(map) if map.is_empty() => {
                errors.push(FieldError {
                    field: field.to_owned(),
                    message: "an empty filter; remove it, or give paths such as {\"data.key.fromMe\": false}"
                        .to_owned(),
                });
                Node::All(Vec::new())
            }
            Value::Object(map) => node(map, &[], field, &mut errors),
            other => {
                errors.push(FieldError {
                    field: field.to_owned(),
                    message: format!(
                        "expected an object of payload paths and operators ({ALL_OPERATORS}), got {}",
                        kind_of(other)
                    ),
                });
                Node::All(Vec::new())
            }
        };
        if errors.is_empty() {
            Ok(Self {
                source: value.clone(),
                root,
            })
        } else {
            Err(errors)
        }
    }

    /// Parses a filter written as JSON text (an environment variable `field`).
    ///
    /// # Errors
    /// Text that is not JSON, or every problem [`Filter::parse`] finds.
    pub fn from_text(text: &str, field: &str) -> Result<Self, Vec<FieldError>> {
        match serde_json::from_str::<Value>(text) {
            Ok(value) => Self::parse(&value, field),
            Err(e) => Err(vec![FieldError {
                field: field.to_owned(),
                message: format!(
                    "not valid JSON ({e}); expected a filter such as {{\"data.key.fromMe\": false}}"
                ),
            }]),
        }
    }

    /// The filter as it was given.
    #[must_use]
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Whether `payload` (see [`Filter::view`]) passes the filter.
    #[must_use]
    pub fn matches(&self, payload: &Value) -> bool {
        self.root.eval(payload)
    }

    /// The payload of `event` as filters see it: the fields of its payload in `profile`, without
    /// `sequence` (not assigned yet) and `apikey` (a secret). Build it once per event and evaluate
    /// every filter on it.
    #[must_use]
    pub fn view(event: &EventEnvelope, profile: NamingProfile) -> Value {
        let mut map = Map::new();
        map.insert("id".into(), Value::String(event.id().to_string()));
        map.insert(
            "event".into(),
            Value::String(profile.payload_event(event.kind()).to_owned()),
        );
        map.insert(
            "instance".into(),
            Value::String(event.instance().as_str().to_owned()),
        );
        map.insert(
            "data".into(),
            serde_json::from_str(event.data().get()).unwrap_or(Value::Null),
        );
        map.insert(
            "date_time".into(),
            Value::String(
                event
                    .date_time()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ),
        );
        let optional = |s: Option<&str>| s.map_or(Value::Null, |s| Value::String(s.to_owned()));
        map.insert("sender".into(), optional(event.sender()));
        map.insert("server_url".into(), optional(event.server_url()));
        Value::Object(map)
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One object of a filter: every key must hold. `base` is the payload path it sits at.
fn node(map: &Map<String, Value>, base: &[String], field: &str, errors: &mut Vec<FieldError>) -> Node {
    let mut all = Vec::with_capacity(map.len());
    for (key, value) in map {
        let here = format!("{field}.{key}");
        let mut error = |message: String| {
            errors.push(FieldError {
                field: here.clone(),
                message,
            });
        };
        match key.as_str() {
            "$and" | "$or" => {
                let Some(items) = value.as_array().filter(|a| !a.is_empty()) else {
                    error(format!(
                        "`{key}` takes a non-empty array of filter objects, got {}",
                        kind_of(value)
                    ));
                    continue;
                };
                let mut nodes = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{here}[{i}]");
                    match item {
                        Value::Object(m) if !m.is_empty() => nodes.push(node(m, base, &at, errors)),
                        other => errors.push(FieldError {
                            field: at,
                            message: format!(
                                "`{key}` takes filter objects such as {{\"data.key.fromMe\": false}}, got {}",
                                if other.is_object() {
                                    "an empty object"
                                } else {
                                    kind_of(other)
                                }
                            ),
                        }),
                    }
                }
                all.push(if key == "$and" {
                    Node::All(nodes)
                } else {
                    Node::Any(nodes)
                });
            }
            "$not" => match value {
                Value::Object(m) if !m.is_empty() => {
                    all.push(Node::Not(Box::new(node(m, base, &here, errors))));
                }
                other => error(format!(
                    "`$not` takes a filter object such as {{\"$endsWith\": \"@g.us\"}}, got {}",
                    if other.is_object() {
                        "an empty object"
                    } else {
                        kind_of(other)
                    }
                )),
            },
            op if op.starts_with('$') => {
                if base.is_empty() {
                    error(format!(
                        "the operator `{op}` needs a path: write {{\"data.some.field\": {{\"{op}\": …}}}}"
                    ));
                } else if !FIELD_OPERATORS.contains(&op) {
                    error(format!(
                        "unknown operator `{op}` on path `{}`; use one of {ALL_OPERATORS}",
                        base.join(".")
                    ));
                } else {
                    match operand(op, value, &base.join(".")) {
                        Ok(op) => all.push(Node::Field {
                            path: base.to_vec(),
                            op,
                        }),
                        Err(message) => error(message),
                    }
                }
            }
            path => {
                let segments: Vec<&str> = path.split('.').collect();
                if segments.iter().any(|s| s.is_empty()) {
                    error(format!(
                        "`{path}` is not a path: segments separated by single dots, such as data.key.fromMe"
                    ));
                    continue;
                }
                if base.is_empty() && !ROOTS.contains(&segments[0]) {
                    error(format!(
                        "the path `{path}` does not start at a payload field; start with one of {}",
                        ROOTS.join(", ")
                    ));
                    continue;
                }
                let mut full = base.to_vec();
                full.extend(segments.iter().map(|s| (*s).to_owned()));
                match value {
                    Value::Object(m) if m.is_empty() => error(format!(
                        "an empty object on path `{}`; to compare with {{}} write {{\"$eq\": {{}}}}",
                        full.join(".")
                    )),
                    Value::Object(m) => all.push(node(m, &full, &here, errors)),
                    literal => all.push(Node::Field {
                        path: full,
                        op: Op::Eq(literal.clone()),
                    }),
                }
            }
        }
    }
    if all.len() == 1 {
        all.pop().unwrap_or(Node::All(Vec::new()))
    } else {
        Node::All(all)
    }
}

/// The operand of a field operator.
fn operand(op: &str, value: &Value, path: &str) -> Result<Op, String> {
    let wrong = |expected: &str| format!("`{op}` on path `{path}` takes {expected}, got {}", kind_of(value));
    Ok(match op {
        "$eq" => Op::Eq(value.clone()),
        "$ne" => Op::Ne(value.clone()),
        "$in" | "$nin" => match value {
            Value::Array(items) if !items.is_empty() => {
                if op == "$in" {
                    Op::In(items.clone())
                } else {
                    Op::Nin(items.clone())
                }
            }
            Value::Array(_) => return Err(format!("`{op}` on path `{path}` takes a non-empty array")),
            _ => return Err(wrong("an array of values")),
        },
        "$startsWith" | "$endsWith" => match value {
            Value::String(s) if op == "$startsWith" => Op::StartsWith(s.clone()),
            Value::String(s) => Op::EndsWith(s.clone()),
            _ => return Err(wrong("a string")),
        },
        "$exists" => match value {
            Value::Bool(b) => Op::Exists(*b),
            _ => return Err(wrong("true or false")),
        },
        _ => return Err(format!("unknown operator `{op}`; use one of {ALL_OPERATORS}")),
    })
}

/// The value at `path` (object keys; a number also indexes an array).
fn lookup<'a>(payload: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut at = payload;
    for segment in path {
        at = match at {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// JSON equality, numbers compared by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        _ => a == b,
    }
}

impl Node {
    fn eval(&self, payload: &Value) -> bool {
        match self {
            Self::All(nodes) => nodes.iter().all(|n| n.eval(payload)),
            Self::Any(nodes) => nodes.iter().any(|n| n.eval(payload)),
            Self::Not(node) => !node.eval(payload),
            Self::Field { path, op } => op.eval(lookup(payload, path)),
        }
    }
}

impl Op {
    fn eval(&self, value: Option<&Value>) -> bool {
        match self {
            Self::Eq(want) => value.is_some_and(|v| same(v, want)),
            Self::Ne(want) => !value.is_some_and(|v| same(v, want)),
            Self::In(set) => value.is_some_and(|v| set.iter().any(|w| same(v, w))),
            Self::Nin(set) => !value.is_some_and(|v| set.iter().any(|w| same(v, w))),
            Self::StartsWith(prefix) => value
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with(prefix.as_str())),
            Self::EndsWith(suffix) => value
                .and_then(Value::as_str)
                .is_some_and(|s| s.ends_with(suffix.as_str())),
            Self::Exists(want) => value.is_some() == *want,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(from_me: bool, jid: &str, kind: &str) -> Value {
        json!({"id": "x", "event": "MESSAGES_UPSERT", "instance": "i", "sender": null,
               "data": {"key": {"fromMe": from_me, "remoteJid": jid}, "messageType": kind, "n": 2,
                        "list": [{"a": 1}]}})
    }

    fn filter(v: Value) -> Filter {
        Filter::parse(&v, "webhook.filter").unwrap()
    }

    #[test]
    fn the_documented_examples() {
        let not_mine = filter(json!({"data.key.fromMe": false}));
        assert!(not_mine.matches(&payload(false, "1@s.whatsapp.net", "conversation")));
        assert!(!not_mine.matches(&payload(true, "1@s.whatsapp.net", "conversation")));
        let groups = filter(json!({"data": {"key": {"remoteJid": {"$endsWith": "@g.us"}}}}));
        assert!(groups.matches(&payload(true, "123@g.us", "conversation")));
        assert!(!groups.matches(&payload(true, "1@s.whatsapp.net", "conversation")));
        let types = filter(json!({"data.messageType": {"$in": ["conversation", "imageMessage"]}}));
        assert!(types.matches(&payload(true, "1@g.us", "imageMessage")));
        assert!(!types.matches(&payload(true, "1@g.us", "audioMessage")));
        assert_eq!(
            serde_json::to_value(&types).unwrap(),
            json!({"data.messageType": {"$in": ["conversation", "imageMessage"]}})
        );
    }

    #[test]
    fn every_operator() {
        let p = payload(false, "55@g.us", "conversation");
        let yes = [
            json!({"data.n": {"$eq": 2.0}}),
            json!({"data.n": {"$ne": 3}}),
            json!({"data.missing": {"$ne": 3}}),
            json!({"data.messageType": {"$nin": ["x"]}}),
            json!({"data.key.remoteJid": {"$startsWith": "55"}}),
            json!({"data.key": {"$exists": true}, "data.nope": {"$exists": false}}),
            json!({"sender": null}),
            json!({"data.list.0.a": 1}),
            json!({"$or": [{"data.n": 5}, {"data.key.fromMe": false}]}),
            json!({"$and": [{"data.n": 2}, {"event": "MESSAGES_UPSERT"}]}),
            json!({"$not": {"data.n": 5}}),
            json!({"data.key.remoteJid": {"$not": {"$endsWith": "@s.whatsapp.net"}}}),
            json!({"data": {"$or": [{"n": 1}, {"key.fromMe": false}]}}),
        ];
        for f in yes {
            assert!(filter(f.clone()).matches(&p), "{f}");
        }
        let no = [
            json!({"data.n": {"$eq": 3}}),
            json!({"data.missing": 3}),
            json!({"data.n": {"$startsWith": "2"}}),
            json!({"data.messageType": {"$in": ["x"]}}),
            json!({"data.n": 2, "data.key.fromMe": true}),
            json!({"$not": {"data.n": 2}}),
        ];
        for f in no {
            assert!(!filter(f.clone()).matches(&p), "{f}");
        }
    }

    #[test]
    fn the_view_is_the_payload_in_the_naming_profile_without_sequence_or_apikey() {
        use crate::{EventKind, InstanceName, Sensitive};
        let data = serde_json::value::RawValue::from_string(r#"{"key":{"fromMe":false}}"#.into()).unwrap();
        let event = EventEnvelope::new(EventKind::MessagesUpsert, InstanceName::new("i").unwrap(), data)
            .with_sender(Some("5511@s.whatsapp.net".into()))
            .with_apikey(Some(Sensitive::new("token-secret")))
            .with_sequence(9);
        let seed = Filter::view(&event, NamingProfile::Seed);
        let v2 = Filter::view(&event, NamingProfile::EvolutionV2);
        assert_eq!(seed["event"], "MESSAGES_UPSERT");
        assert_eq!(v2["event"], "messages.upsert");
        assert!(filter(json!({"event": "messages.upsert", "data.key.fromMe": false})).matches(&v2));
        assert!(!filter(json!({"event": "messages.upsert"})).matches(&seed));
        assert_eq!(seed["sender"], "5511@s.whatsapp.net");
        assert!(seed.get("sequence").is_none() && seed.get("apikey").is_none());
        assert!(
            Filter::parse(&json!({"apikey": "x"}), "f").is_err(),
            "a secret is no path"
        );
    }

    #[test]
    fn problems_name_the_path_and_the_operator() {
        let errors = Filter::parse(
            &json!({
                "data.key.fromMe": {"$eqq": false},
                "data.key.remoteJid": {"$endsWith": 5},
                "data.t": {"$in": "x"},
                "$or": [],
                "$not": 3,
                "$eq": 1,
                "nope.x": 1,
                "data..x": 1,
                "data.y": {}
            }),
            "webhook.filter",
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        for needle in [
            "webhook.filter.data.key.fromMe.$eqq: unknown operator `$eqq` on path `data.key.fromMe`",
            "webhook.filter.data.key.remoteJid.$endsWith: `$endsWith` on path `data.key.remoteJid` takes a string, got a number",
            "webhook.filter.data.t.$in: `$in` on path `data.t` takes an array of values",
            "webhook.filter.$or: `$or` takes a non-empty array",
            "webhook.filter.$not: `$not` takes a filter object",
            "webhook.filter.$eq: the operator `$eq` needs a path",
            "webhook.filter.nope.x: the path `nope.x` does not start at a payload field",
            "webhook.filter.data..x: `data..x` is not a path",
            "webhook.filter.data.y: an empty object on path `data.y`",
        ] {
            assert!(all.contains(needle), "missing {needle} in\n{all}");
        }
        assert_eq!(errors.len(), 9, "{all}");
        assert!(Filter::parse(&json!({}), "f").is_err());
        assert!(Filter::parse(&json!([1]), "f").is_err());
    }
}
