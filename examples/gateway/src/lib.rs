//! The export center's HTTP gateway: the seed's contract (`/export-center/...`) on axum, in a
//! [`Router`] an embedder mounts next to its own routes, and [`serve`] for a process of its own
//! (`exportctl serve` is that binary: it registers every built-in profile and calls [`serve`]).
//!
//! - Authentication behind [`auth::Authenticator`]: DPoP-bound JWTs checked against a JWKS
//!   ([`auth::DpopAuthenticator`], RFC 9449) or, for development only, static bearer tokens
//!   ([`auth::DevTokens`], logged as a warning).
//! - Tenancy: `X-StellaOps-Tenant` (alias `X-Stella-Tenant`) must be one of the token's
//!   tenants; another tenant's runs, profiles, events, distributions and artifacts are 404.
//! - Saved profiles (`export-profile::<tenant>::<name>`, immutable revisions) in the run store.
//! - Runs, their SSE event stream with `Last-Event-ID` resume, signed downloads with `Range`,
//!   `ETag` and `Digest`, distribution records with reader URLs.
//! - Limits: request body (refused before it is read), per-tenant rate limit with quota
//!   headers, open streams per tenant, request timeout; every error is
//!   `{code, message, details, traceId, timestamp}`.
//! - `GET /export-center/openapi.json` (OpenAPI 3.1, generated with utoipa), `/healthz`,
//!   `/readyz`, `/metrics` (Prometheus) and a browser page at `/export-center/ui/`.
//!
//! ```no_run
//! use exportcore::engine::Exporter;
//! use exportcore_gateway::{auth::DevTokens, Gateway, GatewayConfig};
//! use std::sync::Arc;
//! # async fn demo(exporter: Exporter) -> Result<(), Box<dyn std::error::Error>> {
//! let auth = DevTokens::parse(&["dev-token-1=acme:export:read,export:write"])?;
//! let gateway = Gateway::new(exporter, Arc::new(auth), GatewayConfig::default())?;
//! let app = axum::Router::new().merge(gateway.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod error;
pub mod limits;
mod openapi;
mod routes;
mod serve;
mod sse;
pub(crate) mod trace;
pub mod views;

pub use error::{ApiError, ErrorBody};
pub use limits::RateLimit;
pub use serve::{serve, shutdown_signal, ServeOptions, DRAIN_TIMEOUT, HEADER_READ_TIMEOUT, MAX_CONNECTIONS};

use axum::response::{IntoResponse, Response};
use axum::Router;
use exportcore::engine::Exporter;
use exportcore_distribution::signed_url::UrlSigner;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// The base path of every route.
pub const BASE: &str = "/export-center";

/// Gateway settings; the defaults follow the seed (256 KiB bodies, 60 s SSE idle timeout,
/// 15 s heartbeats).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Largest request body in bytes (256 KiB).
    pub max_body_bytes: u64,
    /// Requests per tenant per window.
    pub rate_limit: RateLimit,
    /// Open event streams per tenant (256).
    pub max_streams_per_tenant: usize,
    /// Time to produce a reply's head (30 s); streams and downloads then flow without it.
    pub request_timeout: Duration,
    /// Requests being answered at once (until their reply's head), across tenants (1024).
    /// Beyond it a request is answered 503 at once instead of queueing: an overloaded server
    /// sheds load in bounded memory rather than piling up connections.
    pub max_in_flight: usize,
    /// SSE heartbeat comment interval (15 s).
    pub sse_heartbeat: Duration,
    /// An event stream with no event for this long is closed (60 s); the client resumes with
    /// `Last-Event-ID`.
    pub sse_idle_timeout: Duration,
    /// Lifetime of signed download URLs (1 hour, never past the run's expiry).
    pub url_ttl: Duration,
    /// The scheme and authority clients use (`https://exports.example`), for DPoP `htu`
    /// checks behind a proxy; by default `http://` + the request's `Host`.
    pub public_origin: Option<String>,
    /// The signer of download URLs; by default a random key made at start (URLs then do not
    /// survive a restart or work across nodes: configure one key for a fleet).
    pub url_signer: Option<UrlSigner>,
    /// Object storage settings for presigning `s3://` distributions.
    pub s3: exportcore_distribution::s3::S3Config,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            rate_limit: RateLimit::default(),
            max_streams_per_tenant: 256,
            request_timeout: Duration::from_secs(30),
            max_in_flight: 1024,
            sse_heartbeat: Duration::from_secs(15),
            sse_idle_timeout: Duration::from_secs(60),
            url_ttl: Duration::from_secs(3600),
            public_origin: None,
            url_signer: None,
            s3: Default::default(),
        }
    }
}

impl GatewayConfig {
    /// Object storage settings for presigning `s3://` distributions: the same the object
    /// distributor uploads with (`S3Config::from_env()` in `exportctl serve`).
    #[must_use]
    pub fn s3(mut self, s3: exportcore_distribution::s3::S3Config) -> Self {
        self.s3 = s3;
        self
    }
    /// Sets [`GatewayConfig::rate_limit`].
    pub fn rate_limit(mut self, requests: u32, window: Duration) -> Self {
        self.rate_limit = RateLimit { requests, window };
        self
    }
    /// Sets [`GatewayConfig::max_streams_per_tenant`].
    pub fn max_streams_per_tenant(mut self, n: usize) -> Self {
        self.max_streams_per_tenant = n;
        self
    }
    /// Sets [`GatewayConfig::sse_heartbeat`] and [`GatewayConfig::sse_idle_timeout`].
    pub fn sse_timing(mut self, heartbeat: Duration, idle: Duration) -> Self {
        self.sse_heartbeat = heartbeat;
        self.sse_idle_timeout = idle;
        self
    }
    /// Sets [`GatewayConfig::request_timeout`].
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }
    /// Sets [`GatewayConfig::max_in_flight`].
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
    /// Sets [`GatewayConfig::public_origin`].
    pub fn public_origin(mut self, origin: impl Into<String>) -> Self {
        self.public_origin = Some(origin.into());
        self
    }
    /// Sets [`GatewayConfig::url_signer`].
    pub fn url_signer(mut self, signer: UrlSigner) -> Self {
        self.url_signer = Some(signer);
        self
    }
}

pub(crate) struct State {
    pub(crate) exporter: Exporter,
    pub(crate) auth: Arc<dyn auth::Authenticator>,
    pub(crate) cfg: GatewayConfig,
    pub(crate) signer: UrlSigner,
    pub(crate) limiter: limits::RateLimiter,
    pub(crate) streams: Arc<limits::TenantSlots>,
    pub(crate) replies: limits::ReplyCache,
    pub(crate) draining: AtomicBool,
    pub(crate) in_flight: std::sync::atomic::AtomicUsize,
    /// Requests in flight per tenant.
    pub(crate) tenant_in_flight: Arc<limits::TenantSlots>,
    /// Download bodies open per tenant.
    pub(crate) downloads: Arc<limits::TenantSlots>,
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// The gateway: build it once, mount [`Gateway::router`], call [`Gateway::drain`] on shutdown.
#[derive(Clone)]
pub struct Gateway {
    state: Arc<State>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("cfg", &self.state.cfg).field("auth", &self.state.auth).finish()
    }
}

impl Gateway {
    /// A gateway over `exporter` (whose workers the caller starts) with `auth`.
    ///
    /// # Errors
    /// `ERR_EXPORT_INTERNAL` when no random URL-signing key can be made.
    pub fn new(exporter: Exporter, auth: Arc<dyn auth::Authenticator>, cfg: GatewayConfig) -> exportcore::Result<Self> {
        let signer = match &cfg.url_signer {
            Some(s) => s.clone(),
            None => UrlSigner::new("boot", &random_key())?,
        };
        let (closing, _) = tokio::sync::watch::channel(false);
        Ok(Self {
            state: Arc::new(State {
                exporter,
                auth,
                limiter: limits::RateLimiter::new(cfg.rate_limit),
                signer,
                cfg,
                streams: limits::TenantSlots::new("gateway_sse_streams_open"),
                replies: limits::ReplyCache::default(),
                draining: AtomicBool::new(false),
                in_flight: std::sync::atomic::AtomicUsize::new(0),
                tenant_in_flight: limits::TenantSlots::new("gateway_requests_in_flight"),
                downloads: limits::TenantSlots::new("gateway_downloads_open"),
                closing,
                metrics: metrics_handle(),
            }),
        })
    }

    /// The routes, under [`BASE`].
    pub fn router(&self) -> Router {
        routes::router(self.state.clone())
    }

    /// Starts draining: `/readyz` answers 503 and every open event stream ends.
    pub fn drain(&self) {
        self.state.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        self.state.closing.send_replace(true);
    }

    /// The OpenAPI 3.1 document.
    pub fn openapi_json() -> String {
        openapi::document()
    }
}

/// `distribution.type = http`: the run's outputs are served by the gateway's download route;
/// the record lists them (path, digest, size), and `GET /distributions/{id}` answers signed
/// URLs for them. Register it on the [`Exporter`] the gateway serves.
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpDistributor;

#[async_trait::async_trait]
impl exportcore::run::Distributor for HttpDistributor {
    fn handles(&self, kind: exportcore::DistributionType) -> bool {
        kind == exportcore::DistributionType::Http
    }

    async fn distribute(
        &self,
        ctx: exportcore::run::DistributeContext<'_>,
    ) -> exportcore::Result<exportcore::DistributionRecord> {
        let run = ctx.run;
        let artifacts = run
            .outputs
            .iter()
            .map(|o| {
                exportcore::DistributedArtifact::new(
                    o.path.clone(),
                    o.sha256,
                    o.size,
                    format!("{BASE}/runs/{}/artifacts/{}", run.run_id, o.path),
                )
            })
            .collect();
        let reference = ctx.distribution.reference.clone().unwrap_or_else(|| "gateway".to_owned());
        Ok(exportcore::DistributionRecord::succeeded(
            run.run_id.clone(),
            run.tenant.clone(),
            exportcore::DistributionType::Http,
            reference,
            artifacts,
            exportcore::Timestamp::now(),
        ))
    }
}

/// 32 bytes from the operating system's random source (through uuid v4's generator).
fn random_key() -> Vec<u8> {
    let mut k = Vec::with_capacity(32);
    k.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    k.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    k
}

/// The process-wide Prometheus recorder: installed once, shared by every gateway. `None` when
/// the embedder installed another recorder (then `/metrics` is 501).
fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
                ])
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            // Histogram samples wait in buckets until upkeep folds them in: without it they
            // would pile up between scrapes.
            let h = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    h.run_upkeep();
                })
                .ok()?;
            Some(handle)
        })
        .clone()
}

/// `application/json; charset=utf-8` of `value`.
pub(crate) fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(axum::http::header::CONTENT_TYPE, "application/json; charset=utf-8")], body).into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The wire spelling of a serde enum (`"manifest"`, `"succeeded"`).
pub(crate) fn wire<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
