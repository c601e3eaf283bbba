//! Signed download URLs for HTTP distribution served by the embedder (the gateway's
//! `GET /runs/{runId}/artifacts/{path}`): an HMAC-SHA256 over the method, the path, the tenant
//! and the expiry, with the key's id in the URL so keys rotate: a new key signs, old keys
//! verify until they are retired.
//!
//! ```
//! use exportcore_distribution::signed_url::UrlSigner;
//! use exportcore::{TenantId, Timestamp};
//! let signer = UrlSigner::new("k1", b"a secret of at least 32 bytes...!")?;
//! let tenant = TenantId::parse("acme")?;
//! let now = Timestamp::parse("2025-01-01T00:00:00Z").unwrap();
//! let url = signer.sign("GET", "/export-center/runs/r1/artifacts/a.tgz", &tenant, now.plus_days(1))?;
//! let query = url.split_once('?').unwrap().1;
//! signer.verify("GET", "/export-center/runs/r1/artifacts/a.tgz", &tenant, query, now)?;
//! assert!(signer.verify("GET", "/export-center/runs/r1/artifacts/b.tgz", &tenant, query, now).is_err());
//! # Ok::<(), exportcore::ExportError>(())
//! ```

use crate::Secret;
use exportcore::{ExportError, Result, TenantId, Timestamp};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies download URLs with a set of HMAC keys (one active).
#[derive(Clone, Debug)]
pub struct UrlSigner {
    keys: BTreeMap<String, Secret>,
    active: String,
}

fn refused(reason: &str) -> ExportError {
    ExportError::VerificationFailed { path: "signed URL".into(), reason: reason.into() }
}

fn check_key(id: &str, secret: &[u8]) -> Result<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(ExportError::invalid("keyId", format!("{id:?}: letters, digits, - _ . only")));
    }
    if secret.len() < 32 {
        return Err(ExportError::invalid("key", "an HMAC key needs at least 32 bytes"));
    }
    Ok(())
}

impl UrlSigner {
    /// A signer whose active key is `id`.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` for a key id that is not URL-safe or a key under 32 bytes.
    pub fn new(id: &str, secret: &[u8]) -> Result<Self> {
        check_key(id, secret)?;
        let secret = Secret::new(hex::encode(secret));
        Ok(Self { keys: BTreeMap::from([(id.to_owned(), secret)]), active: id.to_owned() })
    }

    /// Adds `id` and makes it the active key; the others still verify until retired.
    ///
    /// # Errors
    /// As [`UrlSigner::new`].
    pub fn rotate(&mut self, id: &str, secret: &[u8]) -> Result<()> {
        check_key(id, secret)?;
        self.keys.insert(id.to_owned(), Secret::new(hex::encode(secret)));
        self.active = id.to_owned();
        Ok(())
    }

    /// Stops accepting URLs signed with `id` (the active key cannot be retired).
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` for the active key.
    pub fn retire(&mut self, id: &str) -> Result<()> {
        if id == self.active {
            return Err(ExportError::invalid("keyId", "the active key cannot be retired: rotate first"));
        }
        self.keys.remove(id);
        Ok(())
    }

    fn mac(&self, kid: &str, method: &str, path: &str, tenant: &TenantId, exp: i64) -> Option<HmacSha256> {
        let secret = hex::decode(self.keys.get(kid)?.expose()).ok()?;
        let mut mac = HmacSha256::new_from_slice(&secret).ok()?;
        mac.update(format!("{method}\n{path}\n{tenant}\n{exp}\n{kid}").as_bytes());
        Some(mac)
    }

    /// `path?tenant=…&exp=…&kid=…&sig=…`, valid for `method` on `path` for `tenant` until `expires`.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` for a path with a query or fragment.
    pub fn sign(&self, method: &str, path: &str, tenant: &TenantId, expires: Timestamp) -> Result<String> {
        if path.contains(['?', '#']) || !path.starts_with('/') {
            return Err(ExportError::invalid("path", "an absolute path without query or fragment"));
        }
        let exp = expires.unix();
        let mac = self
            .mac(&self.active, &method.to_ascii_uppercase(), path, tenant, exp)
            .ok_or_else(|| ExportError::internal("signed url", "the active key is missing"))?;
        let sig = hex::encode(mac.finalize().into_bytes());
        Ok(format!("{path}?tenant={tenant}&exp={exp}&kid={}&sig={sig}", self.active))
    }

    /// Checks a request whose URL names its tenant (`tenant=` in `query`, as [`UrlSigner::sign`]
    /// writes it) and returns that tenant. The tenant is covered by the signature, so changing
    /// it breaks the URL.
    ///
    /// # Errors
    /// As [`UrlSigner::verify`]; also when `tenant` is missing or malformed.
    pub fn verify_request(&self, method: &str, path: &str, query: &str, now: Timestamp) -> Result<TenantId> {
        let tenant = query
            .split('&')
            .find_map(|p| p.strip_prefix("tenant="))
            .ok_or_else(|| refused("the URL names no tenant"))?;
        let tenant = TenantId::parse(tenant).map_err(|_| refused("the URL's tenant is malformed"))?;
        self.verify(method, path, &tenant, query, now)?;
        Ok(tenant)
    }

    /// Checks a request: `query` is the URL's query string. Refused when tampered (any part),
    /// expired at `now`, for another tenant or method, or signed with an unknown or retired
    /// key. The comparison is constant-time.
    ///
    /// # Errors
    /// `ERR_EXPORT_VERIFY_FAILED` saying which.
    pub fn verify(&self, method: &str, path: &str, tenant: &TenantId, query: &str, now: Timestamp) -> Result<()> {
        let mut params: BTreeMap<&str, &str> = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if params.insert(k, v).is_some() {
                return Err(refused("a parameter appears twice"));
            }
        }
        let (Some(exp), Some(kid), Some(sig)) = (params.get("exp"), params.get("kid"), params.get("sig")) else {
            return Err(refused("not a signed URL (exp, kid and sig are required)"));
        };
        let exp: i64 = exp.parse().map_err(|_| refused("exp is not a number"))?;
        let sig = hex::decode(sig).map_err(|_| refused("sig is not hex"))?;
        let mac = self
            .mac(kid, &method.to_ascii_uppercase(), path, tenant, exp)
            .ok_or_else(|| refused("signed with an unknown or retired key"))?;
        mac.verify_slice(&sig)
            .map_err(|_| refused("the signature does not match (tampered, or for another path, method or tenant)"))?;
        if now.unix() >= exp {
            return Err(refused("expired"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn tampered_expired_foreign_and_rotated_urls() {
        let mut s = UrlSigner::new("k1", &[7u8; 32]).unwrap();
        let acme = TenantId::parse("acme").unwrap();
        let other = TenantId::parse("other").unwrap();
        let now = t("2025-01-01T00:00:00Z");
        let url = s.sign("get", "/a/b.tgz", &acme, now.plus_days(1)).unwrap();
        let q = url.split_once('?').unwrap().1.to_owned();
        s.verify("GET", "/a/b.tgz", &acme, &q, now).unwrap();
        let e = |r: Result<()>| r.unwrap_err().to_string();
        assert!(e(s.verify("GET", "/a/b.tgz", &other, &q, now)).contains("does not match"), "other tenant");
        assert!(e(s.verify("HEAD", "/a/b.tgz", &acme, &q, now)).contains("does not match"), "other method");
        assert!(e(s.verify("GET", "/a/c.tgz", &acme, &q, now)).contains("does not match"), "other path");
        let later = q.replace(&format!("exp={}", now.plus_days(1).unix()), &format!("exp={}", now.plus_days(9).unix()));
        assert!(e(s.verify("GET", "/a/b.tgz", &acme, &later, now)).contains("does not match"), "extended expiry");
        let bent = format!("{}{}", &q[..q.len() - 1], if q.ends_with('0') { '1' } else { '0' });
        assert!(e(s.verify("GET", "/a/b.tgz", &acme, &bent, now)).contains("does not match"), "flipped signature");
        assert!(e(s.verify("GET", "/a/b.tgz", &acme, &q, now.plus_days(2))).contains("expired"));
        assert!(e(s.verify("GET", "/a/b.tgz", &acme, "exp=1", now)).contains("required"));
        assert!(e(s.verify("GET", "/a/b.tgz", &acme, &format!("{q}&sig=00"), now)).contains("twice"));
        // Rotation: the new key signs, the old one verifies until retired.
        s.rotate("k2", &[9u8; 32]).unwrap();
        let new_url = s.sign("GET", "/a/b.tgz", &acme, now.plus_days(1)).unwrap();
        assert!(new_url.contains("kid=k2"));
        s.verify("GET", "/a/b.tgz", &acme, &q, now).unwrap();
        assert!(s.retire("k2").is_err(), "the active key stays");
        s.retire("k1").unwrap();
        assert!(e(s.verify("GET", "/a/b.tgz", &acme, &q, now)).contains("retired"));
        s.verify("GET", "/a/b.tgz", &acme, new_url.split_once('?').unwrap().1, now).unwrap();
        assert!(UrlSigner::new("k", b"short").is_err());
        assert!(!format!("{s:?}").contains("0707"), "keys never show");
    }
}
