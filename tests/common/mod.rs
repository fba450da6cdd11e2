//! Helpers shared by the integration tests: a PKI generated at test time, a
//! cedargate server on a free loopback port, and CheckRequest builders.
#![allow(dead_code)]

pub mod cases;
pub mod envoy;
pub mod envoy_binary;
pub mod in_process_yaml;
pub mod jwks_server;
pub mod jwt;
pub mod pki;
pub mod ports;
pub mod request;

#[allow(unused_imports)]
pub use request::Req;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cedargate::config::{Config, ListenAddr};
use cedargate::pipeline::checker::{Clock, FixedClock, SystemClock};
use cedargate::server::app::{self, Running};
use cedargate::server::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use cedargate::server::proto::envoy::service::auth::v3::{CheckRequest, CheckResponse};

pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn shipped_policies() -> PathBuf {
    repo_dir().join("policies")
}

/// Copies the shipped policy directory's files into `dir`.
pub fn copy_shipped_policies(dir: &std::path::Path) {
    for entry in std::fs::read_dir(shipped_policies()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
}

/// A copy of the shipped policies in a temporary directory, for tests that edit it.
pub fn shipped_policies_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_shipped_policies(dir.path());
    dir
}

/// Default configuration for tests: shipped policies, loopback port 0 for Check and
/// admin, no audit log (tests of the audit log turn it on with a file sink).
pub fn test_config(policies: PathBuf) -> Config {
    let mut config = Config::default();
    config.server.listen = ListenAddr::Tcp(([127, 0, 0, 1], 0).into());
    config.admin.listen = Some(([127, 0, 0, 1], 0).into());
    config.audit.enabled = false;
    config.server.shutdown_timeout = Duration::from_secs(5);
    config.policies.dir = policies;
    config.identity.trust_domains = vec!["example.org".to_owned()];
    config
}

pub async fn start(config: Config) -> Running {
    start_with_clock(config, Arc::new(SystemClock)).await
}

pub async fn start_at(config: Config, now: SystemTime) -> Running {
    start_with_clock(config, Arc::new(FixedClock(now))).await
}

pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> Running {
    app::start(config, clock).await.expect("cedargate starts")
}

pub async fn client(addr: &str) -> AuthorizationClient<tonic::transport::Channel> {
    AuthorizationClient::connect(format!("http://{addr}")).await.expect("connect to cedargate")
}

pub async fn check(running: &Running, request: CheckRequest) -> CheckResponse {
    client(&running.local_addr).await.check(request).await.expect("Check succeeds at the gRPC level").into_inner()
}

/// A response's dynamic metadata, as Envoy decodes it: a `google.protobuf.Struct`
/// (our proto declares the field as bytes).
pub fn dynamic_metadata(response: &CheckResponse) -> prost_types::Struct {
    <prost_types::Struct as prost::Message>::decode(response.dynamic_metadata.as_slice())
        .expect("dynamic metadata is a google.protobuf.Struct")
}

/// The HTTP status and the reason code of a response (200/"allow" for an allow).
pub fn outcome(response: &CheckResponse) -> (u16, String) {
    use cedargate::server::proto::envoy::service::auth::v3::check_response::HttpResponse;
    match &response.http_response {
        Some(HttpResponse::OkResponse(_)) => {
            assert_eq!(response.status.as_ref().map(|s| s.code), Some(0));
            (200, "allow".to_owned())
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            let body: serde_json::Value = serde_json::from_str(&denied.body).expect("deny body is JSON");
            let status = denied.status.as_ref().map_or(0, |s| s.code);
            assert_ne!(response.status.as_ref().map(|s| s.code), Some(0), "a deny never has gRPC status OK");
            (u16::try_from(status).unwrap(), body["reason"].as_str().unwrap_or_default().to_owned())
        }
        None => panic!("response without http_response"),
    }
}

/// One plain HTTP/1.1 request to the admin listener: (status, body).
pub fn admin_request(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the admin listener");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of one sample line (`name{labels} value`) of a Prometheus scrape.
pub fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
}

/// The real `cedargate` binary, started with a config file; killed on drop.
pub struct Binary {
    pub child: std::process::Child,
    pub addr: String,
    pub admin: std::net::SocketAddr,
}

impl Binary {
    /// Starts `cedargate serve --config <dir>/cedargate.toml` after appending the
    /// listen addresses to `config` (which must not set `[server]` or `[admin]`).
    /// stderr (the logs) goes to `<dir>/stderr.log`, stdout to `<dir>/stdout.log`.
    pub fn start(dir: &std::path::Path, config: &str) -> Binary {
        Binary::start_with_admin(dir, "", config)
    }

    /// `start`, with further `[admin]` keys (`admin` is their TOML lines).
    pub fn start_with_admin(dir: &std::path::Path, admin: &str, config: &str) -> Binary {
        Binary::start_with(dir, "", admin, config)
    }

    /// `start`, with further `[server]` and `[admin]` keys. Both listeners bind
    /// port 0; the ports the binary got are read back from its log, so no port is
    /// picked, released and hoped to be still free.
    pub fn start_with(dir: &std::path::Path, server: &str, admin: &str, config: &str) -> Binary {
        let write = |grpc: &str, admin_addr: &str| {
            let text = format!(
                "[server]\nlisten = \"{grpc}\"\n{server}\n[admin]\nlisten = \"{admin_addr}\"\n{admin}\n{config}"
            );
            std::fs::write(dir.join("cedargate.toml"), text).unwrap();
        };
        write("127.0.0.1:0", "127.0.0.1:0");
        let mut child = Binary::spawn(dir);
        let (grpc, admin_addr) = Binary::bound_addresses(&mut child, dir);
        // A restart binds the ports this run was given.
        write(&grpc, &admin_addr.to_string());
        let mut binary = Binary { child, addr: grpc, admin: admin_addr };
        binary.wait_listening(dir);
        binary
    }

    /// The gRPC and admin addresses the binary reports in its log once bound.
    fn bound_addresses(child: &mut std::process::Child, dir: &std::path::Path) -> (String, std::net::SocketAddr) {
        let started = std::time::Instant::now();
        loop {
            let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            let addr = |message| ports::logged_address(&log, message);
            if let (Some(grpc), Some(admin)) = (addr("cedargate listening"), addr("admin listening")) {
                return (grpc, admin.parse().unwrap());
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("cedargate exited with {status}: {log}");
            }
            assert!(started.elapsed() < Duration::from_secs(20), "cedargate did not report its addresses: {log}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn spawn(dir: &std::path::Path) -> std::process::Child {
        let log = |name: &str| std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_cedargate"))
            .args(["serve", "--config"])
            .arg(dir.join("cedargate.toml"))
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .unwrap()
    }

    fn wait_listening(&mut self, dir: &std::path::Path) {
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(self.admin).is_err() || std::net::TcpStream::connect(&self.addr).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cedargate exited with {status}: {}", self.stderr(dir));
            }
            assert!(started.elapsed() < Duration::from_secs(20), "cedargate did not start: {}", self.stderr(dir));
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Starts the binary again on the same addresses and configuration, once the
    /// previous process has exited.
    pub fn restart(&mut self, dir: &std::path::Path) {
        assert!(self.child.try_wait().unwrap().is_some(), "the previous process still runs");
        self.child = Binary::spawn(dir);
        self.wait_listening(dir);
    }

    /// SIGKILL, and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr(&self, dir: &std::path::Path) -> String {
        std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
    }

    /// SIGTERM, then waits (bounded) for a graceful exit; true if it exited 0.
    pub fn terminate(&mut self) -> bool {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped `entities.json` with a deeper hierarchy, so that what a request's
/// entities inherit from it decides something: the storefront group inside
/// `Group::"all-services"`, and a stored `Path::"/api/orders"` inside
/// `Path::"/protected"`.
pub fn nested_entities() -> serde_json::Value {
    let shipped = std::fs::read_to_string(shipped_policies().join("entities.json")).unwrap();
    let mut entities: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    if let Some(list) = entities.as_array_mut() {
        for entry in list.iter_mut() {
            if entry["uid"]["id"] == "storefront" {
                entry["parents"] = serde_json::json!([{ "type": "Group", "id": "all-services" }]);
            }
        }
        list.push(serde_json::json!({ "uid": { "type": "Group", "id": "all-services" }, "attrs": {}, "parents": [] }));
        list.push(serde_json::json!({ "uid": { "type": "Path", "id": "/api/orders" }, "attrs": {}, "parents": [{ "type": "Path", "id": "/protected" }] }));
    }
    entities
}

/// A parsed peer certificate as the SVID rules leave it, for building requests
/// without a PKI: `sha256` names it, valid `lifetime` seconds from `not_before`.
pub fn peer_certificate(
    principal: &str,
    sha256: [u8; 32],
    serial: &str,
    not_before: i64,
    lifetime: i64,
) -> cedargate::identity::certificate::PeerCertificate {
    cedargate::identity::certificate::PeerCertificate {
        sha256,
        sha256_hex: sha256.iter().map(|b| format!("{b:02x}")).collect(),
        serial: serial.to_owned(),
        issuer: "O=test".into(),
        not_before,
        not_after: not_before + lifetime,
        is_ca: false,
        key_usage: Some(cedargate::identity::certificate::KeyUsage {
            digital_signature: true,
            key_cert_sign: false,
            crl_sign: false,
        }),
        uri_sans: vec![principal.to_owned()],
    }
}

/// What a bearer token's verification leaves, for building requests without
/// signing one: issuer `https://issuer.example`, audience `orders`, a `jti` when
/// it has an `iat`.
pub struct TokenFacts {
    pub as_subject: bool,
    pub sub: String,
    pub scope: Vec<String>,
    pub exp: i64,
    pub iat: Option<i64>,
    pub bound: bool,
    pub claims: Vec<(String, cedargate::credentials::token::ClaimValue)>,
}

pub fn verified_token(facts: TokenFacts) -> cedargate::credentials::token::VerifiedToken {
    use cedargate::config::PrincipalFrom;
    let TokenFacts { as_subject, sub, scope, exp, iat, bound, claims } = facts;
    cedargate::credentials::token::VerifiedToken {
        verified: std::sync::Arc::new(cedargate::credentials::token::TokenClaims {
            iss: "https://issuer.example".into(),
            sub,
            aud: vec!["orders".into()],
            scope,
            jti: iat.map(|i| format!("j{i}")),
            client_id: None,
            iat,
            exp,
            claims,
            fingerprint: String::new(),
            principal: if as_subject { PrincipalFrom::Subject } else { PrincipalFrom::Peer },
            forward: Vec::new(),
        }),
        bound,
    }
}
