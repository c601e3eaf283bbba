//! `GET /runs/{runId}/events`: the run's events as Server-Sent Events. Each event has an
//! `id:` (the event id), `event:` (its type) and JSON `data:`; `Last-Event-ID` resumes after
//! that id with exactly the missed events; a `: heartbeat` comment every 15 s; the stream
//! ends after the terminal event, after 60 s without an event, or when the server drains.

use crate::auth::SCOPE_READ;
use crate::error::ApiError;
use crate::routes::Call;
use crate::views::EventView;
use crate::State;
use axum::extract::{Path, State as St};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use exportcore::store::StoredEvent;
use exportcore::{ExportError, RunEvent, RunId};
use futures::StreamExt;
use std::sync::Arc;

fn view(st: &State, tenant: &exportcore::TenantId, e: &StoredEvent) -> EventView {
    let mut v = EventView {
        event: e.event.name().to_owned(),
        run_id: e.event.run_id().to_string(),
        at: e.at.to_string(),
        profile_id: None,
        percent: None,
        items_completed: None,
        items_total: None,
        url: None,
        sha256: None,
        kind: None,
        path: None,
        size: None,
        status: None,
        code: None,
        message: None,
    };
    match &e.event {
        RunEvent::Started { profile_id, .. } => v.profile_id = Some(profile_id.to_string()),
        RunEvent::Progress { progress, .. } => {
            v.percent = Some(progress.percent);
            v.items_completed = Some(progress.items_completed);
            v.items_total = Some(progress.items_total);
        }
        RunEvent::ArtifactReady { run_id, sha256, kind, path, size, .. } => {
            // The engine's URL is the sink's; readers get the gateway's signed URL.
            v.url = Some(st.download_url(run_id, tenant, path.as_str(), None).0);
            v.sha256 = Some(sha256.to_hex());
            v.kind = Some(crate::wire(kind));
            v.path = Some(path.to_string());
            v.size = Some(*size);
        }
        RunEvent::Completed { status, .. } => v.status = Some(status.to_string()),
        RunEvent::Failed { code, message, .. } => {
            v.code = Some(code.clone());
            v.message = Some(crate::error::run_error_message(code, message));
        }
        _ => {}
    }
    v
}

#[utoipa::path(get, path = "/export-center/runs/{runId}/events", tag = "runs",
    params(("runId" = String, Path, description = "Run id"), ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id"),
        ("X-StellaOps-Tenant" = String, Header, description = "Tenant")),
    responses((status = 200, description = "text/event-stream; each data line is an EventView", content_type = "text/event-stream", body = EventView),
        (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 404, body = crate::ErrorBody), (status = 429, body = crate::ErrorBody)),
    security(("dpop" = ["export:read"])))]
pub(crate) async fn events(St(st): St<Arc<State>>, call: Call, Path(run_id): Path<String>) -> Response {
    let c = match st.authorize(&call, SCOPE_READ).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let r = async {
        let id = RunId::parse(&run_id).map_err(|_| ApiError::not_found(format!("run {run_id}")))?;
        match st.exporter.get(&c.tenant, &id).await {
            Ok(_) => {}
            Err(ExportError::NotFound { .. }) => return Err(ApiError::not_found(format!("run {run_id}"))),
            Err(e) => return Err(e.into()),
        }
        let after = match call_header(&call, "last-event-id") {
            None => 0,
            Some(v) => {
                v.trim().parse::<u64>().map_err(|_| ApiError::invalid("Last-Event-ID", "an event id (a number)"))?
            }
        };
        let slot = st.streams.acquire(&c.tenant, st.cfg.max_streams_per_tenant).ok_or_else(|| {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "ERR_EXPORT_RATE_LIMIT",
                format!("tenant {} has {} event streams open", c.tenant, st.cfg.max_streams_per_tenant),
            );
            e.retry_after = Some(5);
            e
        })?;
        let events = st.exporter.events(&c.tenant, &id, after);
        let idle = st.cfg.sse_idle_timeout;
        let closing = st.closing.subscribe();
        let tenant = c.tenant.clone();
        let st2 = st.clone();
        let stream = futures::stream::unfold((events, slot, false), move |(mut events, slot, done)| {
            let st = st2.clone();
            let tenant = tenant.clone();
            let mut closing = closing.clone();
            async move {
                if done || *closing.borrow() {
                    return None;
                }
                let next = tokio::select! {
                    n = tokio::time::timeout(idle, events.next()) => n,
                    _ = closing.wait_for(|c| *c) => return None,
                };
                match next {
                    Ok(Some(Ok(e))) => {
                        let terminal = e.event.is_terminal();
                        let data = serde_json::to_string(&view(&st, &tenant, &e)).unwrap_or_default();
                        let ev = Event::default().id(e.id.to_string()).event(e.event.name()).data(data);
                        Some((Ok::<_, std::convert::Infallible>(ev), (events, slot, terminal)))
                    }
                    // The stream's end, a store error (logged by the engine) or idleness.
                    _ => None,
                }
            }
        });
        Ok(Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(st.cfg.sse_heartbeat).text("heartbeat"))
            .into_response())
    }
    .await;
    c.finish(r)
}

fn call_header<'a>(call: &'a Call, name: &str) -> Option<&'a str> {
    call.headers.get(name).and_then(|v| v.to_str().ok())
}
