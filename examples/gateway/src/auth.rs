//! Who is calling: the [`Authenticator`] trait, DPoP-bound JWT access tokens
//! ([`DpopAuthenticator`], RFC 9449) and a development mode with static tokens ([`DevTokens`]).
//!
//! JOSE is `jsonwebtoken` (decision 78): ES256 and EdDSA signatures, JWK parsing and RFC 7638
//! thumbprints; the DPoP rules themselves (RFC 9449 §4.3) are checked here.

use async_trait::async_trait;
use axum::http::{HeaderMap, Method};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use exportcore::TenantId;
use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The scope that reads runs, profiles, events, distributions and artifacts.
pub const SCOPE_READ: &str = "export:read";
/// The scope that submits and cancels runs.
pub const SCOPE_WRITE: &str = "export:write";
/// The scope that creates and updates saved profiles.
pub const SCOPE_PROFILE_MANAGE: &str = "export:profile:manage";

/// What an authenticator sees of a request.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    /// The method.
    pub method: &'a Method,
    /// The request's URL without query or fragment, as the client addressed it
    /// (`http://127.0.0.1:8080/export-center/runs`): DPoP's `htu`.
    pub htu: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Subject (`sub`), for logs.
    pub subject: String,
    /// Tenants the caller may act for.
    pub tenants: Vec<TenantId>,
    /// Granted scopes.
    pub scopes: BTreeSet<String>,
}

/// Why a request is not authenticated. The message never contains a token or proof.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

fn deny(msg: impl Into<String>) -> AuthError {
    AuthError(msg.into())
}

/// Authenticates requests. Implement it to plug in your identity provider; the gateway then
/// checks scopes and tenants from the returned [`Principal`].
#[async_trait]
pub trait Authenticator: std::fmt::Debug + Send + Sync + 'static {
    /// The caller of `req`, or why not (answered with 401).
    async fn authenticate(&self, req: &AuthRequest<'_>) -> Result<Principal, AuthError>;
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let Some(v) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(deny(format!("more than one {name} header")));
    }
    v.to_str().map(Some).map_err(|_| deny(format!("{name} is not visible ASCII")))
}

/// `Authorization: <scheme> <credentials>` with a case-insensitive scheme.
fn credentials<'a>(headers: &'a HeaderMap, scheme: &str) -> Result<&'a str, AuthError> {
    let value = header(headers, "authorization")?.ok_or_else(|| deny("no Authorization header"))?;
    let (s, rest) = value.split_once(' ').ok_or_else(|| deny("malformed Authorization header"))?;
    if !s.eq_ignore_ascii_case(scheme) {
        return Err(deny(format!("Authorization scheme must be {scheme}")));
    }
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(deny("empty credentials"));
    }
    Ok(rest)
}

/// Development mode: static bearer tokens, no DPoP. Never on unless configured, and the
/// gateway logs a warning when it is.
#[derive(Clone)]
pub struct DevTokens {
    tokens: HashMap<String, Principal>,
}

impl std::fmt::Debug for DevTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevTokens").field("tokens", &self.tokens.len()).finish()
    }
}

impl DevTokens {
    /// Parses `TOKEN=TENANT[,TENANT]:SCOPE[,SCOPE]` specs (`--dev-token`).
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` naming the malformed spec by position (never the token).
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> exportcore::Result<Self> {
        let mut tokens = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let bad = |why: &str| exportcore::ExportError::invalid(format!("--dev-token[{i}]"), why.to_owned());
            let (token, grant) = spec.as_ref().split_once('=').ok_or_else(|| bad("expected TOKEN=TENANTS:SCOPES"))?;
            let (tenants, scopes) = grant.split_once(':').ok_or_else(|| bad("expected TOKEN=TENANTS:SCOPES"))?;
            if token.len() < 8 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("the token needs at least 8 visible ASCII characters"));
            }
            let tenants = tenants.split(',').map(TenantId::parse).collect::<exportcore::Result<Vec<_>>>()?;
            let scopes: BTreeSet<String> = scopes.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
            if scopes.is_empty() {
                return Err(bad("at least one scope"));
            }
            tokens.insert(token.to_owned(), Principal { subject: format!("dev-token-{i}"), tenants, scopes });
        }
        Ok(Self { tokens })
    }
}

#[async_trait]
impl Authenticator for DevTokens {
    async fn authenticate(&self, req: &AuthRequest<'_>) -> Result<Principal, AuthError> {
        let token = credentials(req.headers, "Bearer")?;
        // Compare every token in constant time so timing says nothing about which is close.
        let mut found = None;
        for (t, p) in &self.tokens {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(p.clone());
            }
        }
        found.ok_or_else(|| deny("unknown development token"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let ha = Sha256::digest(a);
    let hb = Sha256::digest(b);
    ha.iter().zip(hb.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// DPoP-bound JWT access tokens (RFC 9449) checked against a JWKS.
///
/// The token (`Authorization: DPoP <jwt>`) must be signed by a key of the JWKS (ES256 or
/// EdDSA), carry `iss`, `aud`, `exp` (and `nbf` when present) within `leeway`, a
/// space-separated `scope`, a `tenants` array and `cnf.jkt`. The proof (`DPoP: <jwt>`) must be
/// a `dpop+jwt` signed by the public `jwk` in its header, whose RFC 7638 thumbprint is
/// `cnf.jkt`, with `htm`/`htu` equal to the request's method and URL (no query), `iat` within
/// `proof_window` of now, `ath` = base64url(SHA-256(token)) and a `jti` never seen before
/// (replays are refused while their `iat` is in the window).
#[derive(Debug)]
pub struct DpopAuthenticator {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    issuer: String,
    audience: String,
    leeway: Duration,
    proof_window: Duration,
    seen: Mutex<ReplayCache>,
    /// Access tokens already verified, by SHA-256, until their `exp`: a client sends the same
    /// token with every request, so its signature is checked once (the proof's, which is new
    /// every time, is always checked).
    verified: Mutex<HashMap<[u8; 32], (AccessClaims, u64)>>,
}

/// Most verified tokens remembered (the cache is emptied when full).
const VERIFIED_CAPACITY: usize = 10_000;

#[derive(Debug, Default)]
struct ReplayCache {
    /// (proof key thumbprint, jti) → unix second after which it may be forgotten.
    until: HashMap<(String, String), u64>,
    /// Proofs remembered per key: one key (one client) may hold at most a 64th of the cache,
    /// so a single token holder cannot fill it for everyone.
    per_key: HashMap<String, usize>,
    last_prune: u64,
}

impl ReplayCache {
    /// Remembers a proof until `until`; refuses one seen before, and new ones while the cache
    /// (or this key's share of it) is full.
    fn remember(&mut self, key: String, jti: String, until: u64, now: u64) -> Result<(), AuthError> {
        if self.until.len() >= REPLAY_CAPACITY || now > self.last_prune + 10 {
            self.until.retain(|_, u| *u >= now);
            self.per_key.clear();
            for (k, _) in self.until.keys() {
                *self.per_key.entry(k.clone()).or_default() += 1;
            }
            self.last_prune = now;
        }
        if self.until.len() >= REPLAY_CAPACITY {
            return Err(deny("too many DPoP proofs in flight; retry shortly"));
        }
        if self.per_key.get(&key).copied().unwrap_or_default() >= REPLAY_CAPACITY / 64 {
            return Err(deny("too many DPoP proofs from this key in the last minute; retry shortly"));
        }
        match self.until.entry((key.clone(), jti)) {
            std::collections::hash_map::Entry::Occupied(_) => {
                Err(deny("the DPoP proof was replayed (jti seen before)"))
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(until);
                *self.per_key.entry(key).or_default() += 1;
                Ok(())
            }
        }
    }
}

/// Most proofs remembered at once; beyond it new proofs are refused until old ones lapse
/// (a flood cannot make the cache forget a live `jti`).
const REPLAY_CAPACITY: usize = 1_000_000;

#[derive(Clone, Debug, Deserialize)]
struct Cnf {
    jkt: String,
}

#[derive(Clone, Debug, Deserialize)]
struct AccessClaims {
    #[serde(default)]
    exp: u64,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    tenants: Vec<String>,
    cnf: Option<Cnf>,
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: String,
    htm: String,
    htu: String,
    iat: i64,
    ath: Option<String>,
}

fn alg_of(jwk: &Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Some(Algorithm::ES256),
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Some(Algorithm::EdDSA),
        _ => None,
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

impl DpopAuthenticator {
    /// Checks tokens signed by the ES256 (P-256) and EdDSA (Ed25519) keys of `jwks` for
    /// `issuer` and `audience`; other keys are refused here, not at request time.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` for a JWKS without usable keys or with an unsupported key.
    pub fn new(jwks: &JwkSet, issuer: &str, audience: &str) -> exportcore::Result<Self> {
        let mut keys = Vec::new();
        for (i, jwk) in jwks.keys.iter().enumerate() {
            let alg = alg_of(jwk)
                .ok_or_else(|| exportcore::ExportError::invalid(format!("keys[{i}]"), "only P-256 and Ed25519 keys"))?;
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| exportcore::ExportError::invalid(format!("keys[{i}]"), e.to_string()))?;
            keys.push((jwk.common.key_id.clone(), alg, key));
        }
        if keys.is_empty() {
            return Err(exportcore::ExportError::invalid("keys", "the JWKS has no keys"));
        }
        Ok(Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: Duration::from_secs(30),
            proof_window: Duration::from_secs(60),
            seen: Mutex::new(ReplayCache::default()),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// [`DpopAuthenticator::check_token`] through the cache of verified tokens.
    fn token_claims(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now_unix();
        {
            let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((claims, exp)) = cache.get(&key) {
                if now <= *exp {
                    return Ok(claims.clone());
                }
            }
        }
        let claims = self.check_token(token)?;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_CAPACITY {
            cache.clear();
        }
        cache.insert(key, (claims.clone(), claims.exp));
        Ok(claims)
    }

    /// Reads the JWKS from a file.
    ///
    /// # Errors
    /// `ERR_EXPORT_IO` or `ERR_EXPORT_REQUEST_INVALID` naming the file.
    pub fn from_jwks_file(path: &std::path::Path, issuer: &str, audience: &str) -> exportcore::Result<Self> {
        let text = std::fs::read(path).map_err(|e| exportcore::ExportError::io(path, e))?;
        let jwks: JwkSet = serde_json::from_slice(&text)
            .map_err(|e| exportcore::ExportError::invalid(path.display().to_string(), format!("not a JWKS: {e}")))?;
        Self::new(&jwks, issuer, audience)
    }

    fn check_token(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| deny("the access token is not a JWT"))?;
        let candidates: Vec<_> = self
            .keys
            .iter()
            .filter(|(kid, alg, _)| {
                *alg == header.alg && (header.kid.is_none() || kid.as_deref() == header.kid.as_deref())
            })
            .collect();
        if candidates.is_empty() {
            return Err(deny("the access token is signed with an unknown key or algorithm"));
        }
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        v.leeway = self.leeway.as_secs();
        let mut last = None;
        for (_, _, key) in candidates {
            match jsonwebtoken::decode::<AccessClaims>(token, key, &v) {
                Ok(d) => return Ok(d.claims),
                Err(e) => last = Some(e),
            }
        }
        use jsonwebtoken::errors::ErrorKind as K;
        Err(deny(match last.map(|e| e.into_kind()) {
            Some(K::ExpiredSignature) => "the access token has expired",
            Some(K::ImmatureSignature) => "the access token is not valid yet (nbf)",
            Some(K::InvalidIssuer) => "the access token's issuer is not trusted",
            Some(K::InvalidAudience) => "the access token is for another audience",
            Some(K::MissingRequiredClaim(_)) => "the access token lacks exp, iss or aud",
            Some(K::InvalidSignature) => "the access token's signature does not verify",
            _ => "the access token is invalid",
        }))
    }

    fn check_proof(&self, proof: &str, token: &str, req: &AuthRequest<'_>) -> Result<(String, String, u64), AuthError> {
        // The header as JSON first: a private key in `jwk` is refused outright.
        let head_b64 = proof.split('.').next().unwrap_or_default();
        let head: serde_json::Value = URL_SAFE_NO_PAD
            .decode(head_b64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| deny("the DPoP proof is not a JWT"))?;
        if head.get("typ").and_then(|t| t.as_str()) != Some("dpop+jwt") {
            return Err(deny("the DPoP proof's typ must be dpop+jwt"));
        }
        if head.get("jwk").and_then(|j| j.get("d")).is_some() {
            return Err(deny("the DPoP proof's jwk contains a private key"));
        }
        let header = jsonwebtoken::decode_header(proof).map_err(|_| deny("the DPoP proof is not a JWT"))?;
        let jwk = header.jwk.ok_or_else(|| deny("the DPoP proof has no jwk"))?;
        let alg = alg_of(&jwk).ok_or_else(|| deny("the DPoP proof's key must be P-256 or Ed25519"))?;
        if alg != header.alg {
            return Err(deny("the DPoP proof's alg does not match its key"));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| deny("the DPoP proof's jwk is malformed"))?;
        let mut v = Validation::new(alg);
        v.set_required_spec_claims::<&str>(&[]);
        v.validate_exp = false;
        v.validate_aud = false;
        let claims = jsonwebtoken::decode::<ProofClaims>(proof, &key, &v)
            .map_err(|_| deny("the DPoP proof's signature does not verify (or it lacks jti, htm, htu or iat)"))?
            .claims;
        if claims.htm != req.method.as_str() {
            return Err(deny("the DPoP proof's htm does not match the request method"));
        }
        if strip_query(&claims.htu) != req.htu {
            return Err(deny("the DPoP proof's htu does not match the request URL"));
        }
        let now = now_unix() as i64;
        if now.abs_diff(claims.iat) > self.proof_window.as_secs() {
            return Err(deny("the DPoP proof's iat is not within 60 seconds of now"));
        }
        let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
        if claims.ath.as_deref() != Some(ath.as_str()) {
            return Err(deny("the DPoP proof's ath does not match the access token"));
        }
        if claims.jti.is_empty() || claims.jti.len() > 256 {
            return Err(deny("the DPoP proof's jti must be 1 to 256 characters"));
        }
        let thumb = jwk.thumbprint(ThumbprintHash::SHA256).map_err(|_| deny("the DPoP proof's jwk is malformed"))?;
        Ok((thumb, claims.jti, claims.iat.saturating_add_unsigned(self.proof_window.as_secs()).max(0) as u64))
    }
}

/// `url` without `?query` and `#fragment`.
pub fn strip_query(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

#[async_trait]
impl Authenticator for DpopAuthenticator {
    async fn authenticate(&self, req: &AuthRequest<'_>) -> Result<Principal, AuthError> {
        let token = credentials(req.headers, "DPoP")?;
        let proof = header(req.headers, "dpop")?.ok_or_else(|| deny("no DPoP proof header"))?;
        let claims = self.token_claims(token)?;
        let (thumb, jti, until) = self.check_proof(proof, token, req)?;
        match &claims.cnf {
            Some(c) if c.jkt == thumb => {}
            Some(_) => return Err(deny("the DPoP proof is signed by a key the token is not bound to (cnf.jkt)")),
            None => return Err(deny("the access token is not DPoP-bound (no cnf.jkt)")),
        }
        // Only a fully checked proof enters the replay cache: unsigned junk cannot fill it.
        // Keyed by the proof key too: a jti another client chose cannot be burned in advance.
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).remember(thumb, jti, until, now_unix())?;
        let tenants = claims.tenants.iter().filter_map(|t| TenantId::parse(t).ok()).collect();
        let scopes = claims.scope.split_ascii_whitespace().map(str::to_owned).collect();
        Ok(Principal { subject: claims.sub, tenants, scopes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_cache_refuses_replays_and_bounds_each_key() {
        let mut c = ReplayCache::default();
        let (now, until) = (1_000, 1_060);
        c.remember("k1".into(), "j".into(), until, now).unwrap();
        assert!(c.remember("k1".into(), "j".into(), until, now).is_err(), "a replay");
        c.remember("k2".into(), "j".into(), until, now).expect("another key's jti is its own");
        for i in 1..REPLAY_CAPACITY / 64 {
            c.remember("k1".into(), format!("j{i}"), until, now).unwrap();
        }
        let e = c.remember("k1".into(), "one-too-many".into(), until, now).unwrap_err();
        assert!(e.0.contains("from this key"), "{}", e.0);
        c.remember("k3".into(), "j".into(), until, now).expect("other keys are served");
        // Once those proofs lapse, the key may send again.
        c.remember("k1".into(), "later".into(), until + 100, until + 20).expect("after the window");
    }

    #[test]
    fn dev_token_specs() {
        let t =
            DevTokens::parse(&["s3cret-token=acme,beta:export:read,export:write"]).unwrap_or_else(|e| panic!("{e}"));
        let p = t.tokens.get("s3cret-token").unwrap_or_else(|| panic!("parsed"));
        assert_eq!(p.tenants.len(), 2);
        assert!(p.scopes.contains("export:write"));
        for bad in
            ["nocolon=acme", "short=acme:export:read", "s3cret-token=acme:", "s3cret-token=bad tenant:export:read"]
        {
            let e = DevTokens::parse(&[bad]).expect_err(bad);
            assert!(!e.to_string().contains("s3cret"), "never echo the token: {e}");
        }
    }

    #[test]
    fn htu_ignores_query_and_fragment() {
        assert_eq!(strip_query("http://h/a/b?x=1#f"), "http://h/a/b");
        assert_eq!(strip_query("http://h/a"), "http://h/a");
    }
}
