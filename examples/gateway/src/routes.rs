//! The routes, the middleware around them and the caller checks they share.

use crate::auth::{AuthRequest, Principal, SCOPE_PROFILE_MANAGE, SCOPE_READ, SCOPE_WRITE};
use crate::error::{ApiError, ErrorBody};
use crate::limits::{Quota, StoredReply};
use crate::views::*;
use crate::{json, State, BASE};
use axum::body::Body;
use axum::extract::{FromRequestParts, OriginalUri, Path, Query, Request, State as St};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use exportcore::engine::Submission;
use exportcore::saved::{ProfileSpec, SavedProfile};
use exportcore::store::RunFilter;
use exportcore::{ArtifactPath, ExportError, Run, RunId, RunRequest, RunStatus, TenantId, Timestamp};
use futures::StreamExt;
use sha2::Digest;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub(crate) fn router(st: Arc<State>) -> Router {
    Router::new()
        .route("/export-center/profiles", get(list_profiles).post(create_profile))
        .route("/export-center/profiles/{id}", get(get_profile).put(update_profile))
        .route("/export-center/runs", get(list_runs).post(submit_run))
        .route("/export-center/runs/{run_id}", get(get_run))
        .route("/export-center/runs/{run_id}/cancel", post(cancel_run))
        .route("/export-center/runs/{run_id}/events", get(crate::sse::events))
        .route("/export-center/runs/{run_id}/artifacts/{*path}", get(download))
        .route("/export-center/distributions/{id}", get(get_distribution))
        .route("/export-center/openapi.json", get(openapi))
        .route("/export-center/healthz", get(healthz))
        .route("/export-center/readyz", get(readyz))
        .route("/export-center/metrics", get(prometheus))
        .route("/export-center/ui/", get(ui))
        .fallback(unknown_route)
        .with_state(st.clone())
        .layer(axum::middleware::from_fn_with_state(st, middleware))
}

/// The route template of `path`, for metric labels (ids never become label values).
fn route_label(method: &Method, path: &str) -> &'static str {
    let rest = match path.strip_prefix(BASE) {
        Some(r) => r,
        None => return "other",
    };
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        (_, ["profiles"]) => "/profiles",
        (_, ["profiles", _]) => "/profiles/{id}",
        (_, ["runs"]) => "/runs",
        (_, ["runs", _]) => "/runs/{runId}",
        (_, ["runs", _, "cancel"]) => "/runs/{runId}/cancel",
        (_, ["runs", _, "events"]) => "/runs/{runId}/events",
        (_, ["runs", _, "artifacts", ..]) => "/runs/{runId}/artifacts/{path}",
        (_, ["distributions", _]) => "/distributions/{id}",
        (_, ["openapi.json"]) => "/openapi.json",
        (_, ["healthz"]) => "/healthz",
        (_, ["readyz"]) => "/readyz",
        (_, ["metrics"]) => "/metrics",
        (_, ["ui", ..]) => "/ui/",
        _ => "other",
    }
}

/// Trace id, body limit (a declared length over the limit is refused before a byte is read;
/// a chunked body is cut at the limit), reply timeout, `X-Trace-Id`, request metrics.
async fn middleware(St(st): St<Arc<State>>, req: Request, next: Next) -> Response {
    let trace = crate::trace::new_id();
    let started = Instant::now();
    let method = req.method().clone();
    let label = route_label(&method, req.uri().path());
    let mut resp = crate::trace::scope(trace.clone(), async {
        let _slot = match InFlight::enter(&st) {
            Some(s) => s,
            None => {
                metrics::counter!("gateway_requests_shed_total").increment(1);
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ERR_EXPORT_UNAVAILABLE",
                    format!("the server is busy ({} requests in flight)", st.cfg.max_in_flight),
                );
                e.retry_after = Some(1);
                return e.into_response();
            }
        };
        let max = st.cfg.max_body_bytes;
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            let mut r = ApiError::too_large(max).into_response();
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        let (parts, body) = req.into_parts();
        let limited = Body::new(http_body_util::Limited::new(body, max as usize));
        let req = Request::from_parts(parts, limited);
        match tokio::time::timeout(st.cfg.request_timeout, next.run(req)).await {
            Ok(r) => r,
            Err(_) => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ERR_EXPORT_TIMEOUT",
                    format!("no reply within {} s", st.cfg.request_timeout.as_secs()),
                );
                e.retry_after = Some(1);
                e.into_response()
            }
        }
    })
    .await;
    if let Ok(v) = HeaderValue::from_str(&trace) {
        resp.headers_mut().insert("x-trace-id", v);
    }
    let status = resp.status().as_u16().to_string();
    // A bounded label set: any other token a client sends as a method counts as "other".
    let method = match method.as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS") => m,
        _ => "other",
    };
    metrics::histogram!("http_server_request_duration_seconds", "method" => method.to_string(), "route" => label, "status" => status.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("http_server_requests_total", "method" => method.to_string(), "route" => label, "status" => status)
        .increment(1);
    resp
}

/// One request being answered, counted in [`State::in_flight`] until dropped.
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn enter(st: &'a State) -> Option<Self> {
        let n = st.in_flight.fetch_add(1, Ordering::AcqRel);
        if n >= st.cfg.max_in_flight {
            st.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(st))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What every authenticated route needs of the request.
pub(crate) struct Call {
    method: Method,
    htu_path: String,
    pub(crate) headers: HeaderMap,
}

impl<S: Send + Sync> FromRequestParts<S> for Call {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let uri = parts.extensions.get::<OriginalUri>().map(|o| o.0.clone()).unwrap_or_else(|| parts.uri.clone());
        Ok(Call { method: parts.method.clone(), htu_path: uri.path().to_owned(), headers: parts.headers.clone() })
    }
}

/// An authorized caller.
pub(crate) struct Caller {
    pub(crate) tenant: TenantId,
    pub(crate) project: Option<String>,
    #[allow(dead_code)] // kept for embedders' logging hooks
    pub(crate) principal: Principal,
    quota: Quota,
    _slot: crate::limits::TenantSlot,
}

impl Caller {
    /// `reply` (or the error) with the quota headers.
    pub(crate) fn finish(&self, reply: Result<Response, ApiError>) -> Response {
        let mut r = reply.unwrap_or_else(IntoResponse::into_response);
        add_quota(r.headers_mut(), &self.quota);
        r
    }
}

fn add_quota(h: &mut HeaderMap, q: &Quota) {
    h.insert("x-stella-quota-limit", HeaderValue::from(q.limit));
    h.insert("x-stella-quota-remaining", HeaderValue::from(q.remaining));
    h.insert("x-stella-quota-reset", HeaderValue::from(q.reset_secs));
}

fn tenant_header(headers: &HeaderMap) -> Result<TenantId, ApiError> {
    // Every copy of either header: a second copy (a proxy appending its own) must agree too.
    let values: Vec<_> = ["x-stellaops-tenant", "x-stella-tenant"].iter().flat_map(|n| headers.get_all(*n)).collect();
    let first =
        values.first().ok_or_else(|| ApiError::invalid("X-StellaOps-Tenant", "the tenant header is required"))?;
    if values.iter().any(|v| v != first) {
        return Err(ApiError::invalid("X-StellaOps-Tenant", "X-StellaOps-Tenant and X-Stella-Tenant disagree"));
    }
    let s = first.to_str().map_err(|_| ApiError::invalid("X-StellaOps-Tenant", "not ASCII"))?;
    TenantId::parse(s).map_err(|e| {
        let mut a = ApiError::from(e);
        a.details = vec![serde_json::json!({"field": "X-StellaOps-Tenant"})];
        a
    })
}

impl State {
    pub(crate) fn htu(&self, call: &Call) -> String {
        let origin = match &self.cfg.public_origin {
            Some(o) => o.trim_end_matches('/').to_owned(),
            None => {
                let host = call.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
                format!("http://{host}")
            }
        };
        format!("{origin}{}", call.htu_path)
    }

    /// Authenticates (401), checks the tenant header against the token's tenants and the scope
    /// (403), and counts the request against the tenant's quota (429).
    pub(crate) async fn authorize(&self, call: &Call, scope: &str) -> Result<Caller, Response> {
        let htu = self.htu(call);
        let req = AuthRequest { method: &call.method, htu: &htu, headers: &call.headers };
        let principal = self.auth.authenticate(&req).await.map_err(|e| {
            metrics::counter!("gateway_auth_failures_total").increment(1);
            ApiError::unauthenticated(e.0, "DPoP algs=\"ES256 EdDSA\"").into_response()
        })?;
        let tenant = tenant_header(&call.headers).map_err(IntoResponse::into_response)?;
        if !principal.tenants.contains(&tenant) {
            return Err(ApiError::forbidden(format!("the token does not grant tenant {tenant}")).into_response());
        }
        if !principal.scopes.contains(scope) {
            return Err(ApiError::forbidden(format!("the token lacks scope {scope}")).into_response());
        }
        let project = match call.headers.get("x-stellaops-project") {
            None => None,
            Some(v) => {
                let p = v
                    .to_str()
                    .ok()
                    .filter(|p| !p.is_empty() && p.len() <= 128 && p.bytes().all(|b| b.is_ascii_graphic()));
                Some(
                    p.ok_or_else(|| {
                        ApiError::invalid("X-StellaOps-Project", "1 to 128 visible ASCII characters").into_response()
                    })?
                    .to_owned(),
                )
            }
        };
        let quota = self.limiter.check(&tenant).map_err(|q| {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "ERR_EXPORT_RATE_LIMIT",
                format!("tenant {tenant} is over its quota of {} requests", q.limit),
            );
            e.retry_after = Some(q.reset_secs.max(1));
            let mut r = e.into_response();
            add_quota(r.headers_mut(), &q);
            r
        })?;
        // One tenant may hold at most half the server's in-flight requests (a tenant sending
        // bodies slowly cannot starve the others).
        let slot = self.tenant_in_flight.acquire(&tenant, (self.cfg.max_in_flight / 2).max(1)).ok_or_else(|| {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "ERR_EXPORT_RATE_LIMIT",
                format!("tenant {tenant} has too many requests in flight"),
            );
            e.retry_after = Some(1);
            e.into_response()
        })?;
        Ok(Caller { tenant, project, principal, quota, _slot: slot })
    }

    /// The signed download URL of `path` in `run`, valid until `ttl` from now or the run's
    /// expiry, whichever comes first.
    pub(crate) fn download_url(
        &self,
        run_id: &RunId,
        tenant: &TenantId,
        path: &str,
        expires: Option<Timestamp>,
    ) -> (String, Option<String>) {
        let now = Timestamp::now();
        let ttl = i64::try_from(self.cfg.url_ttl.as_secs()).unwrap_or(3600);
        let mut until = Timestamp::from_unix(now.unix().saturating_add(ttl)).unwrap_or(now);
        if let Some(e) = expires {
            until = until.min(e);
        }
        let p = format!("{BASE}/runs/{run_id}/artifacts/{path}");
        match self.signer.sign("GET", &p, tenant, until) {
            Ok(url) => (url, Some(until.to_string())),
            Err(_) => (p, None),
        }
    }

    pub(crate) fn run_view(&self, run: &Run) -> RunView {
        let links = links(&run.run_id);
        let problems = |v: &[exportcore::RunError]| {
            v.iter()
                .map(|e| ProblemView {
                    code: e.code.clone(),
                    message: crate::error::run_error_message(&e.code, &e.message),
                })
                .collect()
        };
        let outputs = if run.status == RunStatus::Succeeded {
            run.outputs
                .iter()
                .map(|o| {
                    let (url, expires_at) =
                        self.download_url(&run.run_id, &run.tenant, o.path.as_str(), run.expires_at);
                    OutputView {
                        kind: crate::wire(&o.kind),
                        format: o.format.clone(),
                        url,
                        sha256: o.sha256.to_hex(),
                        expires_at,
                        path: o.path.to_string(),
                        size: o.size,
                        media_type: o.media_type.clone(),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        RunView {
            run_id: run.run_id.to_string(),
            status: run.status.to_string(),
            profile_id: run.saved_profile.as_ref().map(|s| s.id.clone()).unwrap_or_else(|| run.profile_id.to_string()),
            kind: run.profile_id.to_string(),
            profile_revision: run.saved_profile.as_ref().map(|s| s.revision),
            project: run.project.clone(),
            submitted_at: run.submitted_at.to_string(),
            started_at: run.started_at.map(|t| t.to_string()),
            finished_at: run.finished_at.map(|t| t.to_string()),
            expires_at: run.expires_at.map(|t| t.to_string()),
            progress: ProgressView {
                percent: run.progress.percent,
                items_completed: run.progress.items_completed,
                items_total: run.progress.items_total,
            },
            outputs,
            errors: problems(&run.errors),
            warnings: problems(&run.warnings),
            attempts: run.attempts,
            links,
            distributions: None,
        }
    }
}

fn links(run_id: &RunId) -> Links {
    Links { status: format!("{BASE}/runs/{run_id}"), events: format!("{BASE}/runs/{run_id}/events") }
}

macro_rules! authorize {
    ($st:expr, $call:expr, $scope:expr) => {
        match $st.authorize(&$call, $scope).await {
            Ok(c) => c,
            Err(r) => return r,
        }
    };
}

fn parse_run_id(s: &str) -> Result<RunId, ApiError> {
    // A malformed id is "not found" too: it names no run of this tenant.
    RunId::parse(s).map_err(|_| ApiError::not_found(format!("run {s}")))
}

fn not_found_as_404(what: String) -> impl FnOnce(ExportError) -> ApiError {
    move |e| match e {
        ExportError::NotFound { .. } => ApiError::not_found(what),
        other => other.into(),
    }
}

/// The body as JSON of `T`: `Content-Type` must be JSON; too long is 413 (the middleware
/// already cut it at the limit); field errors name the JSON path.
async fn read_json<T: serde::de::DeserializeOwned>(
    st: &State,
    headers: &HeaderMap,
    body: Body,
) -> Result<(T, [u8; 32]), ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::invalid("Content-Type", format!("expected application/json, got {ct:?}")));
    }
    let max = st.cfg.max_body_bytes as usize;
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(e) => {
            let too_long = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            return Err(if too_long {
                ApiError::too_large(max as u64)
            } else {
                ApiError::invalid("", "the body could not be read")
            });
        }
    };
    let hash: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ApiError::invalid(field, e.into_inner().to_string())
    })?;
    Ok((value, hash))
}

/// Replays the first reply of an `Idempotency-Key`, refuses its reuse with another body, or
/// runs `f` and remembers its reply.
async fn idempotent<F, Fut>(
    st: &State,
    caller: &Caller,
    route: &str,
    headers: &HeaderMap,
    hash: [u8; 32],
    f: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let key = match headers.get("idempotency-key") {
        None => return f().await,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 256 => k.to_owned(),
            _ => return Err(ApiError::invalid("Idempotency-Key", "1 to 256 visible ASCII characters")),
        },
    };
    // The project narrows what a request means: the same key and body under another project
    // is another request.
    let route = match &caller.project {
        Some(p) => format!("{route} project={p}"),
        None => route.to_owned(),
    };
    let slot = (caller.tenant.clone(), route, key.clone());
    if let Some(prev) = st.replies.get(&slot) {
        if prev.body_hash != hash {
            return Err(ExportError::Conflict {
                what: "Idempotency-Key".into(),
                reason: format!("key {key:?} was used with a different request"),
            }
            .into());
        }
        let mut r = (StatusCode::from_u16(prev.status).unwrap_or(StatusCode::OK), prev.body).into_response();
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
        if let Some(l) = prev.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            h.insert(header::LOCATION, l);
        }
        return Ok(r);
    }
    let resp = f().await?;
    if resp.status().is_success() {
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|_| ApiError::invalid("", "reply"))?;
        let location = parts.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        st.replies
            .put(slot, StoredReply { body_hash: hash, status: parts.status.as_u16(), body: bytes.clone(), location });
        return Ok(Response::from_parts(parts, Body::from(bytes)));
    }
    Ok(resp)
}

fn saved_view(p: &SavedProfile) -> SavedView {
    let s = &p.spec;
    SavedView {
        id: p.id.clone(),
        revision: p.revision,
        created_at: p.created_at.to_string(),
        name: s.name.clone(),
        kind: s.kind.clone(),
        variant: s.variant.clone(),
        include: s.include.iter().map(ToString::to_string).collect(),
        formats: s.formats.iter().map(ToString::to_string).collect(),
        distribution: s.distribution.as_ref().and_then(|d| serde_json::to_value(d).ok()),
        retention_days: s.retention_days,
        selectors: serde_json::to_value(&s.selectors).unwrap_or_default(),
        description: s.description.clone(),
    }
}

fn with_status(status: StatusCode, mut r: Response) -> Response {
    *r.status_mut() = status;
    r
}

fn with_location(mut r: Response, location: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[utoipa::path(get, path = "/export-center/profiles", tag = "profiles",
    params(("X-StellaOps-Tenant" = String, Header, description = "Tenant (X-Stella-Tenant accepted)")),
    responses((status = 200, body = ProfileList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("dpop" = ["export:read"])))]
pub(crate) async fn list_profiles(St(st): St<Arc<State>>, call: Call) -> Response {
    let c = authorize!(st, call, SCOPE_READ);
    let r = async {
        let builtin = st
            .exporter
            .profiles()
            .descriptors()
            .into_iter()
            .map(|d| {
                let (kind, variant) = d.id.as_str().split_once(':').unwrap_or((d.id.as_str(), ""));
                BuiltinView {
                    id: d.id.to_string(),
                    kind: kind.into(),
                    variant: variant.into(),
                    description: d.description,
                }
            })
            .collect();
        let saved = st.exporter.saved_profiles(&c.tenant).await?.iter().map(saved_view).collect();
        Ok(json(&ProfileList { builtin, saved }))
    }
    .await;
    c.finish(r)
}

#[utoipa::path(post, path = "/export-center/profiles", tag = "profiles", request_body = ProfileSpecDoc,
    params(("X-StellaOps-Tenant" = String, Header, description = "Tenant"), ("Idempotency-Key" = Option<String>, Header, description = "Replays the first reply")),
    responses((status = 201, body = SavedView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("dpop" = ["export:profile:manage"])))]
pub(crate) async fn create_profile(St(st): St<Arc<State>>, call: Call, body: Body) -> Response {
    let c = authorize!(st, call, SCOPE_PROFILE_MANAGE);
    let r = async {
        let (spec, hash) = read_json::<ProfileSpec>(&st, &call.headers, body).await?;
        idempotent(&st, &c, "POST /profiles", &call.headers, hash, || async {
            let saved = st.exporter.create_profile(&c.tenant, spec).await?;
            let loc = format!("{BASE}/profiles/{}", saved.id);
            Ok(with_location(with_status(StatusCode::CREATED, json(&saved_view(&saved))), &loc))
        })
        .await
    }
    .await;
    c.finish(r)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevisionQuery {
    revision: Option<u32>,
}

#[utoipa::path(get, path = "/export-center/profiles/{id}", tag = "profiles",
    params(("id" = String, Path, description = "export-profile::<tenant>::<name>"), ("revision" = Option<u32>, Query, description = "A revision (default: the latest)"),
        ("X-StellaOps-Tenant" = String, Header, description = "Tenant")),
    responses((status = 200, body = SavedView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("dpop" = ["export:read"])))]
pub(crate) async fn get_profile(
    St(st): St<Arc<State>>,
    call: Call,
    Path(id): Path<String>,
    q: Result<Query<RevisionQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let c = authorize!(st, call, SCOPE_READ);
    let r = async {
        let Query(q) = q.map_err(|e| ApiError::invalid("revision", e.body_text()))?;
        let name = exportcore::saved::name_in(&c.tenant, &id)
            .ok_or_else(|| ApiError::from(ExportError::ProfileNotFound { profile: id.clone() }))?;
        let p = st.exporter.store().get_profile(&c.tenant, &name, q.revision).await?;
        Ok(json(&saved_view(&p)))
    }
    .await;
    c.finish(r)
}

#[utoipa::path(put, path = "/export-center/profiles/{id}", tag = "profiles", request_body = ProfileSpecDoc,
    params(("id" = String, Path, description = "export-profile::<tenant>::<name>"), ("X-StellaOps-Tenant" = String, Header, description = "Tenant")),
    responses((status = 200, description = "The new revision", body = SavedView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("dpop" = ["export:profile:manage"])))]
pub(crate) async fn update_profile(St(st): St<Arc<State>>, call: Call, Path(id): Path<String>, body: Body) -> Response {
    let c = authorize!(st, call, SCOPE_PROFILE_MANAGE);
    let r = async {
        let (spec, _) = read_json::<ProfileSpec>(&st, &call.headers, body).await?;
        let saved = st.exporter.update_profile(&c.tenant, &id, spec).await?;
        Ok(json(&saved_view(&saved)))
    }
    .await;
    c.finish(r)
}

#[utoipa::path(post, path = "/export-center/runs", tag = "runs", request_body = RunRequestDoc,
    params(("X-StellaOps-Tenant" = String, Header, description = "Tenant"), ("X-StellaOps-Project" = Option<String>, Header, description = "Project"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first reply; another body with the same key is 409")),
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 501, body = ErrorBody)),
    security(("dpop" = ["export:write"])))]
pub(crate) async fn submit_run(St(st): St<Arc<State>>, call: Call, body: Body) -> Response {
    let c = authorize!(st, call, SCOPE_WRITE);
    let r = async {
        if st.draining.load(Ordering::SeqCst) {
            let mut e =
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ERR_EXPORT_UNAVAILABLE", "the server is shutting down");
            e.retry_after = Some(5);
            return Err(e);
        }
        let (request, hash) = read_json::<RunRequest>(&st, &call.headers, body).await?;
        idempotent(&st, &c, "POST /runs", &call.headers, hash, || async {
            let mut sub = Submission::new(c.tenant.clone(), request);
            if let Some(p) = &c.project {
                sub = sub.project(p.clone());
            }
            if let Some(k) = call.headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
                sub = sub.idempotency_key(k);
            }
            let s = st.exporter.submit(sub).await?;
            let links = links(&s.run_id);
            let loc = links.status.clone();
            let accepted = Accepted {
                run_id: s.run_id.to_string(),
                status: s.status.to_string(),
                estimate_seconds: s.estimate_seconds,
                retry_after: s.retry_after.unwrap_or(s.estimate_seconds.clamp(1, 5)),
                links,
            };
            Ok(with_location(with_status(StatusCode::ACCEPTED, json(&accepted)), &loc))
        })
        .await
    }
    .await;
    c.finish(r)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    status: Option<String>,
    profile: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/export-center/runs", tag = "runs",
    params(("status" = Option<String>, Query, description = "queued|running|succeeded|failed|expired"), ("profile" = Option<String>, Query, description = "Built-in profile id"),
        ("limit" = Option<usize>, Query, description = "1..200, default 50"), ("cursor" = Option<String>, Query, description = "From nextCursor"),
        ("X-StellaOps-Tenant" = String, Header, description = "Tenant")),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("dpop" = ["export:read"])))]
pub(crate) async fn list_runs(
    St(st): St<Arc<State>>,
    call: Call,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let c = authorize!(st, call, SCOPE_READ);
    let r = async {
        let Query(q) = q.map_err(|e| ApiError::invalid("query", e.body_text()))?;
        if let Some(l) = q.limit {
            if !(1..=200).contains(&l) {
                return Err(ApiError::invalid("limit", "1 to 200"));
            }
        }
        let filter = RunFilter {
            status: q.status.map(|s| s.parse::<RunStatus>().map_err(|e| ApiError::invalid("status", e))).transpose()?,
            profile_id: q.profile.map(|p| exportcore::ProfileId::parse(p).map_err(ApiError::from)).transpose()?,
            project: c.project.clone(),
            limit: q.limit,
            cursor: q.cursor,
        };
        let page = st.exporter.list(&c.tenant, &filter).await?;
        for u in &page.unreadable {
            tracing::warn!(run_id = %u.run_id, reason = %u.reason, "listing runs: an unreadable run record");
        }
        Ok(json(&RunPage {
            runs: page.runs.iter().map(|r| st.run_view(r)).collect(),
            next_cursor: page.next_cursor,
            unreadable: page.unreadable.into_iter().map(|u| u.run_id).collect(),
        }))
    }
    .await;
    c.finish(r)
}

#[utoipa::path(get, path = "/export-center/runs/{runId}", tag = "runs",
    params(("runId" = String, Path, description = "Run id"), ("X-StellaOps-Tenant" = String, Header, description = "Tenant")),
    responses((status = 200, body = RunView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("dpop" = ["export:read"])))]
pub(crate) async fn get_run(St(st): St<Arc<State>>, call: Call, Path(run_id): Path<String>) -> Response {
    let c = authorize!(st, call, SCOPE_READ);
    let r = async {
        let id = parse_run_id(&run_id)?;
        let run = st.exporter.get(&c.tenant, &id).await.map_err(not_found_as_404(format!("run {run_id}")))?;
        let mut view = st.run_view(&run);
        let records = st.exporter.store().list_distributions(&c.tenant, Some(&id)).await?;
        view.distributions = Some(
            records
                .iter()
                .map(|d| DistributionRef {
                    id: d.id.clone(),
                    kind: crate::wire(&d.kind),
                    status: crate::wire(&d.status),
                })
                .collect(),
        );
        Ok(json(&view))
    }
    .await;
    c.finish(r)
}

#[utoipa::path(post, path = "/export-center/runs/{runId}/cancel", tag = "runs",
    params(("runId" = String, Path, description = "Run id"), ("X-StellaOps-Tenant" = String, Header, description = "Tenant")),
    responses((status = 202, description = "Cancelled, or cancelling", body = RunView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("dpop" = ["export:write"])))]
pub(crate) async fn cancel_run(St(st): St<Arc<State>>, call: Call, Path(run_id): Path<String>) -> Response {
    let c = authorize!(st, call, SCOPE_WRITE);
    let r = async {
        let id = parse_run_id(&run_id)?;
        let run = match st.exporter.cancel(&c.tenant, &id).await {
            Ok(run) => run,
            Err(ExportError::NotFound { .. }) => return Err(ApiError::not_found(format!("run {run_id}"))),
            // Cancelling a finished run is a conflict with its state, not a malformed request.
            Err(ExportError::RequestInvalid { reason, .. }) => {
                return Err(ExportError::Conflict { what: format!("run {run_id}"), reason }.into())
            }
            Err(e) => return Err(e.into()),
        };
        Ok(with_status(StatusCode::ACCEPTED, json(&st.run_view(&run))))
    }
    .await;
    c.finish(r)
}

#[utoipa::path(get, path = "/export-center/distributions/{id}", tag = "distributions",
    params(("id" = String, Path, description = "Distribution id"), ("X-StellaOps-Tenant" = String, Header, description = "Tenant")),
    responses((status = 200, body = DistributionView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("dpop" = ["export:read"])))]
pub(crate) async fn get_distribution(St(st): St<Arc<State>>, call: Call, Path(id): Path<String>) -> Response {
    let c = authorize!(st, call, SCOPE_READ);
    let r = async {
        let rec = st
            .exporter
            .store()
            .get_distribution(&c.tenant, &id)
            .await
            .map_err(not_found_as_404(format!("distribution {id}")))?;
        let urls =
            exportcore_distribution::reader_urls(&rec, &st.cfg.s3, Some(&st.signer), Timestamp::now(), st.cfg.url_ttl)
                .await
                .map_err(not_found_as_404(format!("distribution {id}")))?;
        Ok(json(&DistributionView {
            id: rec.id.clone(),
            run_id: rec.run_id.to_string(),
            kind: rec.kind.to_string(),
            reference: rec.reference.clone(),
            status: crate::wire(&rec.status),
            created_at: rec.created_at.to_string(),
            expires_at: rec.expires_at.map(|t| t.to_string()),
            urls: urls
                .into_iter()
                .map(|u| ReaderUrlView {
                    path: u.path.to_string(),
                    url: u.url,
                    sha256: u.sha256.to_hex(),
                    size: u.size,
                    expires_at: u.expires_at.map(|t| t.to_string()),
                })
                .collect(),
        }))
    }
    .await;
    c.finish(r)
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`: `Ok(None)` for no (or an ignored
/// multi-range) header, `Err` for an unsatisfiable one.
fn parse_range(h: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = h.and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let Some(spec) = v.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None); // multipart ranges: answer the whole representation (RFC 9110 allows it)
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let s: u64 = a.parse().map_err(|_| ())?;
        let e: u64 = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(size.saturating_sub(1))
        };
        (s, e)
    };
    if start >= size || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

#[utoipa::path(get, path = "/export-center/runs/{runId}/artifacts/{path}", tag = "runs",
    params(("runId" = String, Path, description = "Run id"), ("path" = String, Path, description = "Output path"),
        ("tenant" = Option<String>, Query, description = "Signed URL: tenant"), ("exp" = Option<i64>, Query, description = "Signed URL: expiry (Unix seconds)"),
        ("kid" = Option<String>, Query, description = "Signed URL: key id"), ("sig" = Option<String>, Query, description = "Signed URL: HMAC-SHA256"),
        ("Range" = Option<String>, Header, description = "bytes=a-b")),
    responses((status = 200, description = "The artifact (ETag, Digest, Accept-Ranges)", content_type = "application/octet-stream"),
        (status = 206, description = "A byte range", content_type = "application/octet-stream"), (status = 304, description = "Not modified (If-None-Match)"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)),
    security((), ("dpop" = ["export:read"])))]
pub(crate) async fn download(
    St(st): St<Arc<State>>,
    call: Call,
    Path((run_id, path)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Response {
    let query = uri.query().unwrap_or("");
    let signed_path = format!("{BASE}/runs/{run_id}/artifacts/{path}");
    // A signed URL is its own authorization; without one the caller authenticates.
    let signed = query.split('&').any(|pair| pair.starts_with("sig="));
    let (tenant, caller) = if signed {
        match st.signer.verify_request("GET", &signed_path, query, Timestamp::now()) {
            // A signed URL counts against its tenant's quota like any other request.
            Ok(t) => match st.limiter.check(&t) {
                Ok(_) => (t, None),
                Err(q) => {
                    let mut e = ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "ERR_EXPORT_RATE_LIMIT",
                        format!("tenant {t} is over its quota of {} requests", q.limit),
                    );
                    e.retry_after = Some(q.reset_secs.max(1));
                    return e.into_response();
                }
            },
            Err(e) => return ApiError::forbidden(e.to_string()).into_response(),
        }
    } else {
        let c = authorize!(st, call, SCOPE_READ);
        (c.tenant.clone(), Some(c))
    };
    let r = async {
        let id = parse_run_id(&run_id)?;
        let what = format!("artifact {path} of run {run_id}");
        let run = st.exporter.get(&tenant, &id).await.map_err(not_found_as_404(what.clone()))?;
        if run.status != RunStatus::Succeeded {
            return Err(ApiError::not_found(what));
        }
        let out =
            run.outputs.iter().find(|o| o.path.as_str() == path).ok_or_else(|| ApiError::not_found(what.clone()))?;
        let etag = format!("\"{}\"", out.sha256.to_hex());
        let digest_b64 = base64::engine::general_purpose::STANDARD.encode(out.sha256.as_bytes());
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, HeaderValue::from_str(&etag).map_err(|_| ApiError::not_found(what.clone()))?);
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=0, must-revalidate"));
        if let Ok(v) = HeaderValue::from_str(&format!("sha-256={digest_b64}")) {
            h.insert("digest", v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("sha-256=:{digest_b64}:")) {
            h.insert("repr-digest", v);
        }
        if let Ok(v) = HeaderValue::from_str(&out.media_type) {
            h.insert(header::CONTENT_TYPE, v);
        }
        let file_name = out.path.as_str().rsplit('/').next().unwrap_or("artifact").replace('"', "");
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        if call
            .headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
        {
            return Ok((StatusCode::NOT_MODIFIED, h).into_response());
        }
        let range = match call.headers.get(header::IF_RANGE) {
            Some(v) if v.to_str().ok() != Some(etag.as_str()) => Ok(None),
            _ => parse_range(call.headers.get(header::RANGE), out.size),
        };
        let range = match range {
            Ok(r) => r,
            Err(()) => {
                let mut e = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "ERR_EXPORT_REQUEST_INVALID",
                    format!("range outside 0..{}", out.size),
                );
                e.details = vec![serde_json::json!({"field": "Range"})];
                let mut r = e.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", out.size)) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(r);
            }
        };
        // Open downloads per tenant are capped like event streams: a slow reader holds a file
        // and a task until its body ends.
        let slot = st.downloads.acquire(&tenant, st.cfg.max_streams_per_tenant).ok_or_else(|| {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "ERR_EXPORT_RATE_LIMIT",
                format!("tenant {tenant} has {} downloads open", st.cfg.max_streams_per_tenant),
            );
            e.retry_after = Some(1);
            e
        })?;
        let sink_path = st.exporter.artifact_path(&run, &ArtifactPath::parse(&path)?)?;
        let stream = st.exporter.sink().get(&sink_path).await.map_err(not_found_as_404(what.clone()))?;
        let (status, start, len) = match range {
            Some((a, b)) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{}", out.size)) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
            }
            None => (StatusCode::OK, 0, out.size),
        };
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        metrics::counter!("gateway_download_bytes_total").increment(len);
        let body = Body::from_stream(slice(stream, start, len).map(move |chunk| {
            let _held = &slot;
            chunk
        }));
        Ok((status, h, body).into_response())
    }
    .await;
    match caller {
        Some(c) => c.finish(r),
        None => r.unwrap_or_else(IntoResponse::into_response),
    }
}

/// Bytes `start..start + len` of `stream`.
fn slice(
    stream: exportcore::ByteStream,
    start: u64,
    len: u64,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures::stream::unfold((stream, start, len), |(mut s, mut skip, mut left)| async move {
        while left > 0 {
            match s.next().await? {
                Err(e) => return Some((Err(e), (s, 0, 0))),
                Ok(mut chunk) => {
                    let n = chunk.len() as u64;
                    if skip >= n {
                        skip -= n;
                        continue;
                    }
                    let _ = chunk.split_to(skip as usize);
                    if chunk.len() as u64 > left {
                        chunk.truncate(left as usize);
                    }
                    left -= chunk.len() as u64;
                    return Some((Ok(chunk), (s, 0, left)));
                }
            }
        }
        None
    })
}

#[utoipa::path(get, path = "/export-center/openapi.json", tag = "meta", responses((status = 200, description = "This document")))]
pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json; charset=utf-8")], crate::openapi::document()).into_response()
}

#[utoipa::path(get, path = "/export-center/healthz", tag = "meta", responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Response {
    json(&Health { status: "ok".into() })
}

#[utoipa::path(get, path = "/export-center/readyz", tag = "meta", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub(crate) async fn readyz(St(st): St<Arc<State>>) -> Response {
    if st.draining.load(Ordering::SeqCst) {
        return with_status(StatusCode::SERVICE_UNAVAILABLE, json(&Health { status: "draining".into() }));
    }
    match st.exporter.store().queued_count(None).await {
        Ok(_) => json(&Health { status: "ok".into() }),
        Err(_) => with_status(StatusCode::SERVICE_UNAVAILABLE, json(&Health { status: "store unavailable".into() })),
    }
}

#[utoipa::path(get, path = "/export-center/metrics", tag = "meta", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub(crate) async fn prometheus(St(st): St<Arc<State>>) -> Response {
    match &st.metrics {
        Some(h) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], h.render()).into_response(),
        None => ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "ERR_EXPORT_NOT_SUPPORTED",
            "another metrics recorder is installed",
        )
        .into_response(),
    }
}

#[utoipa::path(get, path = "/export-center/ui/", tag = "meta", responses((status = 200, description = "The browser page", content_type = "text/html")))]
pub(crate) async fn ui() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"),
            // Never framed by another site (clickjacking); for browsers without CSP 2.
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        include_str!("ui.html"),
    )
        .into_response()
}

async fn unknown_route(uri: axum::http::Uri) -> Response {
    ApiError::not_found(format!("route {}", uri.path())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parse_range(Some(&h("bytes=0-9")), 100), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some(&h("bytes=90-")), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some(&h("bytes=-10")), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some(&h("bytes=95-200")), 100), Ok(Some((95, 99))));
        assert_eq!(parse_range(Some(&h("bytes=100-")), 100), Err(()));
        assert_eq!(parse_range(Some(&h("bytes=5-1")), 100), Err(()));
        assert_eq!(parse_range(Some(&h("bytes=0-1,5-6")), 100), Ok(None));
        assert_eq!(parse_range(None, 100), Ok(None));
    }

    #[test]
    fn labels_never_carry_ids() {
        assert_eq!(route_label(&Method::GET, "/export-center/runs/export-run::a::1"), "/runs/{runId}");
        assert_eq!(
            route_label(&Method::GET, "/export-center/runs/x/artifacts/a/b.tgz"),
            "/runs/{runId}/artifacts/{path}"
        );
        assert_eq!(route_label(&Method::GET, "/elsewhere"), "other");
    }

    #[tokio::test]
    async fn slices_across_chunks() {
        let chunks: Vec<std::io::Result<bytes::Bytes>> = vec![
            Ok(bytes::Bytes::from_static(b"abc")),
            Ok(bytes::Bytes::from_static(b"defg")),
            Ok(bytes::Bytes::from_static(b"hij")),
        ];
        let s: exportcore::ByteStream = futures::stream::iter(chunks).boxed();
        let out: Vec<_> = slice(s, 2, 6).collect().await;
        let joined: Vec<u8> = out.into_iter().flat_map(|c| c.unwrap_or_default().to_vec()).collect();
        assert_eq!(joined, b"cdefgh");
    }
}
