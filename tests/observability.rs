//! What SREs and auditors see: metrics and status on the admin listener, one audit
//! record per decision (never a credential), traces joined to the caller's trace,
//! and a log level that can change at runtime.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cedargate::config::{IssuerConfig, WhenFull};
use common::jwt::{self, claims, Signer, AUDIENCE, ISSUER};
use common::pki::Pki;
use common::{admin_request, check, metric, outcome, shipped_policies, start, test_config, Binary, Req};

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";
const PAYMENTS: &str = "spiffe://example.org/ns/payments/sa/payments";

fn issuer(jwks: &Path) -> IssuerConfig {
    IssuerConfig {
        issuer: ISSUER.to_owned(),
        audiences: vec![AUDIENCE.to_owned()],
        jwks_file: Some(jwks.to_owned()),
        ..IssuerConfig::default()
    }
}

fn place_order(pki: &Pki, token: &str) -> Req {
    let leaf = pki.svid(FRONTEND);
    Req::new(FRONTEND, Some(&leaf.cert_pem))
        .method("POST")
        .path("/api/orders?card=4111111111111111")
        .header("authorization", &format!("Bearer {token}"))
        .header("x-request-id", "req-42")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_follow_checks_and_reloads() {
    let pki = Pki::new();
    let dir = common::shipped_policies_copy();
    let mut config = test_config(dir.path().to_owned());
    config.policies.watch = false;
    let running = start(config).await;
    let admin = running.admin_addr.unwrap();
    let get = move |path: &'static str| tokio::task::spawn_blocking(move || admin_request(admin, "GET", path, ""));
    assert_eq!(get("/healthz").await.unwrap().0, 200);
    assert_eq!(get("/readyz").await.unwrap().0, 200);
    assert_eq!(get("/nope").await.unwrap().0, 404);

    let leaf = pki.svid(FRONTEND);
    let read = Req::new(FRONTEND, Some(&leaf.cert_pem));
    for _ in 0..3 {
        assert_eq!(outcome(&check(&running, read.build()).await).0, 200);
    }
    let payments = pki.svid(PAYMENTS);
    assert_eq!(outcome(&check(&running, Req::new(PAYMENTS, Some(&payments.cert_pem)).build()).await).0, 403);
    assert_eq!(outcome(&check(&running, Req::new(FRONTEND, None).build()).await).1, "certificate_missing");

    let (status, scrape) = get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    let value = |series: &str| metric(&scrape, series).unwrap_or_else(|| panic!("no {series} in\n{scrape}"));
    assert_eq!(value("cedargate_decisions_total{decision=\"allow\",reason=\"allow\"}"), 3.0);
    assert_eq!(value("cedargate_decisions_total{decision=\"deny\",reason=\"policy_denied\"}"), 1.0);
    assert_eq!(value("cedargate_decisions_total{decision=\"deny\",reason=\"certificate_missing\"}"), 1.0);
    assert_eq!(value("cedargate_check_duration_seconds_count{decision=\"allow\",cache=\"hit\"}"), 2.0);
    assert_eq!(value("cedargate_check_duration_seconds_count{decision=\"allow\",cache=\"miss\"}"), 1.0);
    assert_eq!(value("cedargate_check_duration_seconds_count{decision=\"deny\",cache=\"bypass\"}"), 1.0);
    assert_eq!(value("cedargate_cache_lookups_total{cache=\"decision\",result=\"hit\"}"), 2.0);
    assert_eq!(value("cedargate_cache_entries{cache=\"decision\"}"), 2.0);
    // The first read and the payments call were evaluated, both directly.
    assert_eq!(value("cedargate_policy_evaluations_total{evaluator=\"direct\"}"), 2.0);
    assert_eq!(value("cedargate_policy_evaluations_total{evaluator=\"cedar\"}"), 0.0);
    assert!(value("cedargate_stage_duration_seconds_count{stage=\"identity\"}") >= 4.0);
    assert!(value("cedargate_stage_duration_seconds_count{stage=\"cedar\"}") >= 4.0);
    assert_eq!(value("cedargate_credential_remaining_seconds_count{credential=\"certificate\"}"), 4.0);
    assert!(scrape.lines().any(|l| l.starts_with("cedargate_policies_loaded{") && l.ends_with(" 9")), "{scrape}");
    assert!(scrape.contains("cedargate_policy_set_info{"), "{scrape}");
    // entities.json's four and the schema's nine actions; a Check is given the
    // actions and the stored entities the policies name, not the others.
    let entities = |given: &str| {
        let line = scrape.lines().find(|l| l.starts_with("cedargate_policy_entities{") && l.contains(given));
        line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or_else(|| panic!("{given}: {scrape}"))
    };
    assert_eq!(entities("given=\"stored\""), 13.0);
    let given = entities("given=\"to_each_check\"");
    assert!((9.0..13.0).contains(&given), "{given}");

    // A refused change shows up in the metrics and in /status; the set is kept.
    let version = running.sets.default_set().current().version.clone();
    std::fs::write(dir.path().join("broken.cedar"), "permit (principal, action, resource) when { nope };").unwrap();
    assert!(running.sets.default_set().reload().is_err());
    let (_, scrape) = get("/metrics").await.unwrap();
    let failures = scrape
        .lines()
        .find(|l| l.starts_with("cedargate_policy_reloads_total{") && l.contains("result=\"failure\""))
        .unwrap_or_else(|| panic!("{scrape}"));
    assert!(failures.ends_with(" 1"), "{failures}");
    assert!(scrape.lines().any(|l| l.starts_with("cedargate_policy_reload_failing{") && l.ends_with(" 1")), "{scrape}");
    let (_, status) = get("/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["policies"]["version"], version.as_str());
    assert!(status["policies"]["last_error"].as_str().unwrap().contains("broken.cedar"), "{status}");
    assert_eq!(status["policies"]["reloads_failed"], 1);
    assert_eq!(status["cache"]["decisions"], 2);
    assert_eq!(status["ready"], true);
    running.shutdown().await.unwrap();
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_carry_who_what_why_and_how_long() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::ec("ec-1");
    std::fs::write(dir.path().join("jwks.json"), jwt::jwks(&[&signer])).unwrap();
    let mut config = test_config(shipped_policies());
    config.tokens.issuers = vec![issuer(&dir.path().join("jwks.json"))];
    config.audit.enabled = true;
    config.audit.sink = dir.path().join("audit.jsonl").display().to_string();
    let running = start(config).await;
    let version = running.sets.default_set().current().version.clone();
    let mut c = claims(jwt::now(), "alice");
    c["jti"] = "token-7".into();
    let token = signer.sign(&c);
    let allow = check(&running, place_order(&pki, &token).build()).await;
    assert_eq!(outcome(&allow).0, 200);
    let payments = pki.svid(PAYMENTS);
    let deny = check(&running, Req::new(PAYMENTS, Some(&payments.cert_pem)).path("/api/orders").build()).await;
    assert_eq!(outcome(&deny).0, 403);
    let garbage = Req { certificate: "-----BEGIN%20CERTIFICATE-----%0Agarbage".into(), ..Req::new(FRONTEND, None) };
    assert_eq!(outcome(&check(&running, garbage.build()).await).1, "certificate_malformed");
    let mut stale = claims(jwt::now() - 7200, "alice");
    stale["exp"] = (jwt::now() - 3600).into();
    assert_eq!(outcome(&check(&running, place_order(&pki, &signer.sign(&stale)).build()).await).1, "token_expired");
    // Every metric the shipped Grafana dashboard queries is exported.
    let admin = running.admin_addr.unwrap();
    let (_, scrape) = tokio::task::spawn_blocking(move || admin_request(admin, "GET", "/metrics", "")).await.unwrap();
    let dashboard = std::fs::read_to_string(common::repo_dir().join("dashboards/cedargate.json")).unwrap();
    let mut names: Vec<&str> = dashboard
        .match_indices("cedargate_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            &rest[..rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        let base = name.trim_end_matches("_bucket").trim_end_matches("_total");
        assert!(scrape.contains(&format!("# TYPE {base} ")), "the dashboard queries {name}, which is not exported");
    }
    running.shutdown().await.unwrap();

    let records = audit_lines(&dir.path().join("audit.jsonl"));
    assert_eq!(records.len(), 4, "{records:?}");
    assert_eq!(records[3]["reason"], "token_expired");
    assert_eq!(records[3]["status"], 401);
    let allow = &records[0];
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["reason"], "allow");
    assert_eq!(allow["status"], 200);
    assert_eq!(allow["policies"], serde_json::json!(["frontend-places-orders-for-users"]));
    assert_eq!(allow["peer"]["spiffe_id"], FRONTEND);
    assert!(allow["peer"]["certificate_serial"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(allow["peer"]["certificate_fingerprint"].as_str().unwrap().len(), 64);
    assert!(allow["peer"]["certificate_not_after"].as_i64().unwrap() > jwt::now());
    assert_eq!(allow["token"]["iss"], ISSUER);
    assert_eq!(allow["token"]["sub"], "alice");
    assert_eq!(allow["token"]["jti"], "token-7");
    assert_eq!(allow["token"]["fingerprint"].as_str().unwrap().len(), 32);
    assert_eq!(allow["request"]["method"], "POST");
    assert_eq!(allow["request"]["host"], "orders.example.org");
    // The query string is redacted unless `audit.include_query`.
    assert_eq!(allow["request"]["path"], "/api/orders");
    assert_eq!(allow["request"]["request_id"], "req-42");
    assert_eq!(allow["request"]["source"], "127.0.0.1:40000");
    assert_eq!(allow["policy_version"].as_str().unwrap(), version);
    assert_eq!(allow["cache"], "miss");
    assert!(allow["latency_us"].as_u64().is_some());
    assert!(allow["decision_id"].as_str().unwrap().len() >= 32);
    assert!(allow["time"].as_str().unwrap().ends_with('Z'));

    let deny = &records[1];
    assert_eq!(
        (deny["decision"].as_str(), deny["reason"].as_str(), deny["status"].as_u64()),
        (Some("deny"), Some("policy_denied"), Some(403))
    );
    assert_eq!(deny["peer"]["spiffe_id"], PAYMENTS);
    assert!(deny["token"].is_null());

    let error = &records[2];
    assert_eq!(error["reason"], "certificate_malformed");
    assert!(error["peer"].is_null());
    assert_eq!(error["request"]["source_principal"], FRONTEND);
    assert!(!error["detail"].as_str().unwrap().is_empty());

    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(!text.contains(&token) && !text.contains(token.rsplit('.').next().unwrap()));
    assert!(!text.contains("4111111111111111"));
}

/// A named pipe as the audit sink: the test decides how fast it is drained.
fn fifo(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("audit.fifo");
    assert!(std::process::Command::new("mkfifo").arg(&path).status().unwrap().success());
    path
}

/// Drains the pipe in a thread once `go` fires, counting lines until EOF.
fn drain(path: std::path::PathBuf, go: std::sync::mpsc::Receiver<()>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let file = std::fs::File::open(path).unwrap();
        let _ = go.recv();
        std::io::BufReader::new(file).lines().map_while(Result::ok).count()
    })
}

async fn burst(running: &cedargate::server::app::Running, pki: &Pki, n: usize) {
    let leaf = pki.svid(FRONTEND);
    let mut tasks = Vec::new();
    for client in 0..8 {
        let mut grpc = common::client(&running.local_addr).await;
        let requests: Vec<_> = (0..n / 8)
            .map(|i| Req::new(FRONTEND, Some(&leaf.cert_pem)).path(&format!("/api/orders/{client}-{i}")).build())
            .collect();
        tasks.push(tokio::spawn(async move {
            for request in requests {
                grpc.check(request).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_loses_no_record_and_drop_mode_counts_every_drop() {
    let pki = Pki::new();
    let n = 800;
    for mode in [WhenFull::Block, WhenFull::Drop] {
        let dir = tempfile::tempdir().unwrap();
        let pipe = fifo(dir.path());
        let (go, wait) = std::sync::mpsc::channel();
        let reader = drain(pipe.clone(), wait);
        if mode == WhenFull::Block {
            // Drained while Checks run, slower than they come: Checks wait for room.
            go.send(()).unwrap();
        }
        let mut config = test_config(shipped_policies());
        config.audit.enabled = true;
        config.audit.sink = pipe.display().to_string();
        config.audit.queue = 4;
        config.audit.when_full = mode;
        let running = tokio::task::spawn_blocking(move || tokio::runtime::Handle::current().block_on(start(config)))
            .await
            .unwrap();
        burst(&running, &pki, n).await;
        let dropped = running.audit.as_ref().unwrap().dropped();
        let _ = go.send(());
        running.shutdown().await.unwrap();
        let written = reader.join().unwrap();
        match mode {
            WhenFull::Block => assert_eq!((written, dropped), (n, 0)),
            WhenFull::Drop => {
                // The pipe (64 KiB) and the queue (4) hold far fewer than 800 records.
                assert!(dropped > 0, "nothing dropped");
                assert_eq!(written + usize::try_from(dropped).unwrap(), n, "written {written} + dropped {dropped}");
            }
        }
    }
}

#[test]
fn no_token_or_key_material_reaches_audit_or_logs_at_any_level() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let signer = Signer::rsa("rsa-1");
    std::fs::write(dir.path().join("jwks.json"), jwt::jwks(&[&signer])).unwrap();
    let mut binary = Binary::start(
        dir.path(),
        &format!(
            "[policies]\ndir = \"{}\"\n[identity]\ntrust_domains = [\"example.org\"]\n[log]\nlevel = \"trace\"\n[audit]\ninclude_query = true\n[[tokens.issuers]]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\njwks_file = \"{}\"\n",
            shipped_policies().display(),
            dir.path().join("jwks.json").display()
        ),
    );
    let now = jwt::now();
    let good = signer.sign(&claims(now, "alice"));
    let mut expired_claims = claims(now - 7200, "alice");
    expired_claims["exp"] = (now - 3600).into();
    let expired = signer.sign(&expired_claims);
    let forged = format!("{}.{}", good.rsplit_once('.').unwrap().0, "c2VjcmV0LXNpZ25hdHVyZQ");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = common::client(&binary.addr).await;
        for (token, expected) in [(&good, 200), (&expired, 401), (&forged, 401)] {
            let reply = client.check(place_order(&pki, token).build()).await.unwrap().into_inner();
            assert_eq!(outcome(&reply).0, expected);
        }
    });
    assert!(binary.terminate(), "{}", binary.stderr(dir.path()));
    let logs = binary.stderr(dir.path());
    let audit = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    assert_eq!(audit.lines().count(), 3, "{audit}");
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "the log level took effect");
    for (what, secret) in [
        ("token", good.as_str()),
        ("expired token", expired.as_str()),
        ("forged token", forged.as_str()),
        ("token signature", good.rsplit('.').next().unwrap()),
        ("forged signature", "c2VjcmV0LXNpZ25hdHVyZQ"),
        ("token claims", good.split('.').nth(1).unwrap()),
        ("private key", "PRIVATE KEY"),
    ] {
        assert!(!logs.contains(secret), "{what} in the logs");
        assert!(!audit.contains(secret), "{what} in the audit log");
    }
}

#[test]
fn changing_the_log_level_is_off_unless_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let binary = Binary::start(dir.path(), &format!("[policies]\ndir = \"{}\"\n", shipped_policies().display()));
    let (status, body) = admin_request(binary.admin, "PUT", "/loglevel", "trace");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin.allow_log_level_changes"), "{body}");
    assert_eq!(admin_request(binary.admin, "GET", "/loglevel", ""), (200, "info\n".to_owned()));
}

#[test]
fn the_log_level_changes_at_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let binary = Binary::start_with_admin(
        dir.path(),
        "allow_log_level_changes = true",
        &format!(
            "[policies]\ndir = \"{}\"\n[identity]\ntrust_domains = [\"example.org\"]\n",
            shipped_policies().display()
        ),
    );
    assert_eq!(admin_request(binary.admin, "GET", "/loglevel", ""), (200, "info\n".to_owned()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let leaf = pki.svid(FRONTEND);
    let allow = || {
        rt.block_on(async {
            let mut client = common::client(&binary.addr).await;
            client.check(Req::new(FRONTEND, Some(&leaf.cert_pem)).build()).await.unwrap();
        })
    };
    allow();
    // Allows are logged at debug only.
    assert!(!binary.stderr(dir.path()).contains("allowed"));
    assert_eq!(admin_request(binary.admin, "PUT", "/loglevel", "cedargate=debug,info").0, 200);
    allow();
    let started = Instant::now();
    while !binary.stderr(dir.path()).contains("allowed") {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", binary.stderr(dir.path()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = admin_request(binary.admin, "PUT", "/loglevel", "[not a filter");
    assert_eq!(status, 400, "{body}");
    assert_eq!(admin_request(binary.admin, "GET", "/loglevel", "").1, "cedargate=debug,info\n");
}

mod otlp {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    use opentelemetry_proto::tonic::trace::v1::Span;
    use std::sync::{Arc, Mutex};

    /// An OTLP/gRPC trace receiver on 127.0.0.1 that keeps every span.
    #[derive(Clone, Default)]
    pub struct Receiver(pub Arc<Mutex<Vec<Span>>>);

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let spans =
                request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
            self.0.lock().unwrap().extend(spans);
            Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
        }
    }

    pub async fn start(receiver: Receiver) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }
}

#[test]
fn a_check_joins_the_trace_of_its_traceparent() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = otlp::Receiver::default();
    let collector = rt.block_on(otlp::start(receiver.clone()));
    let mut binary = Binary::start(
        dir.path(),
        &format!(
            "[policies]\ndir = \"{}\"\n[identity]\ntrust_domains = [\"example.org\"]\n[tracing]\notlp_endpoint = \"http://{collector}\"\n",
            shipped_policies().display()
        ),
    );
    let (trace_id, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let leaf = pki.svid(FRONTEND);
    rt.block_on(async {
        let mut client = common::client(&binary.addr).await;
        let request = Req::new(FRONTEND, Some(&leaf.cert_pem))
            .header("traceparent", &format!("00-{trace_id}-{parent}-01"))
            .build();
        assert_eq!(outcome(&client.check(request).await.unwrap().into_inner()).0, 200);
    });
    // Shutdown flushes the spans not yet exported.
    assert!(binary.terminate(), "{}", binary.stderr(dir.path()));
    let spans = receiver.0.lock().unwrap().clone();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let check = spans
        .iter()
        .find(|s| s.name == "cedargate.check")
        .unwrap_or_else(|| panic!("no check span among {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>()));
    assert_eq!(hex(&check.trace_id), trace_id);
    assert_eq!(hex(&check.parent_span_id), parent);
    // The stages are its children.
    for stage in ["identity", "cedar"] {
        let child = spans.iter().find(|s| s.name == stage).unwrap_or_else(|| panic!("no {stage} span"));
        assert_eq!(child.parent_span_id, check.span_id, "{stage}");
        assert_eq!(hex(&child.trace_id), trace_id);
    }
}

#[test]
fn the_audit_file_is_reopened_on_sighup_for_log_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let audit = dir.path().join("audit.jsonl");
    let binary = Binary::start(
        dir.path(),
        &format!(
            "[policies]\ndir = \"{}\"\nwatch = false\n[identity]\ntrust_domains = [\"example.org\"]\n[audit]\nsink = \"{}\"\n",
            shipped_policies().display(),
            audit.display()
        ),
    );
    let leaf = pki.svid(FRONTEND);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let check_once = || {
        rt.block_on(async {
            let mut client = common::client(&binary.addr).await;
            client.check(Req::new(FRONTEND, Some(&leaf.cert_pem)).build()).await.unwrap();
        })
    };
    let lines = |path: &Path| std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0);
    let wait_for = |path: &Path, n: usize| {
        let started = Instant::now();
        while lines(path) < n {
            assert!(started.elapsed() < Duration::from_secs(5), "{} has {} records", path.display(), lines(path));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    check_once();
    wait_for(&audit, 1);
    // logrotate's move-then-signal: the old file keeps what was written, the new
    // file gets what follows.
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&audit, &rotated).unwrap();
    let hup = std::process::Command::new("kill").args(["-HUP", &binary.child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    // Wait for the server to say it took the signal, not for a time.
    let started = Instant::now();
    while !binary.stderr(dir.path()).contains("SIGHUP: reloading") {
        assert!(started.elapsed() < Duration::from_secs(10), "SIGHUP was not taken: {}", binary.stderr(dir.path()));
        std::thread::sleep(Duration::from_millis(20));
    }
    check_once();
    wait_for(&audit, 1);
    assert_eq!(lines(&rotated), 1);
    assert_eq!(lines(&audit), 1);
}
