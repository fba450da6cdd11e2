//! Wires the components: configuration → policy snapshot → checker → gRPC server,
//! and runs it until asked to stop.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::check::{Checker, Clock};
use crate::config::Config;
use crate::grpc::{self, Listener};
use crate::policy_set::{self, LoadError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Policies(#[from] LoadError),
    #[error("cannot listen on `{addr}`: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("grpc server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("server task failed: {0}")]
    Task(String),
}

/// A started server.
pub struct Running {
    /// Bound address: `ip:port` (with the real port when 0 was asked for) or `unix:/path`.
    pub local_addr: String,
    pub checker: Arc<Checker>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AppError>>,
    shutdown_timeout: std::time::Duration,
}

/// Loads the policies (refusing to start on an invalid set), binds and serves.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Running, AppError> {
    let snapshot = policy_set::load_dir(&config.policies.dir)?;
    tracing::info!(
        policies = snapshot.policy_count(),
        version = %snapshot.version,
        dir = %config.policies.dir.display(),
        "policy set loaded"
    );
    let listener = Listener::bind(&config.server.listen)
        .await
        .map_err(|source| AppError::Bind { addr: config.server.listen.to_string(), source })?;
    let local_addr = listener.local_addr();
    let shutdown_timeout = config.server.shutdown_timeout;
    let checker = Arc::new(Checker::new(Arc::new(config), Arc::new(ArcSwap::from_pointee(snapshot)), clock));
    let (tx, rx) = oneshot::channel::<()>();
    let serve_checker = Arc::clone(&checker);
    let task = tokio::spawn(async move {
        grpc::serve(listener, serve_checker, async {
            let _ = rx.await;
        })
        .await
        .map_err(AppError::from)
    });
    tracing::info!(addr = %local_addr, "cedargate listening");
    Ok(Running { local_addr, checker, shutdown: Some(tx), task, shutdown_timeout })
}

impl Running {
    /// Stops accepting, lets in-flight Checks finish (up to the shutdown timeout).
    pub async fn shutdown(mut self) -> Result<(), AppError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(self.shutdown_timeout, &mut self.task).await {
            Ok(joined) => joined.map_err(|e| AppError::Task(e.to_string()))?,
            Err(_) => {
                tracing::warn!("in-flight checks did not finish within the shutdown timeout");
                self.task.abort();
                Ok(())
            }
        }
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<(), AppError> {
        wait_for_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
