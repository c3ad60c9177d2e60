//! Request authentication: Standard Webhooks signatures and Evolution API's `jwt_key` bearer token.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use evolution_events::Sensitive;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of Standard Webhooks secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// The key bytes of a Standard Webhooks secret: `whsec_<base64>` (or bare base64).
///
/// # Errors
/// When the part after the prefix is not base64 or is empty.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, &'static str> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    match STANDARD.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err("a signing secret is `whsec_` followed by base64 (at least one byte)"),
    }
}

/// The `webhook-signature` header value: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` for
/// each secret, separated by spaces (several during a secret rotation). Secrets that are not valid
/// are skipped (settings validation refuses them before they get here).
#[must_use]
pub fn signature(secrets: &[Sensitive], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let Ok(key) = secret_key(secret.expose()) else {
            continue;
        };
        let Ok(mut mac) = HmacSha256::new_from_slice(&key) else {
            continue;
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        out.push(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())));
    }
    out.join(" ")
}

/// Evolution API's webhook token: an HS256 JWT `{iat, exp: iat + 600, app: "evolution", action:
/// "webhook"}` signed with the `jwt_key` header's value.
#[must_use]
pub fn jwt(key: &str, now: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({"iat": now, "exp": now + 600, "app": "evolution", "action": "webhook"});
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    // HMAC accepts keys of any length.
    let signature = match HmacSha256::new_from_slice(key.as_bytes()) {
        Ok(mut mac) => {
            mac.update(signing_input.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    format!("{signing_input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vector() {
        // The reference vector of the Standard Webhooks specification and its libraries.
        let secrets = [Sensitive::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")];
        let body = br#"{"test": 2432232314}"#;
        let sig = signature(&secrets, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let secrets = [
            Sensitive::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Sensitive::new("whsec_c2Vjb25k"),
        ];
        let sig = signature(&secrets, "id", 1, b"{}");
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
        assert!(secret_key("whsec_!!").is_err());
        assert!(secret_key("whsec_").is_err());
        assert_eq!(secret_key("whsec_c2Vjb25k").unwrap(), b"second");
    }

    #[test]
    fn jwt_is_hs256_with_evolution_claims() {
        let token = jwt("my-key", 1_700_000_000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"iat": 1_700_000_000, "exp": 1_700_000_600, "app": "evolution", "action": "webhook"})
        );
        let mut mac = HmacSha256::new_from_slice(b"my-key").unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            .unwrap();
    }
}
