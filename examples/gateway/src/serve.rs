//! Serving the gateway in a process of its own, with a graceful shutdown.

use crate::{auth::Authenticator, Gateway, GatewayConfig};
use exportcore::engine::Exporter;
use std::future::Future;
use std::sync::Arc;

/// What [`serve`] needs besides the exporter.
#[derive(Debug)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Who may call.
    pub auth: Arc<dyn Authenticator>,
    /// Gateway settings.
    pub config: GatewayConfig,
    /// Run the exporter's workers (default); `false` makes an API-only node of a cluster
    /// sharing one store: it accepts, lists, streams and serves runs that other nodes execute.
    pub workers: bool,
    /// How long a client has to send a request's headers (default [`HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: std::time::Duration,
    /// How long shutdown waits for open connections to finish (default [`DRAIN_TIMEOUT`]);
    /// then they are dropped (a client that stopped reading a download cannot hold the
    /// process).
    pub drain_timeout: std::time::Duration,
}

impl ServeOptions {
    /// Options with `auth` and the default settings.
    pub fn new(auth: Arc<dyn Authenticator>) -> Self {
        Self {
            auth,
            config: GatewayConfig::default(),
            workers: true,
            header_read_timeout: HEADER_READ_TIMEOUT,
            drain_timeout: DRAIN_TIMEOUT,
        }
    }
    /// Sets [`ServeOptions::drain_timeout`].
    pub fn drain_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }
    /// Sets [`ServeOptions::header_read_timeout`].
    pub fn header_read_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }
    /// Whether this process executes runs (see [`ServeOptions::workers`]).
    pub fn workers(mut self, on: bool) -> Self {
        self.workers = on;
        self
    }
    /// Replaces the settings.
    pub fn config(mut self, config: GatewayConfig) -> Self {
        self.config = config;
        self
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves, running `exporter`'s workers
/// meanwhile. On shutdown it stops accepting connections and claiming runs, marks itself not
/// ready, ends every event stream, lets in-flight requests finish (for at most
/// [`ServeOptions::drain_timeout`]), then waits for running exports to finish; queued runs
/// stay queued in the store for the next start.
///
/// # Errors
/// `ERR_EXPORT_IO` when the listener fails.
pub async fn serve(
    exporter: Exporter,
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> exportcore::Result<()> {
    let gateway = Gateway::new(exporter.clone(), options.auth, options.config)?;
    let workers = options.workers.then(|| exporter.start());
    let app = gateway.router();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    // The connections' tasks, so the ones still open after the drain timeout can be dropped.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Past the cap a connection is closed at once rather than the process running out of
        // descriptors for everyone.
        let Ok(slot) = Arc::clone(&open).try_acquire_owned() else {
            tracing::warn!(max = MAX_CONNECTIONS, "too many open connections: closing a new one");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let watched = graceful.watch(conn);
        connections.spawn(async move {
            let _ = watched.await;
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining streams and requests");
    if let Some(w) = &workers {
        w.stop();
    }
    gateway.drain();
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout = ?options.drain_timeout, "connections still open after the drain timeout: dropped");
        connections.abort_all();
    }
    if let Some(w) = workers {
        w.shutdown().await;
    }
    Ok(())
}

/// How long [`serve`] waits for open connections at shutdown by default.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a client has to send a request's headers, from when the connection is ready for
/// the next request (a connection that sends half a request line and waits is closed).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Connections served at once; one past it is closed when accepted.
pub const MAX_CONNECTIONS: usize = 4096;

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
