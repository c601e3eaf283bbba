//! The trace id of the request being served (a task-local set by the gateway's middleware),
//! echoed as `X-Trace-Id` and in every error body.

tokio::task_local! {
    static TRACE_ID: String;
}

/// A new trace id: 32 hex digits.
pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Runs `f` with `id` as the current trace id.
pub(crate) async fn scope<F: std::future::Future>(id: String, f: F) -> F::Output {
    TRACE_ID.scope(id, f).await
}

/// The current trace id, or a fresh one outside a request.
pub(crate) fn current() -> String {
    TRACE_ID.try_with(Clone::clone).unwrap_or_else(|_| new_id())
}
