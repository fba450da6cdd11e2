//! Wires the components: configuration → policy snapshot → checker → gRPC server,
//! and runs it until asked to stop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::ops::admin::{AdminError, AdminServer, AdminState};
use crate::ops::audit::{AuditError, AuditLog, AuditWriter};
use crate::ops::watch::FileWatcher;
use crate::pipeline::authorize::Authorizer;
use crate::pipeline::checker::{Checker, Clock, Parts, SetupError};
use crate::policy::sets::PolicySets;
use crate::server::grpc::{self, Listener};
use crate::server::tls::ReloadingTls;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot listen on `{addr}`: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("grpc server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("server task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsError),
}

/// A started server.
pub struct Running {
    /// Bound address: `ip:port` (with the real port when 0 was asked for) or `unix:/path`.
    pub local_addr: String,
    pub checker: Arc<Checker>,
    /// The policy sets being served, each with its reloader.
    pub sets: Arc<PolicySets>,
    /// The admin listener's address, when it is on.
    pub admin_addr: Option<SocketAddr>,
    /// The audit log, when it is on.
    pub audit: Option<AuditLog>,
    admin: Option<AdminServer>,
    audit_writer: Option<AuditWriter>,
    ready: Arc<AtomicBool>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AppError>>,
    /// JWKS, revocation, TLS and policy watchers.
    background: Vec<JoinHandle<()>>,
    /// Passes file events to the watchers in `background` while it lives.
    _watcher: FileWatcher,
    shutdown_timeout: std::time::Duration,
}

/// Loads the policies and credential sources (refusing to start on an invalid
/// policy set, JWKS file or revocation file), binds and serves.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Running, AppError> {
    let listen = config.server.listen.clone();
    // The drain comes first, then in-flight Checks get the shutdown timeout.
    let shutdown_timeout = config.server.drain + config.server.shutdown_timeout;
    let checker = Arc::new(Checker::new(Parts::load(config)?, clock));
    // What the server reloads, watches and reports on is what the checker decides with.
    let Parts { config, sets, metrics, .. } = checker.parts();
    let snapshot = sets.default_set().current();
    tracing::info!(
        policies = snapshot.policy_count(),
        version = %snapshot.version,
        dir = %config.policies.dir.display(),
        issuers = config.tokens.issuers.len(),
        "policy set loaded"
    );
    let grpc_tls = match &config.server.tls {
        Some(files) => Some(ReloadingTls::load("grpc", files, &[b"h2"])?),
        None => None,
    };
    let admin_tls = match &config.admin.tls {
        Some(files) => Some(ReloadingTls::load("admin", files, &[b"http/1.1"])?),
        None => None,
    };
    let listener =
        Listener::bind(&listen).await.map_err(|source| AppError::Bind { addr: listen.to_string(), source })?;
    let local_addr = listener.local_addr();
    // One watcher for every file reloaded while serving.
    let watcher = FileWatcher::new(config.policies.debounce);
    let mut background = checker.parts().watch(&watcher);
    for tls in grpc_tls.iter().chain(admin_tls.iter()) {
        let reloading = Arc::clone(tls);
        // Refusals are logged and counted by `reload_if_changed` itself.
        background.push(watcher.spawn("tls", &tls.files(), move |_| {
            let _ = reloading.reload_if_changed();
        }));
    }
    let (audit, audit_writer) = match config.audit.enabled {
        true => {
            let (log, writer) = crate::ops::audit::start(&config.audit)?;
            (Some(log), Some(writer))
        }
        false => (None, None),
    };
    checker.report_to_metrics();
    if let Some(audit) = &audit {
        metrics.add_source(audit.stats());
    }
    for tls in grpc_tls.iter().chain(admin_tls.iter()) {
        metrics.add_source(Arc::clone(tls) as _);
    }
    let ready = Arc::new(AtomicBool::new(false));
    let admin = match config.admin.listen {
        None => None,
        Some(addr) => Some(AdminServer::start(
            addr,
            AdminState { checker: Arc::clone(&checker), ready: Arc::clone(&ready), started: std::time::Instant::now() },
            admin_tls,
        )?),
    };
    let (tx, rx) = oneshot::channel::<()>();
    let authorizer = Arc::new(Authorizer::new(Arc::clone(&checker), audit.clone()));
    let options = grpc::ServeOptions { tls: grpc_tls, drain: config.server.drain };
    let task = tokio::spawn(async move {
        grpc::serve(listener, authorizer, options, async {
            let _ = rx.await;
        })
        .await
        .map_err(AppError::from)
    });
    ready.store(true, Ordering::Release);
    tracing::info!(addr = %local_addr, "cedargate listening");
    Ok(Running {
        local_addr,
        checker: Arc::clone(&checker),
        sets: Arc::clone(sets),
        admin_addr: admin.as_ref().map(|a| a.local_addr),
        audit,
        admin,
        audit_writer,
        ready,
        shutdown: Some(tx),
        task,
        background,
        _watcher: watcher,
        shutdown_timeout,
    })
}

impl Running {
    /// Stops accepting, lets in-flight Checks finish (up to the shutdown timeout),
    /// then flushes the audit log and stops the admin listener.
    pub async fn shutdown(mut self) -> Result<(), AppError> {
        self.ready.store(false, Ordering::Release);
        for task in &self.background {
            task.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = match tokio::time::timeout(self.shutdown_timeout, &mut self.task).await {
            Ok(joined) => joined.map_err(|e| AppError::Task(e.to_string())).and_then(|r| r),
            Err(_) => {
                tracing::warn!("in-flight checks did not finish within the shutdown timeout");
                self.task.abort();
                let _ = (&mut self.task).await;
                Ok(())
            }
        };
        // The server, and with it every other audit handle, is gone: the writer
        // drains what is queued and ends.
        self.audit = None;
        if let Some(writer) = self.audit_writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.finish()).await;
        }
        if let Some(admin) = self.admin.take() {
            let _ = tokio::task::spawn_blocking(move || admin.stop()).await;
        }
        served
    }

    /// Asks the audit writer to reopen its file (after log rotation).
    pub fn reopen_audit(&self) {
        if let Some(writer) = &self.audit_writer {
            writer.reopen();
        }
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully; SIGHUP reloads
    /// the policy directory.
    pub async fn run_until_signal(self) -> Result<(), AppError> {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
        else {
            let _ = tokio::signal::ctrl_c().await;
            return self.shutdown().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    // Logged after the request to reopen is in place, so that whoever
                    // sees the line knows the next record goes to the new file.
                    self.reopen_audit();
                    tracing::info!("SIGHUP: reloading the policy directory and reopening the audit file");
                    for (_, _, set) in self.sets.all() {
                        let reloader = Arc::clone(set);
                        // The outcome is logged and kept in the reloader's status.
                        let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                    }
                }
            }
        }
        tracing::info!("shutting down");
        self.shutdown().await
    }
}
