//! cedargate's Check cost, measured from outside: h2load (nghttp2's C load
//! generator, on one core) drives the real `cedargate` binary over gRPC, side by
//! side with a no-op Check server built from this repository (the floor of any
//! ext_authz server), in rounds: each run of a scenario right after a run of the
//! floor.
//!
//!     cargo bench --bench grpc -- [--duration 10] [--rounds 3] [--scenario NAME]... [--perf DIR] [--syscalls]
//!                                   [--rate-streams 16] [--rate-bursts]
//!
//! `--perf DIR` also profiles each server (`perf record --call-graph dwarf`, Debian's
//! `linux-perf`) during one more run after the measured rounds; `--syscalls` counts
//! each server's futex, send, receive, write, epoll and madvise calls and its page
//! faults per Check in one more run (`perf stat`; counts compare across noisy runs
//! where times do not).
//!
//! For each scenario it reports the median throughput, its median ratio to the
//! floor run just before, the server's CPU µs per Check (from /proc/<pid>/stat:
//! stable where throughput is not) and its ratio to that floor run's, and p50/p99
//! latency at half the maximum rate, beside the floor's p99 at its own half rate
//! measured just before. h2load's `--rps` timer fires no more often than every
//! 10 ms per client, so each tick releases a burst that queues at the server. The
//! half-rate runs therefore use `RATE_CLIENTS` connections opened 1 ms apart, whose
//! ticks take turns: a millisecond's worth of Checks arrives at once, every
//! millisecond. That is still burstier than Poisson arrivals at the same rate, so
//! the floor's own p99 is printed beside each. `--rate-bursts` goes back to
//! `CLIENTS` connections ticking together (10 ms' worth at once), and
//! `--rate-streams` (16 by default, as in the maximum runs) caps what a tick can
//! send at once on each connection.
//! Installs h2load (`apt-get install nghttp2-client`) when it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;

#[path = "../tests/common/jwt.rs"]
#[allow(dead_code)]
mod jwt;

#[path = "../tests/common/request.rs"]
#[allow(dead_code)]
mod request;

mod support;

use support::process::{self, Server};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use prost::Message;

/// Connections and streams per connection: enough in flight to saturate a server
/// on one core, from one h2load thread on the other.
const CLIENTS: u32 = 4;
const STREAMS: u32 = 16;

struct Args {
    duration: u64,
    rounds: usize,
    scenarios: Vec<String>,
    /// Where to write `perf record --call-graph dwarf` profiles of each server,
    /// taken during one extra run after the measured rounds.
    perf: Option<PathBuf>,
    /// Also count each server's system calls per Check (`perf stat` on syscall
    /// tracepoints) during one more run: a count, so it compares across a noisy
    /// machine where CPU time does not.
    syscalls: bool,
    /// Streams per connection in the half-rate runs.
    rate_streams: u32,
    /// Half-rate runs from `CLIENTS` connections whose `--rps` timers tick
    /// together (10 ms' worth of Checks at once), as before `RATE_CLIENTS`.
    rate_bursts: bool,
}

fn args() -> Args {
    let mut args = Args {
        duration: 10,
        rounds: 3,
        scenarios: Vec::new(),
        perf: None,
        syscalls: false,
        rate_streams: STREAMS,
        rate_bursts: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--duration" => args.duration = value().parse().unwrap(),
            "--rounds" => args.rounds = value().parse().unwrap(),
            "--scenario" => args.scenarios.push(value()),
            "--perf" => args.perf = Some(PathBuf::from(value())),
            "--syscalls" => args.syscalls = true,
            "--rate-streams" => args.rate_streams = value().parse().unwrap(),
            "--rate-bursts" => args.rate_bursts = true,
            "--bench" => {}
            other => panic!("unknown argument {other}; see the comment at the top of benches/grpc.rs"),
        }
    }
    args
}

/// One Envoy-shaped CheckRequest as a gRPC message on the wire (5-byte prefix).
fn grpc_body(cert_pem: &str, token: Option<&str>) -> Vec<u8> {
    let request = request::Req::new(support::FRONTEND, Some(cert_pem)).path("/api/orders/42").envoy_headers();
    let message = token.map_or(request.clone(), |t| request.bearer(t)).build().encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&message);
    body
}

/// Checks the server answers the body with an allow (a deny would be measured as
/// fast as an allow: h2load sees HTTP 200 either way).
fn assert_allows(port: u16, cert_pem: &str, token: Option<&str>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use cedargate::server::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
        let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
        let body = grpc_body(cert_pem, token);
        let request = cedargate::server::proto::envoy::service::auth::v3::CheckRequest::decode(&body[5..]).unwrap();
        let response = client.check(request).await.unwrap().into_inner();
        assert_eq!(response.status.map(|s| s.code), Some(0), "the benchmark request must be allowed");
    });
}

#[derive(Clone, Copy)]
struct Run {
    per_second: f64,
    cpu_us: f64,
    p50_us: f64,
    p99_us: f64,
}

/// How one h2load run sends: as fast as the server answers (closed loop, `STREAMS`
/// per connection), or at a rate in all with that many streams per connection,
/// from `RATE_CLIENTS` staggered connections or from `CLIENTS` that tick together.
#[derive(Clone, Copy)]
enum Pace {
    Max,
    Rate { per_second: f64, streams: u32, staggered: bool },
}

/// Connections of a half-rate run, opened `RATE_TICK_MS` apart: h2load's `--rps`
/// timer ticks every 10 ms per connection, from the moment that connection is
/// made, so ten connections opened 1 ms apart tick in turn, one every millisecond,
/// and the server sees the rate as a burst each millisecond (a millisecond's worth
/// of Checks at once: burstier than Poisson arrivals at the same rate), not as
/// one burst of 10 ms' worth per tick.
const RATE_CLIENTS: u32 = 10;
const RATE_TICK_MS: u32 = 1;

/// Empties the servers' audit files (in `dir`, beside h2load's log) before a run,
/// as `copytruncate` log rotation would; each server appends, so it writes on
/// from the start. Without this, a full run leaves gigabytes of dirty page cache
/// behind (a cache hit writes about 50 MB of records a second), and the kernel
/// writes it back to the disk during later runs (up to 0.75 GB dirty within one
/// scenario's three rounds here, written back in bursts by kernel threads that
/// take the cores the server and h2load run on). Writing each record into the
/// page cache stays part of the server's CPU.
fn truncate_audit_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("audit-") && name.ends_with(".jsonl") {
            let file = std::fs::OpenOptions::new().write(true).open(entry.path());
            file.and_then(|f| f.set_len(0)).unwrap();
        }
    }
}

/// One h2load run.
fn h2load(server: &Server, body: &Path, seconds: u64, pace: Pace, log: &Path) -> Run {
    let url = format!("http://127.0.0.1:{}/envoy.service.auth.v3.Authorization/Check", server.port);
    let mut cmd = Command::new("h2load");
    cmd.args(["-t", "1"]);
    match pace {
        Pace::Max => {
            cmd.args(["-c", &CLIENTS.to_string(), "-m", &STREAMS.to_string(), "-D", &seconds.to_string()]);
        }
        Pace::Rate { per_second, streams, staggered } => {
            let clients = if staggered { RATE_CLIENTS } else { CLIENTS };
            let per_client = (per_second / f64::from(clients)).max(1.0).round();
            cmd.args(["-c", &clients.to_string(), "-m", &streams.to_string(), "--rps", &format!("{per_client:.0}")]);
            if staggered {
                // `-r` (connections per period) excludes `-D`: a count of requests
                // makes the run as long instead.
                let total = per_client * f64::from(clients) * seconds as f64;
                cmd.args(["-r", "1", "--rate-period", &format!("{RATE_TICK_MS}ms"), "-n", &format!("{total:.0}")]);
            } else {
                cmd.args(["-D", &seconds.to_string()]);
            }
        }
    }
    cmd.arg("-d").arg(body).args(["-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file"]).arg(log);
    cmd.arg(&url);
    // h2load appends to an existing log: each run starts from an empty one.
    let _ = std::fs::remove_file(log);
    if let Some(dir) = log.parent() {
        truncate_audit_files(dir);
    }
    let cpu_before = server.cpu();
    let out = cmd.output().expect("h2load runs");
    let cpu = server.cpu() - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout);
    let succeeded: f64 = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(", ").find(|p| p.ends_with("succeeded")))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("h2load: {text}{}", String::from_utf8_lossy(&out.stderr)));
    let mut latencies: Vec<f64> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.parse().ok())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    Run {
        per_second: succeeded / seconds as f64,
        cpu_us: cpu.as_secs_f64() * 1e6 / succeeded.max(1.0),
        p50_us: at(0.50).copied().unwrap_or(0.0),
        p99_us: at(0.99).copied().unwrap_or(0.0),
    }
}

/// What `--syscalls` counts per Check, as (label, `perf` event): the system calls
/// that show a server's waits and writes, and its page faults (memory the
/// allocator gave back and takes again).
const COUNTED: [(&str, &str); 8] = [
    ("futex", "syscalls:sys_enter_futex"),
    ("sendto", "syscalls:sys_enter_sendto"),
    ("recvfrom", "syscalls:sys_enter_recvfrom"),
    ("writev", "syscalls:sys_enter_writev"),
    ("write", "syscalls:sys_enter_write"),
    ("epoll_wait", "syscalls:sys_enter_epoll_wait"),
    ("madvise", "syscalls:sys_enter_madvise"),
    ("page faults", "page-faults"),
];

fn count_syscalls(s: &Scenario, seconds: u64, log: &Path) {
    let events: Vec<&str> = COUNTED.iter().map(|(_, event)| *event).collect();
    let stat = std::env::temp_dir().join(format!("cedargate-syscalls-{}.txt", s.name));
    let mut perf = Command::new("perf")
        .args(["stat", "-x", ",", "-o"])
        .arg(&stat)
        .args(["-e", &events.join(","), "-p", &s.server.child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf (Debian's linux-perf) is installed");
    // perf attaches to the process's threads before it counts.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let run = h2load(&s.server, &s.body, seconds, Pace::Max, log);
    let _ = Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
    let _ = perf.wait();
    let checks = run.per_second * seconds as f64;
    // `perf stat -x ,` lines: count, unit, event, ...
    let text = std::fs::read_to_string(&stat).unwrap_or_default();
    let count = |event: &str| -> f64 {
        text.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.get(2).is_some_and(|e| *e == event))
            .and_then(|f| f.first()?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let per_check: Vec<String> =
        COUNTED.iter().map(|(label, event)| format!("{label} {:.2}", count(event) / checks)).collect();
    eprintln!("system calls per Check, {}: {}", s.name, per_check.join(", "));
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Scenario {
    name: &'static str,
    what: &'static str,
    server: Server,
    body: PathBuf,
}

fn main() {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("--serve-noop") {
        process::serve_noop();
    }
    let args = args();
    if Command::new("h2load").arg("--version").output().is_err() {
        eprintln!("installing h2load (Debian's nghttp2-client)");
        let ok = Command::new("apt-get").args(["install", "-y", "-qq", "nghttp2-client"]).status();
        assert!(ok.is_ok_and(|s| s.success()), "install h2load: apt-get install nghttp2-client");
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki::Pki::new();
    let cert = pki.svid(support::FRONTEND).cert_pem;
    let signer = jwt::Signer::ec("bench");
    // In a directory of its own, as deployed: cedargate watches the directory of
    // each file it reloads, and this one also holds h2load's per-request log and
    // the audit files, whose every write would wake the watcher (2.0 futex calls
    // per ES256 Check when they shared one, 0.6 apart).
    std::fs::create_dir(d.join("jwks")).unwrap();
    std::fs::write(d.join("jwks/jwks.json"), jwt::jwks(&[&signer])).unwrap();
    let token = signer.sign(&jwt::claims(jwt::now(), "alice"));
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let many = support::policies_with(10_000);
    let groups = support::entities_with(10_000);
    let audit = |name: &str| format!("[audit]\nsink = \"{}\"\n", d.join(format!("audit-{name}.jsonl")).display());
    let base = |policies: &Path| format!("[policies]\ndir = \"{}\"\nwatch = false\n", policies.display());
    let issuer = format!(
        "[[tokens.issuers]]\nissuer = \"{}\"\naudiences = [\"{}\"]\njwks_file = \"{}\"\n",
        jwt::ISSUER,
        jwt::AUDIENCE,
        d.join("jwks/jwks.json").display()
    );
    let plain_body = d.join("check.bin");
    std::fs::write(&plain_body, grpc_body(&cert, None)).unwrap();
    let token_body = d.join("check-token.bin");
    std::fs::write(&token_body, grpc_body(&cert, Some(&token))).unwrap();
    let configs: Vec<(&str, &str, String, &Path)> = vec![
        (
            "cache-hit",
            "shipped policies, decision cache hit, audit to a file",
            format!("{}{}", base(&shipped), audit("hit")),
            &plain_body,
        ),
        (
            "cache-hit-no-audit",
            "the same, audit log off",
            format!("{}[audit]\nenabled = false\n", base(&shipped)),
            &plain_body,
        ),
        (
            "evaluated",
            "decision cache off: the policies are evaluated for every Check",
            format!("{}{}[cache]\ndecisions = false\n", base(&shipped), audit("eval")),
            &plain_body,
        ),
        (
            "all-caches-off",
            "decision, signature and certificate caches off",
            format!(
                "{}{}[cache]\ndecisions = false\ntoken_entries = 0\ncertificate_entries = 0\n",
                base(&shipped),
                audit("off")
            ),
            &plain_body,
        ),
        (
            "es256-evaluated",
            "a valid ES256 token, decision cache off, verified-token cache on",
            format!("{}{}[cache]\ndecisions = false\n{issuer}", base(&shipped), audit("es256")),
            &token_body,
        ),
        (
            "policies-10000",
            "10,000 policies, decision cache off",
            format!("{}{}[cache]\ndecisions = false\n", base(many.path()), audit("many")),
            &plain_body,
        ),
        (
            "entities-10000",
            "10,000 more groups in entities.json, decision cache off",
            format!("{}{}[cache]\ndecisions = false\n", base(groups.path()), audit("groups")),
            &plain_body,
        ),
    ];
    let mut scenarios = vec![Scenario {
        name: "noop",
        what: "no-op Check server (the floor)",
        server: process::start_noop(),
        body: plain_body.clone(),
    }];
    for (name, what, config, body) in configs {
        if !args.scenarios.is_empty() && !args.scenarios.iter().any(|s| s == name) {
            continue;
        }
        let config = format!("[identity]\ntrust_domains = [\"example.org\"]\n{config}");
        let server = process::start_cedargate(d, &config);
        assert_allows(server.port, &cert, (*body == token_body).then_some(token.as_str()));
        scenarios.push(Scenario { name, what, server, body: body.to_path_buf() });
    }
    eprintln!(
        "{} rounds of {} s per scenario, each after a run of the floor; {CLIENTS} connections × {STREAMS} streams; at half rate {} connections × {} streams",
        args.rounds,
        args.duration,
        if args.rate_bursts { CLIENTS } else { RATE_CLIENTS },
        args.rate_streams
    );
    let log = d.join("h2load.log");
    // Each scenario's run is paired with a run of the floor just before it: the
    // machine's speed drifts within a round too (by a fifth in a minute here),
    // and a ratio to the floor of the same minute cancels it.
    let mut runs: Vec<Vec<Run>> = scenarios.iter().map(|_| Vec::new()).collect();
    let mut floors: Vec<Vec<Run>> = scenarios.iter().map(|_| Vec::new()).collect();
    let measure = |s: &Scenario| {
        let _ = h2load(&s.server, &s.body, 1, Pace::Max, &log); // warm-up
        h2load(&s.server, &s.body, args.duration, Pace::Max, &log)
    };
    for round in 0..args.rounds {
        for (i, s) in scenarios.iter().enumerate().skip(1) {
            let floor = measure(&scenarios[0]);
            let run = measure(s);
            eprintln!(
                "round {round}: {:<20} {:>9.0} Check/s {:>7.1} µs CPU/Check (floor just before: {:>9.0} Check/s {:>7.1} µs)",
                s.name, run.per_second, run.cpu_us, floor.per_second, floor.cpu_us
            );
            runs[i].push(run);
            floors[i].push(floor);
        }
    }
    // The floor's own row: every one of its runs.
    runs[0] = floors.iter().flatten().copied().collect();
    floors[0] = runs[0].clone();
    if let Some(out) = &args.perf {
        std::fs::create_dir_all(out).unwrap();
        for s in &scenarios {
            let data = out.join(format!("perf-{}.data", s.name));
            let mut perf = Command::new("perf")
                .args(["record", "--call-graph", "dwarf", "-F", "499", "-o"])
                .arg(&data)
                .args(["-p", &s.server.child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("perf (Debian's linux-perf) is installed");
            let _ = h2load(&s.server, &s.body, args.duration, Pace::Max, &log);
            let _ = Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
            let _ = perf.wait();
            eprintln!("profile of {}: perf report -i {} --no-children", s.name, data.display());
        }
    }
    if args.syscalls {
        for s in &scenarios {
            count_syscalls(s, args.duration, &log);
        }
    }
    println!("| server | what | Check/s (median) | × no-op (median of pairs) | server CPU µs/Check | CPU × no-op's | at half rate: p50 µs | p99 µs | the floor's p99 just before | RSS MiB |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let floor_rate = median(runs[0].iter().map(|r| r.per_second).collect());
    for (i, s) in scenarios.iter().enumerate() {
        let per_second = median(runs[i].iter().map(|r| r.per_second).collect());
        let ratio = median(runs[i].iter().zip(&floors[i]).map(|(r, f)| r.per_second / f.per_second).collect());
        let cpu = median(runs[i].iter().map(|r| r.cpu_us).collect());
        let cpu_ratio = median(runs[i].iter().zip(&floors[i]).map(|(r, f)| r.cpu_us / f.cpu_us).collect());
        let half_of =
            |rate: f64| Pace::Rate { per_second: rate / 2.0, streams: args.rate_streams, staggered: !args.rate_bursts };
        let floor_half = h2load(&scenarios[0].server, &scenarios[0].body, args.duration, half_of(floor_rate), &log);
        let half =
            if i == 0 { floor_half } else { h2load(&s.server, &s.body, args.duration, half_of(per_second), &log) };
        println!(
            "| `{}` | {} | {:.0} | {:.2} | {:.1} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |",
            s.name,
            s.what,
            per_second,
            ratio,
            cpu,
            cpu_ratio,
            half.p50_us,
            half.p99_us,
            floor_half.p99_us,
            s.server.rss_mib()
        );
    }
}
