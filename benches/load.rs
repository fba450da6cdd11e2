//! cedargate-load: drives `Authorization/Check` over gRPC on 127.0.0.1 and reports
//! throughput and latency percentiles, each next to the same measurement of a
//! no-op Check server taken in the same run (the floor of any ext_authz server).
//!
//!     cargo bench --bench load -- [--duration 10] [--concurrency 64] [--connections 4]
//!                                 [--scenario NAME]... [--rss] [--no-audit]
//!
//! Scenarios: `cached` (one Envoy-shaped request, answered from the decision
//! cache), `uncached` (100 policies, a verified ES256 token and a certificate, a
//! new path on every request so every decision is evaluated), `policies-10000`
//! (10,000 policies, uncached), `tokens-cold` (every token new: signature check on
//! every request). For each: the maximum throughput at `--concurrency`, then p99
//! latency at half that rate (open loop, measured from each request's scheduled
//! send time, so a slow response cannot hide the requests queued behind it).
//! `--rss` fills 100,000 decisions over 10,000 policies and prints resident memory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;

#[path = "../tests/common/jwt.rs"]
#[allow(dead_code)]
mod jwt;

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedargate::check::{Checker, SystemClock};
use cedargate::config::{Config, IssuerConfig, ListenAddr};
use cedargate::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use cedargate::proto::envoy::service::auth::v3::CheckRequest;
use support::{micros, Stats};

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";

struct Args {
    duration: Duration,
    concurrency: usize,
    connections: usize,
    scenarios: Vec<String>,
    rss: bool,
    /// Write audit records (to a file), as a production server would.
    audit: bool,
}

fn args() -> Args {
    let mut args = Args {
        duration: Duration::from_secs(10),
        concurrency: 64,
        connections: 4,
        scenarios: Vec::new(),
        rss: false,
        audit: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--duration" => args.duration = Duration::from_secs_f64(value().parse().unwrap()),
            "--concurrency" => args.concurrency = value().parse().unwrap(),
            "--connections" => args.connections = value().parse().unwrap(),
            "--scenario" => args.scenarios.push(value()),
            "--rss" => args.rss = true,
            "--no-audit" => args.audit = false,
            "--bench" => {}
            other => panic!("unknown argument {other}; see the comment at the top of benches/load.rs"),
        }
    }
    if args.scenarios.is_empty() && !args.rss {
        args.scenarios = ["cached", "uncached", "policies-10000", "tokens-cold"].map(String::from).to_vec();
    }
    args
}

/// An Envoy-shaped CheckRequest (the headers Envoy 1.40 sends for a browser-like GET).
/// What a scenario sends: the `i`-th request of a run.
type Make = Arc<dyn Fn(usize) -> CheckRequest + Send + Sync>;

struct Scenario {
    name: String,
    about: &'static str,
    make: Make,
    /// Whether every answer must be an allow (checked on a sample).
    _dir: Vec<tempfile::TempDir>,
    config: Config,
}

fn scenario(name: &str, pki: &pki::Pki) -> Scenario {
    let leaf = pki.svid(FRONTEND);
    let cert = leaf.cert_pem.clone();
    let mut config = Config::default();
    config.server.listen = ListenAddr::Tcp("127.0.0.1:0".into());
    config.admin.listen = String::new();
    config.identity.trust_domains = vec!["example.org".into()];
    config.policies.watch = false;
    let audit = tempfile::tempdir().unwrap();
    config.audit.sink = audit.path().join("audit.jsonl").display().to_string();
    let signer = jwt::Signer::ec("ec-1");
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("jwks.json"), jwt::jwks(&[&signer])).unwrap();
    let issuer = IssuerConfig {
        issuer: jwt::ISSUER.into(),
        audiences: vec![jwt::AUDIENCE.into()],
        jwks_file: Some(keys.path().join("jwks.json")),
        ..Default::default()
    };
    match name {
        "cached" => {
            config.policies.dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
            let req = support::envoy_request(&cert, "/api/orders/42", None);
            Scenario {
                name: name.into(),
                about: "shipped policies, one repeated request: decision cache hits",
                make: Arc::new(move |_| req.clone()),
                _dir: vec![audit, keys],
                config,
            }
        }
        "uncached" => {
            let policies = support::policies_with(100);
            config.policies.dir = policies.path().to_owned();
            config.tokens.issuers = vec![issuer];
            let token = signer.sign(&jwt::claims(jwt::now(), "alice"));
            Scenario {
                name: name.into(),
                about: "100 policies + shipped, verified ES256 token, certificate, new path per request",
                make: Arc::new(move |i| support::envoy_request(&cert, &format!("/api/orders/{i}"), Some(&token))),
                _dir: vec![audit, keys, policies],
                config,
            }
        }
        "policies-10000" => {
            let policies = support::policies_with(10_000);
            config.policies.dir = policies.path().to_owned();
            Scenario {
                name: name.into(),
                about: "10,000 policies + shipped, certificate, new path per request",
                make: Arc::new(move |i| support::envoy_request(&cert, &format!("/api/orders/{i}"), None)),
                _dir: vec![audit, keys, policies],
                config,
            }
        }
        "tokens-cold" => {
            config.policies.dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
            config.tokens.issuers = vec![issuer];
            // No verified-signature cache: every request pays for its signature.
            config.cache.token_entries = 0;
            // A pool of distinct tokens, so no signature is ever verified twice in a run.
            let now = jwt::now();
            let tokens: Vec<String> = (0..20_000)
                .map(|i| {
                    let mut c = jwt::claims(now, "alice");
                    c["jti"] = format!("t-{i}").into();
                    signer.sign(&c)
                })
                .collect();
            Scenario {
                name: name.into(),
                about: "shipped policies, ES256 tokens, signature verified on every request (signature cache off)",
                make: Arc::new(move |i| {
                    support::envoy_request(&cert, "/api/orders/42", Some(&tokens[i % tokens.len()]))
                }),
                _dir: vec![audit, keys],
                config,
            }
        }
        other => panic!("unknown scenario {other}"),
    }
}

async fn clients(addr: SocketAddr, connections: usize) -> Vec<AuthorizationClient<tonic::transport::Channel>> {
    let mut clients = Vec::new();
    for _ in 0..connections {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        clients.push(AuthorizationClient::new(channel));
    }
    clients
}

/// Closed loop: `concurrency` tasks, each sending its next request when the last
/// is answered.
async fn closed_loop(addr: SocketAddr, make: &Make, args: &Args, duration: Duration) -> Stats {
    let clients = clients(addr, args.connections).await;
    let counter = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for t in 0..args.concurrency {
        let mut client = clients[t % clients.len()].clone();
        let (make, counter) = (Arc::clone(make), Arc::clone(&counter));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut errors = 0;
            while Instant::now() < deadline {
                let request = make(counter.fetch_add(1, Ordering::Relaxed));
                let sent = Instant::now();
                match client.check(request).await {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    support::gather(tasks, started).await
}

/// Open loop at `rate` requests/s. Latency is measured from the actual send: the
/// timer that schedules sends has 1 ms granularity, which would otherwise be added
/// to every sample. At half the maximum rate nothing queues for long, so what the
/// scheduled-time measure guards against (a stall hiding queued requests) is
/// reported separately as the share of sends that left over 1 ms late.
async fn open_loop(addr: SocketAddr, make: &Make, args: &Args, rate: f64, duration: Duration) -> Stats {
    let clients = clients(addr, args.connections).await;
    let counter = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let late = Arc::new(AtomicUsize::new(0));
    let per_task = rate / args.concurrency as f64;
    let interval = Duration::from_secs_f64(1.0 / per_task);
    let mut tasks = Vec::new();
    for t in 0..args.concurrency {
        let mut client = clients[t % clients.len()].clone();
        let (make, counter) = (Arc::clone(make), Arc::clone(&counter));
        // Spread the tasks' first sends over one interval.
        let first = started + interval.mul_f64(t as f64 / args.concurrency as f64);
        let late = Arc::clone(&late);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut scheduled = first;
            while scheduled < started + duration {
                tokio::time::sleep_until(scheduled.into()).await;
                let request = make(counter.fetch_add(1, Ordering::Relaxed));
                let sent = Instant::now();
                if sent.duration_since(scheduled) > Duration::from_millis(2) {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                match client.check(request).await {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(_) => errors += 1,
                }
                scheduled += interval;
            }
            (latencies, errors)
        }));
    }
    let mut stats = support::gather(tasks, started).await;
    stats.late = late.load(Ordering::Relaxed);
    stats
}

fn row(name: &str, max: &Stats, half: &Stats, floor: Option<&Stats>) {
    let ratio = floor.map_or("1.00".to_owned(), |f| format!("{:.2}", max.per_second / f.per_second));
    println!(
        "| {name:<16} | {:>9.0} | {ratio:>8} | {:>5} | {:>5} | {:>5} | {:>6} | {:>9.0} | {:>6} | {:>6} |",
        max.per_second,
        micros(max.p50),
        micros(max.p90),
        micros(max.p99),
        micros(max.p999),
        half.per_second,
        micros(half.p50),
        micros(half.p99),
    );
    if half.late * 100 > half.requests {
        println!("  ({name}: {} of {} sends at half rate left over 2 ms late)", half.late, half.requests);
    }
    if max.errors + half.errors > 0 {
        println!("  ({name}: {} failed Checks)", max.errors + half.errors);
    }
}

fn measure(runtime: &tokio::runtime::Runtime, addr: SocketAddr, make: &Make, args: &Args) -> (Stats, Stats) {
    runtime.block_on(async {
        // Warm up connections, caches and the allocator.
        closed_loop(addr, make, args, Duration::from_secs(1)).await;
        let max = closed_loop(addr, make, args, args.duration).await;
        let half = open_loop(addr, make, args, max.per_second / 2.0, args.duration).await;
        (max, half)
    })
}

fn rss(pki: &pki::Pki) {
    let base = support::rss_mib();
    let policies = support::policies_with(10_000);
    let mut config = Config::default();
    config.policies.dir = policies.path().to_owned();
    config.identity.trust_domains = vec!["example.org".into()];
    config.cache.max_entries = 100_000;
    let started = Instant::now();
    let checker = Checker::load(config, Arc::new(SystemClock)).unwrap();
    let load = started.elapsed();
    let loaded = support::rss_mib();
    let leaf = pki.svid(FRONTEND);
    for i in 0..100_000 {
        let input =
            cedargate::wire::check_input(support::envoy_request(&leaf.cert_pem, &format!("/api/orders/{i}"), None));
        assert!(checker.check(&input).is_allowed());
    }
    let entries = checker.cache().map_or(0, |c| c.entries());
    println!(
        "RSS: {base:.1} MiB at start; {loaded:.1} MiB with 10,000 policies (loaded in {:.2} s); {:.1} MiB with {entries} cached decisions",
        load.as_secs_f64(),
        support::rss_mib()
    );
}

fn main() {
    let args = args();
    let pki = pki::Pki::new();
    if args.rss {
        rss(&pki);
    }
    if args.scenarios.is_empty() {
        return;
    }
    let load = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!(
        "\nconcurrency {} over {} connections, {} s per measurement, {} CPUs\n",
        args.concurrency,
        args.connections,
        args.duration.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| server           | max Check/s | × floor | p50 µs | p90 µs | p99 µs | p99.9 µs | at half: Check/s | p50 µs | p99 µs |");
    println!(
        "|------------------|----------:|--------:|------:|------:|------:|-------:|----------:|-------:|-------:|"
    );
    let floor_runtime = support::server_runtime();
    let floor_addr = support::start_noop(&floor_runtime);
    let leaf = pki.svid(FRONTEND);
    let floor_request = support::envoy_request(&leaf.cert_pem, "/api/orders/42", None);
    let floor_make: Make = Arc::new(move |_| floor_request.clone());
    let (floor, floor_half) = measure(&load, floor_addr, &floor_make, &args);
    row("no-op (floor)", &floor, &floor_half, None);
    let mut notes = Vec::new();
    for name in &args.scenarios {
        // The floor again, right before this scenario: machines like this one drift
        // by tens of percent over a minute, so each ratio is to its neighbour.
        let floor = load.block_on(closed_loop(floor_addr, &floor_make, &args, args.duration));
        let mut scenario = scenario(name, &pki);
        scenario.config.audit.enabled = args.audit;
        let server = support::server_runtime();
        let running = server.block_on(cedargate::app::start(scenario.config.clone(), Arc::new(SystemClock))).unwrap();
        let addr: SocketAddr = running.local_addr.parse().unwrap();
        // Every answer in a scenario is an allow: a deny would measure the wrong path.
        let probe = load.block_on(async {
            let mut c = clients(addr, 1).await.remove(0);
            c.check((scenario.make)(usize::MAX / 2)).await.unwrap().into_inner()
        });
        assert!(
            matches!(
                probe.http_response,
                Some(cedargate::proto::envoy::service::auth::v3::check_response::HttpResponse::OkResponse(_))
            ),
            "scenario {name} is not answered with an allow: {probe:?}"
        );
        let (max, half) = measure(&load, addr, &scenario.make, &args);
        row(&scenario.name, &max, &half, Some(&floor));
        notes.push(format!(
            "- {}: {} (floor measured just before: {:.0} Check/s)",
            scenario.name, scenario.about, floor.per_second
        ));
        server.block_on(running.shutdown()).unwrap();
    }
    println!();
    for note in notes {
        println!("{note}");
    }
}
