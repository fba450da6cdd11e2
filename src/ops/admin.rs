//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/status` and
//! `/loglevel`, for SREs and orchestrators.
//!
//! It runs on its own thread with its own single-threaded runtime, so a scrape
//! never competes with Checks for the request path's worker threads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::ops::telemetry;
use crate::pipeline::checker::Checker;
use crate::policy::reload::PolicyReloader;
use crate::policy::sets::Role;

/// What the admin endpoints read.
pub struct AdminState {
    /// The policy sets, credentials, caches and metrics being served.
    pub checker: Arc<Checker>,
    /// Set while the gRPC server accepts Checks.
    pub ready: Arc<AtomicBool>,
    pub started: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on `{addr}`: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot start the admin thread: {0}")]
    Thread(std::io::Error),
}

/// A running admin listener.
pub struct AdminServer {
    pub local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` (now, so a taken port fails the start) and serves on a thread,
    /// over TLS when `tls` is given.
    pub fn start(
        addr: std::net::SocketAddr,
        state: AdminState,
        tls: Option<Arc<crate::server::tls::ReloadingTls>>,
    ) -> Result<AdminServer, AdminError> {
        let bind_error = |source| AdminError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let (stop, stopped) = oneshot::channel();
        let state = Arc::new(state);
        let tls_on = tls.is_some();
        let thread = std::thread::Builder::new()
            .name("cedargate-admin".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!("admin listener: cannot start its runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(serve(listener, state, tls, stopped));
            })
            .map_err(AdminError::Thread)?;
        if !local_addr.ip().is_loopback() && !tls_on {
            tracing::warn!(addr = %local_addr, "the admin listener leaves loopback without TLS: limit who reaches it (admin.tls, a NetworkPolicy)");
        }
        tracing::info!(addr = %local_addr, tls = tls_on, "admin listening");
        Ok(AdminServer { local_addr, stop: Some(stop), thread: Some(thread) })
    }

    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<AdminState>,
    tls: Option<Arc<crate::server::tls::ReloadingTls>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("admin listener: {e}");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, state).await,
                Some(tls) => {
                    if let Some(stream) = tls.accept(stream).await {
                        serve_connection(stream, state).await;
                    }
                }
            }
        });
    }
}

/// A client that never finishes its request head is dropped after this (a stalled
/// TLS handshake too, in `tls`), so idle connections cannot pile up on this thread.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn serve_connection<IO>(io: IO, state: Arc<AdminState>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(route(&state, request).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

async fn route(state: &AdminState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", state.checker.parts().metrics.encode())
        }
        (&Method::GET, "/healthz") => reply(StatusCode::OK, TEXT, "ok\n"),
        (&Method::GET, "/readyz") => {
            if state.ready.load(Ordering::Acquire) {
                reply(StatusCode::OK, TEXT, "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n")
            }
        }
        (&Method::GET, "/status") => reply(StatusCode::OK, "application/json", status(state).to_string()),
        (&Method::GET, "/loglevel") => reply(StatusCode::OK, TEXT, format!("{}\n", telemetry::log_filter())),
        (&Method::PUT | &Method::POST, "/loglevel") if !state.checker.config().admin.allow_log_level_changes => reply(
            StatusCode::FORBIDDEN,
            TEXT,
            "changing the log level is off: set admin.allow_log_level_changes = true\n",
        ),
        (&Method::PUT | &Method::POST, "/loglevel") => {
            let body = match Limited::new(request.into_body(), 4096).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return reply(StatusCode::BAD_REQUEST, TEXT, "body too large\n"),
            };
            let filter = String::from_utf8_lossy(&body).trim().to_owned();
            match telemetry::set_log_filter(&filter) {
                Ok(()) => {
                    tracing::info!(filter = %filter, "log level changed through the admin listener");
                    reply(StatusCode::OK, TEXT, format!("{filter}\n"))
                }
                Err(e) => reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found: try /metrics, /healthz, /readyz, /status, /loglevel\n"),
    }
}

fn unix(t: Option<SystemTime>) -> serde_json::Value {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(serde_json::Value::Null, |d| d.as_secs().into())
}

/// What is being served and how the sources behind it are doing.
fn status(state: &AdminState) -> serde_json::Value {
    let parts = state.checker.parts();
    let reloads = |r: &PolicyReloader| {
        let s = r.status();
        serde_json::json!({ "version": s.version, "last_error": s.last_error, "last_attempt": unix(s.last_attempt) })
    };
    let default = parts.sets.default_set();
    let snapshot = default.current();
    let reload = default.status();
    let shadow = parts.sets.shadow().map(|r| reloads(r));
    let sets: serde_json::Map<String, serde_json::Value> = parts
        .sets
        .all()
        .filter(|(_, role, _)| *role == Role::Named)
        .map(|(name, _, r)| (name.to_owned(), reloads(r)))
        .collect();
    let revocations = &parts.credentials.revocations;
    let issuers: Vec<serde_json::Value> = parts
        .credentials
        .tokens
        .issuer_keys()
        .map(|keys| {
            serde_json::json!({
                "issuer": keys.issuer,
                "keys": keys.current().len(),
                "refreshes_ok": keys.stats.ok.load(Ordering::Relaxed),
                "refreshes_failed": keys.stats.failed.load(Ordering::Relaxed),
            })
        })
        .collect();
    serde_json::json!({
        "ready": state.ready.load(Ordering::Acquire),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "policies": {
            "dir": default.dir().display().to_string(),
            "version": snapshot.version,
            "count": snapshot.policy_count(),
            "last_error": reload.last_error,
            "last_attempt": unix(reload.last_attempt),
            "reloads_succeeded": default.succeeded.load(Ordering::Relaxed),
            "reloads_failed": default.failed.load(Ordering::Relaxed),
        },
        "shadow": shadow,
        "sets": sets,
        "cache": {
            "decisions": parts.cache.as_ref().map(|c| c.entries()),
            "token_signatures": parts.credentials.tokens.cached_tokens(),
        },
        "issuers": issuers,
        "revocation": {
            "file": parts.config.identity.revocation_file.as_ref().map(|p| p.display().to_string()),
            "entries": revocations.current().len(),
            "last_error": revocations.last_error(),
        },
        "log_filter": telemetry::log_filter(),
    })
}
