//! Three cedargate replicas behind one Envoy (the shipped envoy.yaml: active gRPC
//! health checks, outlier detection, retries), under continuous load through
//! Envoy, while each replica in turn is (a) restarted with SIGTERM, (b) killed with
//! SIGKILL, and (c) given a new policy version. Prints the figures the README
//! quotes; fails if a graceful restart or a policy rollout fails any request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::envoy::{mesh_pki, start_upstream, Envoy};
use common::pki::Leaf;
use common::{admin_request, Binary};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};

/// Requests sent and failed (anything but 200) through Envoy.
#[derive(Default)]
struct Load {
    sent: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn counts(&self) -> (u64, u64) {
        (self.sent.load(Ordering::SeqCst), self.failed.load(Ordering::SeqCst))
    }
}

/// One keep-alive HTTPS connection with the frontend's certificate, sending
/// `GET /api/orders/1` every few milliseconds; reconnects after an error.
async fn client(load: Arc<Load>, port: u16, tls: Arc<rustls::ClientConfig>) {
    use http_body_util::BodyExt;
    while !load.stop.load(Ordering::SeqCst) {
        let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { continue };
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls));
        let Ok(stream) = connector.connect(ServerName::try_from("orders.example.org").unwrap(), tcp).await else {
            continue;
        };
        let io = hyper_util::rt::TokioIo::new(stream);
        let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(io).await else { continue };
        tokio::spawn(connection);
        while !load.stop.load(Ordering::SeqCst) {
            let request = hyper::Request::get("/api/orders/1")
                .header("host", "orders.example.org")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            load.sent.fetch_add(1, Ordering::SeqCst);
            match sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    if status != 200 {
                        load.failed.fetch_add(1, Ordering::SeqCst);
                        let why = format!("{status} {}", String::from_utf8_lossy(&body));
                        load.failures.lock().unwrap().push(why);
                    }
                }
                Err(e) => {
                    // The connection to Envoy broke: that is a failed request too.
                    load.failed.fetch_add(1, Ordering::SeqCst);
                    load.failures.lock().unwrap().push(format!("client error: {e}"));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
    }
}

fn client_tls(ca_pem: &str, frontend: &Leaf) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(frontend.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(frontend.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    Arc::new(config)
}

struct Replica {
    dir: PathBuf,
    policies: PathBuf,
    binary: Binary,
}

impl Replica {
    fn start(root: &Path, n: usize) -> Replica {
        let dir = root.join(format!("replica-{n}"));
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        common::copy_shipped_policies(&policies);
        let config = format!(
            "[policies]\ndir = \"{}\"\n[identity]\ntrust_domains = [\"example.org\"]\n[audit]\nenabled = false\n",
            policies.display()
        );
        // The drain outlasts Envoy's health-check interval (0.5 s) many times over, so
        // a machine busy with other tests still notices NOT_SERVING in time.
        let binary = Binary::start_with(&dir, "drain = \"3s\"\nshutdown_timeout = \"5s\"", "", &config);
        Replica { dir, policies, binary }
    }

    fn port(&self) -> u16 {
        self.binary.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn version(&self) -> String {
        let (_, body) = admin_request(self.binary.admin, "GET", "/status", "");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        status["policies"]["version"].as_str().unwrap_or_default().to_owned()
    }
}

fn wait_healthy(envoy: &Envoy, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while envoy.healthy_endpoints("cedargate") != want {
        assert!(Instant::now() < deadline, "Envoy does not see {want} healthy replicas");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `phase` under the load and returns the requests sent and failed during it,
/// and how long it took.
fn during(load: &Load, phase: impl FnOnce()) -> (u64, u64, Duration) {
    let (sent, failed) = load.counts();
    let started = Instant::now();
    phase();
    // Requests keep flowing a moment after the change, to count late failures.
    std::thread::sleep(Duration::from_millis(500));
    let (sent_after, failed_after) = load.counts();
    (sent_after - sent, failed_after - failed, started.elapsed())
}

#[test]
fn replicas_restart_die_and_take_new_policies_under_load() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    let (pki, frontend) = mesh_pki(d);
    let mut replicas: Vec<Replica> = (0..3).map(|n| Replica::start(d, n)).collect();
    let upstream = start_upstream();
    let ports: Vec<u16> = replicas.iter().map(Replica::port).collect();
    let envoy = Envoy::start_with(d, &ports, upstream.port, false);
    wait_healthy(&envoy, 3);

    let load = Arc::new(Load::default());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tls = client_tls(&pki.ca_pem(), &frontend);
    for _ in 0..4 {
        runtime.spawn(client(Arc::clone(&load), envoy.port, Arc::clone(&tls)));
    }
    // Cold start is not what this test is about: on a busy debug-build machine the
    // very first Checks can outlast Envoy's 0.5 s ext_authz timeout. Wait (bounded)
    // for a clean second of load, then count from there.
    let warm_up = Instant::now();
    loop {
        let (sent, failed, _) = during(&load, || std::thread::sleep(Duration::from_millis(500)));
        if sent > 0 && failed == 0 {
            break;
        }
        assert!(
            warm_up.elapsed() < Duration::from_secs(20),
            "the load never ran cleanly before anything happened: {:?}",
            load.failures.lock().unwrap()
        );
    }
    let cold_failures = std::mem::take(&mut *load.failures.lock().unwrap());
    println!("replicas: warm-up took {} ms; failures while cold: {cold_failures:?}", warm_up.elapsed().as_millis());

    // (a) Each replica in turn: SIGTERM (NOT_SERVING, drain, exit 0), then back.
    let graceful = during(&load, || {
        for replica in &mut replicas {
            assert!(replica.binary.terminate(), "a graceful shutdown exits 0");
            replica.binary.restart(&replica.dir);
            wait_healthy(&envoy, 3);
        }
    });

    // (b) Each replica in turn: SIGKILL, then back after a second.
    let killed = during(&load, || {
        for replica in &mut replicas {
            replica.binary.kill();
            std::thread::sleep(Duration::from_secs(1));
            replica.binary.restart(&replica.dir);
            wait_healthy(&envoy, 3);
        }
    });

    // (c) A new policy version, reaching the replicas one after another as a
    // ConfigMap update reaches pods; done when every replica serves it.
    let before = replicas[0].version();
    let mut converged = Duration::ZERO;
    let rollout = during(&load, || {
        let started = Instant::now();
        for replica in &replicas {
            std::fs::write(
                replica.policies.join("rollout.cedar"),
                "@id(\"rollout-marker\")\npermit (principal == Workload::\"spiffe://example.org/ns/default/sa/frontend\", action == Action::\"GET\", resource in Path::\"/api/rollout\");\n",
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
        let deadline = started + Duration::from_secs(20);
        loop {
            let versions: Vec<String> = replicas.iter().map(Replica::version).collect();
            if versions.iter().all(|v| *v == versions[0] && *v != before) {
                converged = started.elapsed();
                break;
            }
            assert!(Instant::now() < deadline, "the replicas did not converge: {versions:?}");
            std::thread::sleep(Duration::from_millis(25));
        }
    });

    load.stop.store(true, Ordering::SeqCst);
    runtime.shutdown_timeout(Duration::from_secs(5));
    let failures = load.failures.lock().unwrap().clone();
    println!("replicas: (a) SIGTERM each of 3 in turn: {} requests, {} failed", graceful.0, graceful.1);
    println!("replicas: (b) SIGKILL each of 3 in turn: {} requests, {} failed", killed.0, killed.1);
    println!(
        "replicas: (c) new policy version: {} requests, {} failed; every replica served it {} ms after the first write",
        rollout.0,
        rollout.1,
        converged.as_millis()
    );
    assert_eq!(graceful.1, 0, "a graceful restart failed requests: {failures:?}");
    assert_eq!(rollout.1, 0, "a policy rollout failed requests: {failures:?}");
    // A killed replica fails the Checks in flight on its connection and those Envoy
    // balances to it until its next health check (every 0.5 s, 0.25 s timeout)
    // marks it down: per kill at most a third of the requests of 0.75 s, plus one
    // in flight per client. Envoy answers each with 403: closed, never open.
    let rate = killed.0 as f64 / killed.2.as_secs_f64();
    let bound = (3.0 * (rate / 3.0 * 0.75 + 4.0)).ceil() as u64;
    println!("replicas: (b) bound: {bound} at {rate:.0} requests/s");
    assert!(killed.1 <= bound, "{} failed when replicas were killed: {failures:?}", killed.1);
    assert!(failures.iter().all(|f| f.starts_with("403")), "a killed replica only ever denies: {failures:?}");
    assert!(graceful.0 > 0 && killed.0 > 0 && rollout.0 > 0);
}
