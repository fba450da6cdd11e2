//! Shared by the benchmarks: the no-op Check server (the
//! floor any ext_authz server is measured against), latency statistics, and a
//! cedargate server on its own runtime.

#![allow(dead_code)]

pub mod process;

use std::net::SocketAddr;
use std::time::Duration;

use cedargate::server::proto::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use cedargate::server::proto::envoy::service::auth::v3::{check_response, CheckRequest, CheckResponse, OkHttpResponse};
use cedargate::server::proto::google::rpc::Status as RpcStatus;

/// The caller every benchmark request comes from.
pub const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";

/// Answers every Check with an allow, doing nothing else.
pub struct Noop;

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(&self, _: tonic::Request<CheckRequest>) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(RpcStatus { code: 0, ..Default::default() }),
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse::default())),
            ..Default::default()
        }))
    }
}

/// Serves the no-op server on 127.0.0.1 from `runtime`.
pub fn start_noop(runtime: &tokio::runtime::Runtime) -> SocketAddr {
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder().add_service(AuthorizationServer::new(Noop)).serve_with_incoming(
                cedargate::server::grpc::nodelay(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            ),
        );
        addr
    })
}

/// A runtime for servers, apart from the load generator's.
pub fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("server").enable_all().build().unwrap()
}

/// Latency percentiles of one run.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub requests: usize,
    pub errors: usize,
    pub per_second: f64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    /// Open loop only: sends that left over 2 ms after their scheduled time.
    pub late: usize,
}

impl Stats {
    pub fn from(mut latencies: Vec<Duration>, errors: usize, elapsed: Duration) -> Stats {
        latencies.sort_unstable();
        let at = |q: f64| {
            if latencies.is_empty() {
                return Duration::ZERO;
            }
            let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            latencies[index.min(latencies.len() - 1)]
        };
        Stats {
            requests: latencies.len(),
            errors,
            per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            late: 0,
        }
    }
}

/// Waits for load tasks that each return their latencies and error count, and
/// summarizes them over the time since `started`.
pub async fn gather(tasks: Vec<tokio::task::JoinHandle<(Vec<Duration>, usize)>>, started: std::time::Instant) -> Stats {
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, failed) = task.await.unwrap();
        all.extend(latencies);
        errors += failed;
    }
    Stats::from(all, errors, started.elapsed())
}

pub fn micros(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

/// Resident memory of this process, from /proc.
pub fn rss_mib() -> f64 {
    rss_mib_of("self")
}

/// Resident memory of process `pid` (or `self`), from /proc.
pub fn rss_mib_of(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A policy directory: the shipped schema, entities and policies, plus `n`
/// generated permits, one per workload `svc-i` (`principal ==`).
/// The shipped policy directory with `n` more groups in `entities.json` (the
/// policies name none of them).
pub fn entities_with(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join("entities.json");
    let mut entities: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    entities.extend(
        (0..n).map(
            |i| serde_json::json!({ "uid": { "type": "Group", "id": format!("g{i}") }, "attrs": {}, "parents": [] }),
        ),
    );
    std::fs::write(&path, serde_json::to_string(&entities).unwrap()).unwrap();
    dir
}

pub fn policies_with(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".test.toml") {
            continue;
        }
        std::fs::copy(entry.path(), dir.path().join(name)).unwrap();
    }
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "permit (principal == Workload::\"spiffe://example.org/ns/default/sa/svc-{i}\", action in Action::\"read\", resource in Path::\"/api/svc-{i}\") when {{ resource.host == \"orders.example.org\" }};\n"
        ));
    }
    std::fs::write(dir.path().join("generated.cedar"), text).unwrap();
    dir
}
