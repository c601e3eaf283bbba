//! Pushing to an OCI registry by the distribution spec: blob `HEAD` first, cross-repository
//! mount, a monolithic `PUT` for small blobs and for large ones one `PATCH` (with
//! `Content-Range`) streamed from the file, the manifest last, then its tag. Authentication
//! answers the registry's `WWW-Authenticate` challenge: `Basic` with credentials, `Bearer`
//! through the token realm (anonymous or with credentials).
//!
//! Written on `reqwest` rather than `oci-client`: that crate pushes blobs from a `&[u8]` (a
//! 300 MB database would sit in memory), has no blob `HEAD` (a retried push re-uploads
//! everything) and no docker `config.json` lookup.

use crate::{Credentials, DistributionError};
use bytes::Bytes;
use exportcore::Sha256Digest;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// Blobs up to this size go up in one `PUT`; larger ones as one `PATCH` streamed from the file.
pub const MONOLITHIC_MAX: u64 = 8 << 20;

/// Where to push: `oci://HOST[:PORT]/REPO[/…]:TAG`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciTarget {
    /// `host[:port]`.
    pub registry: String,
    /// Repository path (`team/trivy-db`).
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// Plain HTTP (only for a registry explicitly named insecure).
    pub insecure: bool,
}

impl OciTarget {
    /// Parses `oci://HOST[:PORT]/REPO:TAG`.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` naming `field` for anything else.
    pub fn parse(uri: &str, field: &str) -> exportcore::Result<Self> {
        let shown = exportcore::error::redact_urls(uri);
        let bad = |why: &str| {
            exportcore::ExportError::invalid(field, format!("{shown:?}: {why} (oci://HOST[:PORT]/REPO:TAG)"))
        };
        let rest = uri.strip_prefix("oci://").ok_or_else(|| bad("not an oci:// reference"))?;
        let (registry, path) = rest.split_once('/').ok_or_else(|| bad("no repository"))?;
        if registry.contains('@') {
            return Err(bad(
                "credentials are not allowed in the reference (EXPORTCORE_OCI_USERNAME/EXPORTCORE_OCI_PASSWORD or docker login)",
            ));
        }
        if registry.is_empty() {
            return Err(bad("no registry host"));
        }
        let (repository, tag) = path.rsplit_once(':').filter(|(r, _)| !r.contains('@')).ok_or_else(|| bad("no tag"))?;
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            });
        if !repo_ok {
            return Err(bad("a repository is lowercase letters, digits and ._- separated by /"));
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && b"._-".contains(&b)));
        if !tag_ok {
            return Err(bad("a tag is [A-Za-z0-9_][A-Za-z0-9._-]{0,127}"));
        }
        let insecure = is_loopback(registry)
            || std::env::var("EXPORTCORE_INSECURE_REGISTRIES")
                .is_ok_and(|list| list.split(',').any(|r| r.trim() == registry));
        Ok(Self { registry: registry.to_owned(), repository: repository.to_owned(), tag: tag.to_owned(), insecure })
    }

    /// Uses plain HTTP for this registry (as `--insecure-registry` does).
    #[must_use]
    pub fn insecure(mut self, yes: bool) -> Self {
        self.insecure = yes;
        self
    }

    /// The same registry, tag and transport, another repository (the caller checked its name).
    #[must_use]
    pub fn with_repository(&self, repository: String) -> Self {
        Self { repository, ..self.clone() }
    }

    /// `HOST[:PORT]/REPO:TAG`, what `docker pull` and `trivy --db-repository` take.
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

/// A registry on this machine (`localhost`, `127.0.0.0/8`, `[::1]`): plain HTTP, as Docker and
/// go-containerregistry treat it; any other needs to be named insecure explicitly.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// How a push went, blob by blob.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Blobs uploaded.
    pub uploaded: u64,
    /// Blobs the registry already had in the repository.
    pub present: u64,
    /// Blobs mounted from another repository.
    pub mounted: u64,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// A registry session for one repository.
pub(crate) struct Registry {
    http: reqwest::Client,
    /// For token realms: follows no redirect (a realm answering with one is refused).
    token_http: reqwest::Client,
    base: String,
    /// `base` parsed: the origin (scheme, host, port) credentials may be sent to.
    origin: reqwest::Url,
    repository: String,
    registry: String,
    credentials: Option<Credentials>,
    auth: Mutex<Option<HeaderValue>>,
    retries: u32,
    backoff: Duration,
}

fn transient(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
}

/// `key="value"` pairs of a `WWW-Authenticate` header after its scheme.
fn challenge_params(header: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut s = rest.trim();
    while let Some((key, after)) = s.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_owned(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.push((key, value));
        s = next.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

impl Registry {
    pub(crate) fn new(target: &OciTarget, credentials: Option<Credentials>) -> Result<Self, DistributionError> {
        let client = |redirects: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(300))
                .redirect(redirects)
                .build()
                .map_err(|e| DistributionError::fatal(format!("HTTP client: {e}")))
        };
        let (http, token_http) =
            (client(reqwest::redirect::Policy::limited(10))?, client(reqwest::redirect::Policy::none())?);
        let scheme = if target.insecure { "http" } else { "https" };
        let base = format!("{scheme}://{}", target.registry);
        let origin = reqwest::Url::parse(&base)
            .map_err(|e| DistributionError::fatal(format!("registry {}: {e}", target.registry)))?;
        Ok(Self {
            http,
            token_http,
            origin,
            base,
            repository: target.repository.clone(),
            registry: target.registry.clone(),
            credentials,
            auth: Mutex::new(None),
            retries: 4,
            backoff: Duration::from_millis(200),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// An absolute URL for a `Location` header (which may be relative), resolved against the
    /// registry. One that leaves HTTPS for plain HTTP is refused; one on another host is
    /// followed without credentials (see [`Registry::send`]).
    fn absolute(&self, location: &str) -> Result<String, DistributionError> {
        let url = self
            .origin
            .join(location)
            .map_err(|e| DistributionError::fatal(format!("upload Location {location:?}: {e}")))?;
        if self.origin.scheme() == "https" && url.scheme() != "https" {
            return Err(DistributionError::fatal(format!(
                "the registry sent an upload Location that leaves HTTPS ({}://{})",
                url.scheme(),
                url.host_str().unwrap_or_default()
            )));
        }
        Ok(url.into())
    }

    /// Whether `url` is on the registry's own origin (scheme, host and port): only there do
    /// credentials go.
    fn same_origin(&self, url: &reqwest::Url) -> bool {
        url.scheme() == self.origin.scheme()
            && url.host_str() == self.origin.host_str()
            && url.port_or_known_default() == self.origin.port_or_known_default()
    }

    /// Obtains the `Authorization` a challenge asks for.
    async fn authorize(&self, challenge: &str) -> Result<HeaderValue, DistributionError> {
        use base64::Engine as _;
        let (scheme, params) = challenge_params(challenge);
        let basic = self.credentials.as_ref().map(|c| {
            let raw = format!("{}:{}", c.username, c.password.expose());
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
        });
        match scheme.as_str() {
            "basic" => {
                let value = basic.ok_or_else(|| {
                    DistributionError::fatal(format!(
                        "{} asks for credentials (EXPORTCORE_OCI_USERNAME/EXPORTCORE_OCI_PASSWORD or a docker config.json)",
                        self.registry
                    ))
                })?;
                HeaderValue::from_str(&value)
                    .map_err(|_| DistributionError::fatal("credentials are not valid header text"))
            }
            "bearer" => {
                let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
                let realm = get("realm").ok_or_else(|| DistributionError::fatal("Bearer challenge without a realm"))?;
                let realm_url = reqwest::Url::parse(&realm)
                    .map_err(|e| DistributionError::fatal(format!("Bearer challenge: realm {realm:?}: {e}")))?;
                // A realm on plain HTTP only for a registry reached on plain HTTP (loopback or
                // named insecure): credentials never cross the network in the clear because a
                // challenge asked for it.
                if realm_url.scheme() != "https" && self.origin.scheme() == "https" {
                    return Err(DistributionError::fatal(format!(
                        "{} names a token realm on plain HTTP ({}): refused",
                        self.registry,
                        realm_url.host_str().unwrap_or_default()
                    )));
                }
                if !matches!(realm_url.scheme(), "https" | "http") {
                    return Err(DistributionError::fatal(format!("token realm {realm:?}: not an HTTP URL")));
                }
                let mut req = self.token_http.get(realm_url);
                let mut query = Vec::new();
                if let Some(s) = get("service") {
                    query.push(("service", s));
                }
                query.push((
                    "scope",
                    get("scope").unwrap_or_else(|| format!("repository:{}:pull,push", self.repository)),
                ));
                req = req.query(&query);
                if let Some(b) = &basic {
                    req = req.header(AUTHORIZATION, b);
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| DistributionError::transient(format!("token realm: {}", chain(&e.without_url()))))?;
                if !resp.status().is_success() {
                    return Err(DistributionError::fatal(format!("token realm answered {}", resp.status())));
                }
                let body = read_capped(resp, MAX_TOKEN_REPLY, false)
                    .await
                    .map_err(|e| DistributionError::fatal(format!("token realm: {e}")))?;
                let v: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| DistributionError::fatal(format!("token realm: {e}")))?;
                let token = v["token"]
                    .as_str()
                    .or_else(|| v["access_token"].as_str())
                    .ok_or_else(|| DistributionError::fatal("token realm gave no token"))?;
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| DistributionError::fatal("token is not header text"))
            }
            other => Err(DistributionError::fatal(format!("unsupported authentication scheme {other:?}"))),
        }
    }

    /// Sends a request (rebuilt for each attempt), answering an authentication challenge once
    /// and retrying transient failures with backoff.
    async fn send(&self, what: &str, build: impl Fn() -> RequestBuilder) -> Result<Response, DistributionError> {
        let mut attempt = 0;
        let mut challenged = false;
        loop {
            let mut req = build()
                .build()
                .map_err(|e| DistributionError::fatal(format!("{what}: {}", chain(&e.without_url()))))?;
            let ours = self.same_origin(req.url());
            if ours {
                if let Some(a) = self.auth.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                    req.headers_mut().insert(AUTHORIZATION, a);
                }
            }
            let result = self.http.execute(req).await;
            let retry = match result {
                // Only the registry's own challenges are answered: another host (an upload
                // Location elsewhere) never gets the credentials.
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !challenged && ours => {
                    challenged = true;
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                        .ok_or_else(|| DistributionError::fatal(format!("{what}: 401 without a challenge")))?;
                    let value = self.authorize(&challenge).await?;
                    *self.auth.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
                    continue;
                }
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN => {
                    return Err(DistributionError::fatal(format!(
                        "{what}: {} (credentials refused by {})",
                        resp.status(),
                        self.registry
                    )))
                }
                Ok(resp) if transient(resp.status()) => format!("{what}: {}", resp.status()),
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                    format!("{what}: {}", chain(&e.without_url()))
                }
                Err(e) => return Err(DistributionError::fatal(format!("{what}: {}", chain(&e.without_url())))),
            };
            attempt += 1;
            if attempt > self.retries {
                return Err(DistributionError::transient(format!("{retry} (after {attempt} attempts)")));
            }
            tokio::time::sleep(self.backoff * (1 << attempt.min(5))).await;
        }
    }

    async fn expect(resp: Response, want: &[StatusCode], what: &str) -> Result<Response, DistributionError> {
        if want.contains(&resp.status()) {
            return Ok(resp);
        }
        let status = resp.status();
        let body = read_capped(resp, MAX_ERROR_REPLY, true).await.unwrap_or_default();
        let body: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        let msg = format!("{what}: {status}: {}", body.trim());
        Err(if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            DistributionError::fatal(format!("{msg} (credentials refused)"))
        } else {
            DistributionError::fatal(msg)
        })
    }

    /// True when the repository has the blob.
    pub(crate) async fn has_blob(&self, digest: &Sha256Digest) -> Result<bool, DistributionError> {
        let url = self.url(&format!("blobs/sha256:{digest}"));
        let resp = self.send("blob HEAD", || self.http.head(&url)).await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(DistributionError::fatal(format!("blob HEAD: {s}"))),
        }
    }

    /// Mounts the blob from `from` (another repository of the registry); false when the
    /// registry would not.
    pub(crate) async fn mount(&self, digest: &Sha256Digest, from: &str) -> Result<bool, DistributionError> {
        let url = self.url("blobs/uploads/");
        let query = [("mount", format!("sha256:{digest}")), ("from", from.to_owned())];
        let resp = self.send("blob mount", || self.http.post(&url).query(&query).header(CONTENT_LENGTH, 0)).await?;
        Ok(resp.status() == StatusCode::CREATED)
    }

    /// Uploads the file at `path` (whose digest and size are given), in one `PUT` or in chunks.
    pub(crate) async fn upload(&self, path: &Path, digest: &Sha256Digest, size: u64) -> Result<(), DistributionError> {
        let start = self.url("blobs/uploads/");
        let resp = self.send("upload start", || self.http.post(&start).header(CONTENT_LENGTH, 0)).await?;
        let resp = Self::expect(resp, &[StatusCode::ACCEPTED], "upload start").await?;
        let mut location = self.location(&resp)?;
        let with_digest = |loc: &str| {
            let sep = if loc.contains('?') { '&' } else { '?' };
            format!("{loc}{sep}digest=sha256:{digest}")
        };
        let read_err = |e: std::io::Error| DistributionError::fatal(format!("{}: {e}", path.display()));
        let mut file = std::fs::File::open(path).map_err(read_err)?;
        if size <= MONOLITHIC_MAX {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf).map_err(read_err)?;
            let body = Bytes::from(buf);
            let url = with_digest(&location);
            let resp = self
                .send("blob PUT", || {
                    self.http
                        .put(&url)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, body.len())
                        .body(body.clone())
                })
                .await?;
            Self::expect(resp, &[StatusCode::CREATED], "blob PUT").await?;
            return Ok(());
        }
        // Large blobs: the whole file as one streamed PATCH (nothing buffered beyond the
        // reader's chunks), then the closing PUT. A transient failure restarts the blob's
        // upload session, up to the retry budget.
        let mut attempt = 0;
        loop {
            match self.stream_patch(&location, path, size).await {
                Ok(next) => {
                    location = next;
                    break;
                }
                Err(e) if e.transient && attempt < self.retries => {
                    attempt += 1;
                    tokio::time::sleep(self.backoff * (1 << attempt.min(5))).await;
                    let resp = self.send("upload start", || self.http.post(&start).header(CONTENT_LENGTH, 0)).await?;
                    let resp = Self::expect(resp, &[StatusCode::ACCEPTED], "upload start").await?;
                    location = self.location(&resp)?;
                }
                Err(e) => return Err(e),
            }
        }
        drop(file);
        let url = with_digest(&location);
        let resp = self.send("blob PUT", || self.http.put(&url).header(CONTENT_LENGTH, 0)).await?;
        Self::expect(resp, &[StatusCode::CREATED], "blob PUT").await?;
        Ok(())
    }

    /// Uploads bytes held in memory (a config, a signature payload) in one `PUT`.
    pub(crate) async fn upload_bytes(&self, body: Bytes, digest: &Sha256Digest) -> Result<(), DistributionError> {
        let start = self.url("blobs/uploads/");
        let resp = self.send("upload start", || self.http.post(&start).header(CONTENT_LENGTH, 0)).await?;
        let resp = Self::expect(resp, &[StatusCode::ACCEPTED], "upload start").await?;
        let location = self.location(&resp)?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest=sha256:{digest}");
        let resp = self
            .send("blob PUT", || {
                self.http
                    .put(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, body.len())
                    .body(body.clone())
            })
            .await?;
        Self::expect(resp, &[StatusCode::CREATED], "blob PUT").await?;
        Ok(())
    }

    /// One `PATCH` whose body streams the file; the next `Location`.
    async fn stream_patch(&self, location: &str, path: &Path, size: u64) -> Result<String, DistributionError> {
        let f = tokio::fs::File::open(path)
            .await
            .map_err(|e| DistributionError::fatal(format!("{}: {e}", path.display())))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
        let mut req = self
            .http
            .request(Method::PATCH, location)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header("Content-Range", format!("0-{}", size.saturating_sub(1)))
            .header(CONTENT_LENGTH, size)
            .body(body)
            .build()
            .map_err(|e| DistributionError::fatal(format!("blob PATCH: {}", chain(&e.without_url()))))?;
        if self.same_origin(req.url()) {
            if let Some(a) = self.auth.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                req.headers_mut().insert(AUTHORIZATION, a);
            }
        }
        let resp = match self.http.execute(req).await {
            Ok(r) if transient(r.status()) => {
                return Err(DistributionError::transient(format!("blob PATCH: {}", r.status())))
            }
            Ok(r) => r,
            Err(e) => return Err(DistributionError::transient(format!("blob PATCH: {}", chain(&e.without_url())))),
        };
        let resp = Self::expect(resp, &[StatusCode::ACCEPTED, StatusCode::NO_CONTENT], "blob PATCH").await?;
        self.location(&resp)
    }

    fn location(&self, resp: &Response) -> Result<String, DistributionError> {
        resp.headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| DistributionError::fatal("upload answer without a Location"))
            .and_then(|l| self.absolute(l))
    }

    /// Puts a manifest under `reference` (a tag or digest); checks the registry's digest.
    pub(crate) async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &Bytes,
    ) -> Result<(), DistributionError> {
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self
            .send("manifest PUT", || {
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(media_type) {
                    h.insert(CONTENT_TYPE, v);
                }
                self.http.put(&url).headers(h).body(bytes.clone())
            })
            .await?;
        let resp = Self::expect(resp, &[StatusCode::CREATED, StatusCode::OK], "manifest PUT").await?;
        let want = format!("sha256:{}", Sha256Digest::of(bytes));
        if let Some(got) = resp.headers().get("Docker-Content-Digest").and_then(|v| v.to_str().ok()) {
            if got != want {
                return Err(DistributionError::fatal(format!("manifest PUT: registry stored {got}, we sent {want}")));
            }
        }
        Ok(())
    }
}

/// The most of a token realm's reply read (tokens are a few KiB).
const MAX_TOKEN_REPLY: usize = 1 << 20;
/// The most of an error reply's body read (300 characters of it are quoted).
const MAX_ERROR_REPLY: usize = 64 << 10;

/// A response body, at most `cap` bytes: more is an error, or (`truncate`) cut there. A
/// hostile endpoint cannot make the pusher hold gigabytes.
async fn read_capped(mut resp: Response, cap: usize, truncate: bool) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| chain(&e.without_url()))? {
        if out.len() + chunk.len() > cap {
            if truncate {
                out.extend_from_slice(&chunk[..cap - out.len()]);
                break;
            }
            return Err(format!("reply over {cap} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// An error with its causes, `: `-separated (reqwest's own message omits them: "error sending
/// request" says nothing of the refused connection below it).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on a loopback port that answers each connection with the next status of
    /// `statuses` (the last one repeats); returns its address and how many it served.
    fn fake(statuses: Vec<u16>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = std::sync::Arc::clone(&served);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let status = statuses[n.min(statuses.len() - 1)];
                let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        (addr, served)
    }

    /// A server that answers each connection with the next of `replies` (raw HTTP responses,
    /// the last one repeating).
    fn scripted(replies: Vec<String>) -> String {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { break };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut line, mut length) = (String::new(), 0usize);
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                let _ = stream.write_all(replies[n.min(replies.len() - 1)].as_bytes());
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_upload_answered_500_then_201_succeeds() {
        let reply = |status: &str, extra: &str| {
            format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
        };
        let addr = scripted(vec![
            reply("202 Accepted", "Location: /v2/r/blobs/uploads/u1?_state=x\r\n"),
            reply("500 Internal Server Error", ""),
            reply("201 Created", ""),
        ]);
        let body = Bytes::from_static(b"{}");
        registry(&addr).upload_bytes(body.clone(), &Sha256Digest::of(&body)).await.unwrap();
        // Always 500: the budget runs out and the failure says so.
        let addr = scripted(vec![
            reply("202 Accepted", "Location: /v2/r/blobs/uploads/u1\r\n"),
            reply("500 Internal Server Error", ""),
        ]);
        let e = registry(&addr).upload_bytes(body.clone(), &Sha256Digest::of(&body)).await.unwrap_err();
        assert!(e.transient && e.message.contains("blob PUT: 500"), "{}", e.message);
    }

    fn registry(addr: &str) -> Registry {
        let target = OciTarget::parse(&format!("oci://{addr}/r:1"), "t").unwrap();
        let mut r = Registry::new(&target, None).unwrap();
        r.backoff = Duration::from_millis(1);
        r
    }

    /// A registry that wants a bearer token from its realm (on the same port).
    fn token_registry() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        let realm = format!("http://{addr}/token");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut first, mut auth, mut line) = (String::new(), String::new(), String::new());
                reader.read_line(&mut first).unwrap();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    if line.to_ascii_lowercase().starts_with("authorization:") {
                        auth = line.trim().to_owned();
                    }
                    line.clear();
                }
                log.lock().unwrap().push(format!("{} | {auth}", first.trim()));
                let reply = if first.starts_with("GET /token") {
                    let body = r#"{"token":"t0k"}"#;
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                } else if auth == "authorization: Bearer t0k" || auth == "Authorization: Bearer t0k" {
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
                } else {
                    format!("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"reg\",scope=\"repository:r:pull,push\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                };
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn a_bearer_challenge_is_answered_through_the_token_realm() {
        let (addr, seen) = token_registry();
        let r = registry(&addr);
        assert!(r.has_blob(&Sha256Digest::of(b"x")).await.unwrap());
        // The token is kept: a second request goes straight through.
        assert!(r.has_blob(&Sha256Digest::of(b"y")).await.unwrap());
        let log = seen.lock().unwrap().clone();
        assert_eq!(log.len(), 4, "{log:?}");
        assert!(log[1].starts_with("GET /token?service=reg&scope=repository%3Ar%3Apull%2Cpush"), "{log:?}");
        assert!(log[1].ends_with("| "), "anonymous: no credentials sent to the realm: {log:?}");
        assert!(log[2].contains("Bearer t0k") && log[3].contains("Bearer t0k"), "{log:?}");
    }

    /// A server recording the `Authorization` header of each request and answering each
    /// connection with the next of `replies` (the last repeating).
    fn recording(replies: Vec<String>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { break };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut first, mut auth, mut line, mut length) = (String::new(), String::new(), String::new(), 0usize);
                reader.read_line(&mut first).unwrap();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    let lower = line.to_ascii_lowercase();
                    if lower.starts_with("authorization:") {
                        auth = line.trim().to_owned();
                    }
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                log.lock().unwrap().push(format!("{} | {auth}", first.trim()));
                let _ = stream.write_all(replies[n.min(replies.len() - 1)].as_bytes());
            }
        });
        (addr, seen)
    }

    /// An upload `Location` on another origin (here another port) gets the upload, never the
    /// registry's credentials, and its challenge is not answered with them; a realm or
    /// `Location` that leaves HTTPS is refused.
    #[tokio::test]
    async fn credentials_never_leave_the_registry_origin() {
        let reply = |status: &str, extra: &str| {
            format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
        };
        let (elsewhere, elsewhere_seen) =
            recording(vec![reply("401 Unauthorized", "WWW-Authenticate: Basic realm=\"x\"\r\n")]);
        let (addr, seen) = recording(vec![
            reply("401 Unauthorized", "WWW-Authenticate: Basic realm=\"reg\"\r\n"),
            reply("202 Accepted", &format!("Location: http://{elsewhere}/upload/u1\r\n")),
        ]);
        let target = OciTarget::parse(&format!("oci://{addr}/r:1"), "t").unwrap();
        let credentials = Credentials { username: "u".into(), password: crate::Secret("hunter2".into()) };
        let mut r = Registry::new(&target, Some(credentials)).unwrap();
        r.backoff = Duration::from_millis(1);
        let body = Bytes::from_static(b"{}");
        let e = r.upload_bytes(body.clone(), &Sha256Digest::of(&body)).await.unwrap_err();
        assert!(e.message.contains("401"), "{}", e.message);
        let ours = seen.lock().unwrap().clone();
        assert!(ours[1].contains("Basic "), "the registry's own challenge is answered: {ours:?}");
        let theirs = elsewhere_seen.lock().unwrap().clone();
        assert_eq!(theirs.len(), 1, "{theirs:?}");
        assert!(theirs[0].starts_with("PUT /upload/u1?digest=sha256:") && theirs[0].ends_with("| "), "{theirs:?}");
        assert!(!e.message.contains("hunter2"));

        // An HTTPS registry whose realm or Location is plain HTTP: refused before anything is
        // sent there.
        let https = Registry::new(&OciTarget::parse("oci://registry.example/r:1", "t").unwrap(), None).unwrap();
        let e = https.authorize("Bearer realm=\"http://auth.example/token\"").await.unwrap_err();
        assert!(e.message.contains("plain HTTP"), "{}", e.message);
        let e = https.absolute("http://elsewhere.example/upload").unwrap_err();
        assert!(e.message.contains("leaves HTTPS"), "{}", e.message);
        assert_eq!(https.absolute("/v2/r/blobs/uploads/x").unwrap(), "https://registry.example/v2/r/blobs/uploads/x");
    }

    #[tokio::test]
    async fn transient_failures_are_retried_within_the_budget() {
        let d = Sha256Digest::of(b"x");
        let (addr, served) = fake(vec![503, 500, 200]);
        assert!(registry(&addr).has_blob(&d).await.unwrap(), "503, 500, then 200");
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);
        let (addr, served) = fake(vec![503]);
        let e = registry(&addr).has_blob(&d).await.unwrap_err();
        assert!(e.message.contains("after 5 attempts"), "{}", e.message);
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 5);
        let (addr, served) = fake(vec![404]);
        assert!(!registry(&addr).has_blob(&d).await.unwrap());
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1, "a 404 is an answer, not retried");
    }

    #[test]
    fn references_parse_strictly() {
        let t = OciTarget::parse("oci://127.0.0.1:5000/team/trivy-db:2", "d").unwrap();
        assert_eq!(
            (t.registry.as_str(), t.repository.as_str(), t.tag.as_str()),
            ("127.0.0.1:5000", "team/trivy-db", "2")
        );
        assert_eq!(t.reference(), "127.0.0.1:5000/team/trivy-db:2");
        assert!(t.insecure, "loopback registries are plain HTTP");
        assert!(!OciTarget::parse("oci://registry.internal:5000/a:1", "d").unwrap().insecure);
        assert!(OciTarget::parse("oci://[::1]:5000/a:1", "d").unwrap().insecure);
        for bad in [
            "oci://host/Repo:1",
            "oci://host/repo",
            "oci://host:5000",
            "s3://b/k",
            "oci://u:p@host/r:1",
            "oci://host/r:-x",
        ] {
            assert!(OciTarget::parse(bad, "d").is_err(), "{bad}");
        }
        // A password pasted into a reference is refused and never echoed.
        for uri in ["oci://alice:S3cretPW@127.0.0.1:1/x:y", "oci://alice:S3cretPW@host/Bad:y"] {
            let e = OciTarget::parse(uri, "--distribute").unwrap_err().to_string();
            assert!(!e.contains("S3cretPW") && e.contains("***@") && e.contains("--distribute"), "{e}");
        }
        let e = crate::s3::S3Target::parse("s3://AKID:S3cretPW@bucket/p", "URI").unwrap_err().to_string();
        assert!(!e.contains("S3cretPW") && e.contains("credentials are not allowed"), "{e}");
    }

    #[test]
    fn destinations_allow_only_what_the_operator_named() {
        let t = |s: &str| exportcore::TenantId::parse(s).unwrap();
        let (acme, globex) = (t("acme"), t("globex"));
        let any = crate::Destinations::default();
        assert!(any.check(&acme, "file:///anywhere").is_ok());
        let only = crate::Destinations::only(["oci://reg.internal".to_owned(), "file:///srv/exports/".to_owned()]);
        for ok in ["oci://reg.internal/team/db:2", "file:///srv/exports/acme/run-1"] {
            assert!(only.check(&acme, ok).is_ok(), "{ok}");
        }
        for bad in [
            "oci://reg.internal.evil.example/x:1",
            "oci://127.0.0.1:5000/x:1",
            "file:///srv/exports/../../etc",
            "file:///srv/exports/a/./b",
            "file:///srv/exports/%2e%2e/x",
            "file:///tmp/x",
            "s3://bucket/p",
        ] {
            let e = only.check(&acme, bad).unwrap_err();
            assert!(e.to_string().contains("distribution.ref"), "{bad}: {e}");
        }
        assert!(crate::Destinations::only(Vec::new()).check(&acme, "oci://reg.internal/x:1").is_err(), "none allowed");

        // Per tenant: a `TENANT=` prefix is that tenant's alone; `{tenant}` is each tenant's own.
        let per = crate::Destinations::only([
            "acme=s3://exports/acme/".to_owned(),
            "oci://reg.internal/{tenant}/".to_owned(),
            "file:///srv/a=b/".to_owned(),
        ]);
        assert!(per.check(&acme, "s3://exports/acme/nightly").is_ok());
        assert!(per.check(&globex, "s3://exports/acme/nightly").is_err(), "acme's prefix is not globex's");
        assert!(per.check(&acme, "oci://reg.internal/acme/trivy-db:2").is_ok());
        assert!(per.check(&globex, "oci://reg.internal/acme/trivy-db:2").is_err(), "{{tenant}} is the run's tenant");
        assert!(per.check(&globex, "oci://reg.internal/globex/trivy-db:2").is_ok());
        assert!(per.check(&globex, "file:///srv/a=b/x").is_ok(), "an '=' inside a URL is not a tenant");
        let e = per.check(&globex, "s3://exports/acme/x").unwrap_err().to_string();
        assert!(e.contains("for tenant globex") && !e.contains("acme="), "{e}");
    }

    #[test]
    fn challenges_parse() {
        let (s, p) = challenge_params(
            r#"Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull,push".into()));
        let (s, p) = challenge_params(r#"Basic realm="Registry Realm""#);
        assert_eq!((s.as_str(), p.len()), ("basic", 1));
    }
}
