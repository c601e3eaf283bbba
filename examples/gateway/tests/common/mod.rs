//! Shared by the gateway's tests: a gateway on a loopback port, JWT/DPoP minting written
//! independently of the gateway's JOSE crate, and a small HTTP client.
#![allow(dead_code, unreachable_pub)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use exportcore::engine::{Exporter, WorkerHandle};
use exportcore_gateway::auth::Authenticator;
use exportcore_gateway::{Gateway, GatewayConfig};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A signing key for tokens and proofs.
pub enum Key {
    Es(p256::ecdsa::SigningKey),
    Ed(ed25519_dalek::SigningKey),
}

impl Key {
    pub fn es(seed: u8) -> Self {
        let mut b = [7u8; 32];
        b[0] = seed;
        Key::Es(p256::ecdsa::SigningKey::from_bytes(&b.into()).expect("p256 key"))
    }
    pub fn ed(seed: u8) -> Self {
        Key::Ed(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }
    pub fn alg(&self) -> &'static str {
        match self {
            Key::Es(_) => "ES256",
            Key::Ed(_) => "EdDSA",
        }
    }
    pub fn public_jwk(&self) -> Value {
        match self {
            Key::Es(k) => {
                let p = k.verifying_key().to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-256", "x": b64(p.x().expect("x")), "y": b64(p.y().expect("y"))})
            }
            Key::Ed(k) => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.verifying_key().as_bytes())}),
        }
    }
    /// RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
    pub fn thumbprint(&self) -> String {
        let j = self.public_jwk();
        let canon = match self {
            Key::Es(_) => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                j["x"].as_str().unwrap(),
                j["y"].as_str().unwrap()
            ),
            Key::Ed(_) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, j["x"].as_str().unwrap()),
        };
        b64(&Sha256::digest(canon.as_bytes()))
    }
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = match self {
            Key::Es(k) => {
                use p256::ecdsa::signature::Signer;
                let s: p256::ecdsa::Signature = k.sign(input.as_bytes());
                s.to_bytes().to_vec()
            }
            Key::Ed(k) => {
                use ed25519_dalek::Signer;
                k.sign(input.as_bytes()).to_bytes().to_vec()
            }
        };
        format!("{input}.{}", b64(&sig))
    }
}

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "export-center";

/// The token issuer (an ES256 key `k1` and an EdDSA key `k2`) and a client's DPoP key.
pub struct Idp {
    pub es: Key,
    pub ed: Key,
    pub client: Key,
    jti: AtomicU64,
}

impl Default for Idp {
    fn default() -> Self {
        Self { es: Key::es(1), ed: Key::ed(2), client: Key::es(3), jti: AtomicU64::new(0) }
    }
}

impl Idp {
    pub fn jwks(&self) -> Value {
        let mut a = self.es.public_jwk();
        a["kid"] = json!("k1");
        a["alg"] = json!("ES256");
        let mut b = self.ed.public_jwk();
        b["kid"] = json!("k2");
        b["alg"] = json!("EdDSA");
        json!({"keys": [a, b]})
    }
    pub fn authenticator(&self) -> Arc<dyn Authenticator> {
        let jwks = serde_json::from_value(self.jwks()).expect("jwks");
        Arc::new(exportcore_gateway::auth::DpopAuthenticator::new(&jwks, ISSUER, AUDIENCE).expect("authenticator"))
    }
    /// Standard claims bound to the client key; `patch` overrides or removes (null) members.
    pub fn claims(&self, tenants: &[&str], scope: &str, patch: Value) -> Value {
        let mut c = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now() + 600, "iat": now(),
            "scope": scope, "tenants": tenants, "cnf": {"jkt": self.client.thumbprint()},
        });
        if let Value::Object(p) = patch {
            for (k, v) in p {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(&k);
                } else {
                    c[k] = v;
                }
            }
        }
        c
    }
    pub fn token(&self, claims: &Value) -> String {
        self.es.sign(&json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"}), claims)
    }
    pub fn token_ed(&self, claims: &Value) -> String {
        self.ed.sign(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k2"}), claims)
    }
    pub fn next_jti(&self) -> String {
        format!("jti-{}-{}", now(), self.jti.fetch_add(1, Ordering::Relaxed))
    }
    /// A DPoP proof by `key` for `method url`, `iat` shifted by `skew` seconds.
    pub fn proof_with(&self, key: &Key, method: &str, url: &str, token: &str, skew: i64, jti: &str) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": key.public_jwk()});
        let claims = json!({"jti": jti, "htm": method, "htu": url, "iat": now() + skew,
            "ath": b64(&Sha256::digest(token.as_bytes()))});
        key.sign(&header, &claims)
    }
    pub fn proof(&self, method: &str, url: &str, token: &str) -> String {
        self.proof_with(&self.client, method, url, token, 0, &self.next_jti())
    }
}

/// A gateway serving on 127.0.0.1 in this process.
pub struct Server {
    pub base: String,
    pub exporter: Exporter,
    pub gateway: Gateway,
    pub sink: exportcore::InMemorySink,
    workers: Option<WorkerHandle>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(auth: Arc<dyn Authenticator>, cfg: GatewayConfig, workers: bool) -> Self {
        let sink = exportcore::InMemorySink::new();
        let evidence = concat!(env!("CARGO_MANIFEST_DIR"), "/../../samples/evidence");
        let exporter = Exporter::builder()
            .profiles(exportcore_json::profiles())
            .sink(sink.clone())
            .evidence(exportcore::DirEvidence::new(evidence).expect("samples"))
            .poll_interval(std::time::Duration::from_millis(20))
            .distributor(Arc::new(exportcore_gateway::HttpDistributor))
            .build()
            .expect("exporter");
        let gateway = Gateway::new(exporter.clone(), auth, cfg).expect("gateway");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let router = gateway.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let workers = workers.then(|| exporter.start());
        Self { base, exporter, gateway, sink, workers, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/export-center{path}", self.base)
    }

    pub async fn stop(mut self) {
        self.gateway.drain();
        if let Some(w) = self.workers.take() {
            w.shutdown().await;
        }
        self.task.abort();
    }
}

/// A reply, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Asserts an error reply of the contract's shape with `status` and `code`.
    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", String::from_utf8_lossy(&self.body));
        let j = self.json();
        assert_eq!(j["code"], code, "{j}");
        assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
        assert!(j["details"].is_array(), "{j}");
        assert_eq!(j["traceId"].as_str().map(str::len), Some(32), "{j}");
        assert!(j["timestamp"].as_str().is_some_and(|t| exportcore::Timestamp::parse(t).is_ok()), "{j}");
        assert_eq!(self.header("x-trace-id"), j["traceId"].as_str(), "trace id in the header too");
        j
    }
}

pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap_or_default();
    Reply { status, headers, body }
}

/// Requests with development tokens.
pub struct Dev<'a> {
    pub http: reqwest::Client,
    pub server: &'a Server,
    pub token: &'a str,
    pub tenant: &'a str,
}

impl Dev<'_> {
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.server.url(path))
            .header("authorization", format!("Bearer {}", self.token))
            .header("x-stellaops-tenant", self.tenant)
    }
    pub async fn get(&self, path: &str) -> Reply {
        send(self.req(reqwest::Method::GET, path)).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        send(self.req(reqwest::Method::POST, path).header("content-type", "application/json").body(body.to_string()))
            .await
    }
    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        send(self.req(reqwest::Method::PUT, path).header("content-type", "application/json").body(body.to_string()))
            .await
    }
    /// Submits a run and waits for its terminal status.
    pub async fn run_to_end(&self, body: &Value) -> Value {
        let r = self.post("/runs", body).await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let id = r.json()["runId"].as_str().expect("runId").to_owned();
        for _ in 0..500 {
            let v = self.get(&format!("/runs/{id}")).await.json();
            if ["succeeded", "failed", "expired"].contains(&v["status"].as_str().unwrap_or("")) {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("run {id} did not finish");
    }
}

/// Development tokens: `tok-acme` (acme, every scope), `tok-beta` (beta, every scope),
/// `tok-read` (acme, read only), `tok-both` (acme and beta, read).
pub fn dev_auth() -> Arc<dyn Authenticator> {
    Arc::new(
        exportcore_gateway::auth::DevTokens::parse(&[
            "tok-acme-1=acme:export:read,export:write,export:profile:manage",
            "tok-beta-1=beta:export:read,export:write,export:profile:manage",
            "tok-read-1=acme:export:read",
            "tok-both-1=acme,beta:export:read",
        ])
        .expect("dev tokens"),
    )
}

/// Server-Sent Events read from a response until it ends: (id, event, data) triples and the
/// number of comment lines.
pub async fn read_sse(resp: reqwest::Response) -> (Vec<(u64, String, Value)>, usize) {
    use futures::StreamExt;
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    let mut comments = 0;
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let (mut id, mut ev, mut data) = (0, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().expect("id");
                } else if let Some(v) = line.strip_prefix("event:") {
                    ev = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                } else if line.starts_with(':') {
                    comments += 1;
                }
            }
            if !data.is_empty() {
                events.push((id, ev, serde_json::from_str(&data).expect("event data")));
            }
        }
    }
    (events, comments)
}
