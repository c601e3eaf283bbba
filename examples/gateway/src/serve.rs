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
}

impl ServeOptions {
    /// Options with `auth` and the default settings.
    pub fn new(auth: Arc<dyn Authenticator>) -> Self {
        Self { auth, config: GatewayConfig::default(), workers: true }
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
/// meanwhile. On shutdown it stops accepting connections, marks itself not ready, ends every
/// event stream, lets in-flight requests finish, then waits for running exports to finish;
/// queued runs stay queued in the store for the next start.
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
    let g = gateway.clone();
    let served = axum::serve(listener, gateway.router())
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: draining streams and requests");
            g.drain();
        })
        .await;
    if let Some(w) = workers {
        w.shutdown().await;
    }
    served.map_err(|e| exportcore::ExportError::io("listener", e))
}

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
