//! Oversize events by reference (`<CHANNEL>_OVERSIZE=reference`): the small body a channel sends
//! instead of an event larger than its limit, with a signed, expiring URL that fetches the whole
//! event without an apikey (`GET /events/{instance}/{id}/payload?expires=&signature=`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use evolution_events::{Delivery, Destination, NamingProfile, Sensitive, Uuid};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks reference URLs.
#[derive(Clone)]
pub(crate) struct Signer {
    key: Sensitive,
    base: String,
    ttl: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("base", &self.base)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Why a reference URL is refused (each a 403).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// Past its `expires`.
    #[error(
        "this reference URL expired; read the event with an apikey (GET /events/{{instance}}/{{id}}) instead"
    )]
    Expired,
    /// The signature does not match the instance, id and expiry.
    #[error("the signature of this reference URL does not match it (was it changed?)")]
    BadSignature,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Signer {
    /// A signer whose key is derived from the server's API key (one key per deployment, shared by
    /// the replicas; changing the API key invalidates the URLs given out), URLs under `base`,
    /// valid for `ttl`.
    pub(crate) fn new(api_key: &Sensitive, base: String, ttl: Duration) -> Self {
        let derived = match HmacSha256::new_from_slice(api_key.expose().as_bytes()) {
            Ok(mut mac) => {
                mac.update(b"evolution-events reference URLs v1");
                hex::encode(mac.finalize().into_bytes())
            }
            // HMAC takes keys of any length: not reached.
            Err(_) => String::new(),
        };
        Self {
            key: Sensitive::new(derived),
            base: base.trim_end_matches('/').to_owned(),
            ttl,
        }
    }

    fn signature(&self, instance: &str, id: &str, expires: u64) -> String {
        match HmacSha256::new_from_slice(self.key.expose().as_bytes()) {
            Ok(mut mac) => {
                mac.update(format!("{instance}\n{id}\n{expires}").as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
            Err(_) => String::new(),
        }
    }

    /// The URL that fetches event `id` of `instance` until `expires` (Unix seconds).
    pub(crate) fn url(&self, instance: &str, id: Uuid, expires: u64) -> String {
        let signature = self.signature(instance, &id.to_string(), expires);
        format!(
            "{}/events/{instance}/{id}/payload?expires={expires}&signature={signature}",
            self.base
        )
    }

    /// Checks a URL's `expires` and `signature` for event `id` of `instance`.
    pub(crate) fn check(
        &self,
        instance: &str,
        id: &str,
        expires: u64,
        signature: &str,
    ) -> Result<(), Refused> {
        let want = self.signature(instance, id, expires);
        if !crate::instances::constant_time_eq(want.as_bytes(), signature.as_bytes()) {
            return Err(Refused::BadSignature);
        }
        if unix_now() > expires {
            return Err(Refused::Expired);
        }
        Ok(())
    }

    /// The body sent instead of `delivery`'s payload: `{"id","event","instance","sequence",
    /// "truncated": true,"url","expires_at"}`; on SQS with `EVENT_NAMING=evolution-v2`, Evolution
    /// API's body for a payload moved to S3 (its SQS body with `"dataType": "s3"` and
    /// `"data": {"fileUrl"}`).
    pub(crate) fn body(&self, delivery: &Delivery) -> Bytes {
        let e = &delivery.envelope;
        let expires = unix_now().saturating_add(self.ttl.as_secs());
        let url = self.url(e.instance().as_str(), e.id(), expires);
        let event = delivery.profile.payload_event(e.kind());
        let serialized = match (&*delivery.destination, delivery.profile) {
            (Destination::Sqs(target), NamingProfile::EvolutionV2) => serde_json::to_vec(&S3Body {
                event,
                instance: e.instance().as_str(),
                data_type: "s3",
                data: FileUrl { file_url: &url },
                server: target.server.as_deref().unwrap_or("evolution"),
                server_url: e.server_url(),
                date_time: e.date_time().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                sender: e.sender(),
                apikey: None,
                id: e.id(),
                sequence: e.sequence(),
            }),
            _ => serde_json::to_vec(&ReferenceBody {
                id: e.id(),
                event,
                instance: e.instance().as_str(),
                sequence: e.sequence(),
                truncated: true,
                url: &url,
                expires_at: chrono::DateTime::from_timestamp(i64::try_from(expires).unwrap_or(i64::MAX), 0)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            }),
        };
        // Serializing strings, numbers and a UUID cannot fail.
        Bytes::from(serialized.unwrap_or_default())
    }
}

/// The reference body, fields in this order.
#[derive(serde::Serialize)]
struct ReferenceBody<'a> {
    id: Uuid,
    event: &'a str,
    instance: &'a str,
    sequence: u64,
    truncated: bool,
    url: &'a str,
    expires_at: Option<String>,
}

/// Evolution API's SQS body for a payload moved to S3, fields in its order, then ours.
#[derive(serde::Serialize)]
struct S3Body<'a> {
    event: &'a str,
    instance: &'a str,
    #[serde(rename = "dataType")]
    data_type: &'a str,
    data: FileUrl<'a>,
    server: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_url: Option<&'a str>,
    date_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender: Option<&'a str>,
    apikey: Option<&'a str>,
    id: Uuid,
    sequence: u64,
}

#[derive(serde::Serialize)]
struct FileUrl<'a> {
    #[serde(rename = "fileUrl")]
    file_url: &'a str,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_url_checks_only_as_signed_and_until_it_expires() {
        let signer = Signer::new(
            &Sensitive::new("key"),
            "http://h:1/".into(),
            Duration::from_secs(60),
        );
        let id = Uuid::now_v7();
        let later = unix_now() + 60;
        let url = signer.url("inst", id, later);
        assert!(url.starts_with(&format!(
            "http://h:1/events/inst/{id}/payload?expires={later}&signature="
        )));
        let signature = url.rsplit_once('=').unwrap().1;
        let id = id.to_string();
        assert_eq!(signer.check("inst", &id, later, signature), Ok(()));
        assert_eq!(
            signer.check("other", &id, later, signature),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            signer.check("inst", &id, later + 1, signature),
            Err(Refused::BadSignature)
        );
        let past = unix_now() - 1;
        let old = signer.url("inst", Uuid::parse_str(&id).unwrap(), past);
        let old_signature = old.rsplit_once('=').unwrap().1;
        assert_eq!(
            signer.check("inst", &id, past, old_signature),
            Err(Refused::Expired)
        );
        let other_key = Signer::new(
            &Sensitive::new("another"),
            "http://h:1".into(),
            Duration::from_secs(60),
        );
        assert_eq!(
            other_key.check("inst", &id, later, signature),
            Err(Refused::BadSignature)
        );
    }
}
