//! The gRPC layer: tonic's `Authorization/Check` and `grpc.health.v1`, bound to TCP
//! or a Unix socket. It only translates (`wire`) and delegates (`check`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::{Request, Response, Status};
use tracing::field::Empty;
use tracing::Instrument;

use crate::config::ListenAddr;
use crate::ops::audit::{AuditLog, AuditRecord};
use crate::pipeline::checker::Checker;
use crate::pipeline::decision::{Decision, DenyReason, Outcome};
use crate::pipeline::input::CheckInput;
use crate::server::proto::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use crate::server::proto::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use crate::server::wire;

/// `envoy.service.auth.v3.Authorization`, backed by a `Checker`.
pub struct AuthorizationService {
    checker: Arc<Checker>,
    audit: Option<AuditLog>,
}

impl AuthorizationService {
    pub fn new(checker: Arc<Checker>, audit: Option<AuditLog>) -> Self {
        AuthorizationService { checker, audit }
    }
}

#[tonic::async_trait]
impl Authorization for AuthorizationService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let input = wire::check_input(request.into_inner());
        let span = tracing::info_span!(
            target: "cedargate",
            "check",
            otel.name = "cedargate.check",
            otel.kind = "server",
            decision.id = Empty,
            decision.outcome = Empty,
            decision.reason = Empty,
            cache = Empty,
        );
        if let Some(http) = &input.http {
            crate::ops::telemetry::join_trace(&span, &http.headers);
        }
        let response = self.decide(&input).instrument(span.clone()).await;
        Ok(Response::new(response))
    }
}

impl AuthorizationService {
    async fn decide(&self, input: &CheckInput) -> CheckResponse {
        // The pipeline is written not to panic; if it ever does, the answer is still
        // a deny, never a dropped stream that a misconfigured Envoy could fail open on.
        let check = || {
            std::panic::catch_unwind(AssertUnwindSafe(|| self.checker.check(input)))
                .unwrap_or_else(|_| panicked_decision(&self.checker))
        };
        let mut decision = check();
        if self.checker.refresh_keys_for(&decision).await {
            decision = check();
        }
        let now = std::time::SystemTime::now();
        self.checker.metrics().record_check(&decision.metrics_record(crate::identity::svid::unix_seconds(now)));
        let span = tracing::Span::current();
        span.record("decision.id", decision.id.as_str());
        span.record("decision.outcome", if decision.is_allowed() { "allow" } else { "deny" });
        span.record("decision.reason", decision.code());
        span.record("cache", decision.cache.label());
        log_decision(&decision, input);
        if let Some(audit) = &self.audit {
            audit.write(&AuditRecord::new(&decision, input, audit.include_query(), now)).await;
        }
        wire::check_response(&decision, self.checker.config())
    }
}

fn panicked_decision(checker: &Checker) -> Decision {
    Decision {
        id: uuid::Uuid::new_v4().to_string(),
        outcome: Outcome::Deny(DenyReason::Internal("the check panicked".to_owned())),
        peer: None,
        token: None,
        policies: Vec::new(),
        errors: Vec::new(),
        policy_set: crate::pipeline::checker::DEFAULT_SET.to_owned(),
        policy_version: checker.policies().version.clone(),
        elapsed: Default::default(),
        cache: Default::default(),
        shadow: None,
        resource_path: None,
    }
}

fn log_decision(decision: &Decision, input: &CheckInput) {
    // Allows are logged at debug: skip building their fields on the hot path.
    if decision.is_allowed() && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let principal = decision.peer.as_ref().map(|p| p.spiffe_id.as_str()).unwrap_or(&input.source.principal);
    let (method, path) = input.http.as_ref().map_or(("", ""), |h| {
        // The query string can carry secrets; the log gets the path only.
        (h.method.as_str(), h.path.split(['?', '#']).next().unwrap_or_default())
    });
    let elapsed_us = u64::try_from(decision.elapsed.as_micros()).unwrap_or(u64::MAX);
    // The token by issuer, subject and fingerprint only; never the token itself.
    let (token_iss, token_sub, token_fp) =
        decision.token.as_ref().map_or(("", "", ""), |t| (t.iss.as_str(), t.sub.as_str(), t.fingerprint.as_str()));
    match &decision.outcome {
        Outcome::Allow => tracing::debug!(
            decision.id = %decision.id, decision = "allow", authz.principal = principal, http.method = method,
            http.path = path, token.iss = token_iss, token.sub = token_sub, token.fingerprint = token_fp,
            authz.policies = ?decision.policies, elapsed_us, "allowed"
        ),
        Outcome::Deny(reason) => tracing::info!(
            decision.id = %decision.id, decision = "deny", reason = reason.code(), detail = %reason,
            authz.principal = principal, http.method = method, http.path = path, token.iss = token_iss,
            token.sub = token_sub, token.fingerprint = token_fp, authz.policies = ?decision.policies,
            authz.errors = ?decision.errors, elapsed_us, "denied"
        ),
    }
}

/// Accepted connections with Nagle's algorithm off. Envoy sends each Check as a
/// few small HTTP/2 frames; with Nagle on, a frame can wait for the peer's delayed
/// ACK (40 ms on Linux) and that wait lands in every request's latency.
pub fn nodelay(
    incoming: TcpListenerStream,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    incoming.map(|accepted| accepted.inspect(set_nodelay))
}

fn set_nodelay(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}

/// A bound listener, before serving.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                Ok(Listener::Unix(UnixListener::bind(path)?, path.clone()))
            }
        }
    }

    /// `ip:port` actually bound (port 0 resolved), or `unix:/path`.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }
}

/// A socket file left by a previous run would make bind fail; anything that is not
/// a socket is left alone.
fn remove_stale_socket(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

/// How the gRPC listener serves: TLS, and the drain before it closes.
pub struct ServeOptions {
    pub tls: Option<Arc<crate::server::tls::ReloadingTls>>,
    pub drain: std::time::Duration,
}

/// Serves Check and health until `shutdown` completes; then reports NOT_SERVING,
/// keeps answering for the drain period (Envoy's health checks move traffic to
/// other replicas meanwhile), and finishes the Checks in flight.
pub async fn serve(
    listener: Listener,
    checker: Arc<Checker>,
    audit: Option<AuditLog>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // The policy set was loaded and validated before the server was built.
    health.set_serving::<AuthorizationServer<AuthorizationService>>().await;
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let drain = options.drain;
    let shutdown = async move {
        shutdown.await;
        health.set_not_serving::<AuthorizationServer<AuthorizationService>>().await;
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        if !drain.is_zero() {
            tracing::info!(drain = ?drain, "health NOT_SERVING; still answering Checks while traffic moves away");
            tokio::time::sleep(drain).await;
        }
    };
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(AuthorizationServer::new(AuthorizationService::new(checker, audit)));
    match (listener, options.tls) {
        (Listener::Tcp(l), Some(tls)) => {
            router.serve_with_incoming_shutdown(crate::server::tls::incoming(l, tls, set_nodelay), shutdown).await
        }
        (Listener::Tcp(l), None) => {
            router.serve_with_incoming_shutdown(nodelay(TcpListenerStream::new(l)), shutdown).await
        }
        (Listener::Unix(l, path), _) => {
            let result = router.serve_with_incoming_shutdown(UnixListenerStream::new(l), shutdown).await;
            let _ = remove_stale_socket(&path);
            result
        }
    }
}
