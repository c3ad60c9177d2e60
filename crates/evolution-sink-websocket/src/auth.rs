//! Who may connect and what each connection may see.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use evolution_events::InstanceName;
use serde_json::Value;

/// What a connection may see, as decided by the [`Authorizer`] from its API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Every instance, and the global stream (the global API key, or a keyless connection from
    /// an allowed host).
    Global,
    /// One instance only (that instance's token).
    Instance(InstanceName),
    /// Nothing: the key is not valid.
    Denied,
}

/// Decides what an API key may see. The server owns the keys (the global key and every
/// instance's token) and compares them in constant time; the sink only asks.
///
/// Any `Fn(&str) -> Access + Send + Sync + 'static` is an authorizer.
pub trait Authorizer: Send + Sync + 'static {
    /// The access `apikey` grants ([`Access::Denied`] when it is not valid).
    fn authorize(&self, apikey: &str) -> Access;
}

impl<F> Authorizer for F
where
    F: Fn(&str) -> Access + Send + Sync + 'static,
{
    fn authorize(&self, apikey: &str) -> Access {
        self(apikey)
    }
}

/// Why a connection was refused. Its `Display` is the `connect_error` message the client gets
/// (`err.message` in socket.io-client); it never contains the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No key, and not from an allowed host.
    #[error(
        "apikey is required: pass it in the handshake (`auth: {{ apikey }}`), as the `apikey` query parameter \
         or as the `apikey` header"
    )]
    MissingKey,
    /// The key is not the global key nor an instance's token.
    #[error("invalid apikey")]
    InvalidKey,
    /// An instance token trying to join another instance's namespace.
    #[error("this apikey belongs to another instance and cannot join the namespace {0}")]
    OtherInstance(String),
    /// A namespace that is not `/{instance name}`.
    #[error("no such namespace {0}: use / or /{{instance name}}")]
    BadNamespace(String),
    /// A `lastEventId` (replay) that is not an event id.
    #[error("{0}")]
    BadLastEventId(String),
}

/// The key a connection presents: the handshake's `auth.apikey`, else the `apikey` query parameter
/// of the Engine.IO request, else its `apikey` header. Blank values count as absent.
pub(crate) fn presented_key<'a>(
    auth: Option<&'a Value>,
    parts: &'a http_parts::Parts,
) -> Option<Cow<'a, str>> {
    if let Some(key) = auth
        .and_then(|a| a.get("apikey"))
        .and_then(Value::as_str)
        .filter(|k| !k.trim().is_empty())
    {
        return Some(Cow::Borrowed(key.trim()));
    }
    if let Some(query) = parts.uri.query()
        && let Some((_, key)) = url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "apikey")
        && !key.trim().is_empty()
    {
        return Some(Cow::Owned(key.trim().to_owned()));
    }
    parts
        .headers
        .get("apikey")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(Cow::Borrowed)
}

/// The peer address the server recorded for the request (`axum::serve` with
/// `into_make_service_with_connect_info::<SocketAddr>()`), if any.
pub(crate) fn peer(parts: &http_parts::Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip().to_canonical())
}

/// The access of a connection: a presented key decides (an invalid key is refused, even from an
/// allowed host); without a key, a connection from an allowed host sees everything, as in
/// Evolution API; any other keyless connection is refused.
pub(crate) fn admit(
    key: Option<&str>,
    peer: Option<IpAddr>,
    allowed_hosts: &[IpAddr],
    authorizer: &dyn Authorizer,
) -> Result<Access, Refusal> {
    match key {
        Some(key) => match authorizer.authorize(key) {
            Access::Denied => Err(Refusal::InvalidKey),
            access => Ok(access),
        },
        None if peer.is_some_and(|ip| allowed_hosts.contains(&ip.to_canonical())) => Ok(Access::Global),
        None => Err(Refusal::MissingKey),
    }
}

/// Whether `access` may join the per-instance namespace `namespace` (`/{instance}`).
pub(crate) fn admit_namespace(access: &Access, namespace: &str) -> Result<(), Refusal> {
    let name = namespace.strip_prefix('/').unwrap_or(namespace);
    if InstanceName::new(name).is_err() {
        return Err(Refusal::BadNamespace(namespace.to_owned()));
    }
    match access {
        Access::Global => Ok(()),
        Access::Instance(own) if own.as_str() == name => Ok(()),
        Access::Instance(_) => Err(Refusal::OtherInstance(namespace.to_owned())),
        Access::Denied => Err(Refusal::InvalidKey),
    }
}

/// `http::request::Parts`, through socketioxide's re-export of `http`.
pub(crate) mod http_parts {
    pub(crate) use axum::http::request::Parts;
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Global => f.write_str("every instance"),
            Self::Instance(name) => write!(f, "instance {name}"),
            Self::Denied => f.write_str("nothing"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn parts(uri: &str, header: Option<&str>) -> http_parts::Parts {
        let mut req = axum::http::Request::builder().uri(uri);
        if let Some(h) = header {
            req = req.header("apikey", h);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn authorizer(key: &str) -> Access {
        match key {
            "global" => Access::Global,
            "token-a" => Access::Instance(InstanceName::new("a").unwrap()),
            _ => Access::Denied,
        }
    }

    #[test]
    fn the_key_comes_from_auth_then_query_then_header() {
        let p = parts("/socket.io/?EIO=4&apikey=from%20query", Some("from-header"));
        let auth = json!({"apikey": "from-auth"});
        assert_eq!(presented_key(Some(&auth), &p).as_deref(), Some("from-auth"));
        assert_eq!(presented_key(Some(&json!({})), &p).as_deref(), Some("from query"));
        let p = parts("/socket.io/?EIO=4", Some("from-header"));
        assert_eq!(presented_key(None, &p).as_deref(), Some("from-header"));
        let p = parts("/socket.io/?EIO=4&apikey=", Some("  "));
        assert_eq!(presented_key(Some(&json!({"apikey": ""})), &p), None);
    }

    #[test]
    fn a_key_decides_and_allowed_hosts_need_none() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let remote: IpAddr = "203.0.113.9".parse().unwrap();
        let allowed = [local];
        assert_eq!(
            admit(Some("global"), Some(remote), &allowed, &authorizer),
            Ok(Access::Global)
        );
        assert_eq!(
            admit(Some("token-a"), Some(local), &allowed, &authorizer),
            Ok(Access::Instance(InstanceName::new("a").unwrap())),
            "an instance token from an allowed host sees only its instance"
        );
        assert_eq!(
            admit(Some("wrong"), Some(local), &allowed, &authorizer),
            Err(Refusal::InvalidKey)
        );
        assert_eq!(
            admit(None, Some(mapped), &allowed, &authorizer),
            Ok(Access::Global)
        );
        assert_eq!(
            admit(None, Some(remote), &allowed, &authorizer),
            Err(Refusal::MissingKey)
        );
        assert_eq!(admit(None, None, &allowed, &authorizer), Err(Refusal::MissingKey));
    }

    #[test]
    fn instance_namespaces_are_per_instance() {
        let a = Access::Instance(InstanceName::new("a").unwrap());
        assert_eq!(admit_namespace(&a, "/a"), Ok(()));
        assert_eq!(admit_namespace(&Access::Global, "/b"), Ok(()));
        assert_eq!(
            admit_namespace(&a, "/b"),
            Err(Refusal::OtherInstance("/b".into()))
        );
        assert!(matches!(
            admit_namespace(&Access::Global, "/a.b"),
            Err(Refusal::BadNamespace(_))
        ));
        assert!(
            !Refusal::MissingKey.to_string().contains("token"),
            "messages never carry keys"
        );
    }
}
