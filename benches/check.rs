//! Criterion benches of the hot steps of a Check, each cold (caches off) and, where
//! a cache applies, cached. See benches/README.md.

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

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cedargate::config::Config;
use cedargate::identity::svid as identity;
use cedargate::pipeline::checker::{Checker, SystemClock};
use cedargate::policy::http_path;
use cedargate::server::proto::envoy::service::auth::v3::CheckRequest;
use cedargate::server::wire;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";

fn request(principal: &str, cert_pem: &str, path: &str) -> CheckRequest {
    request::Req::new(principal, Some(cert_pem)).path(path).envoy_headers().build()
}

fn config(dir: &Path, cached: bool) -> Config {
    let mut config = Config::default();
    config.policies.dir = dir.to_owned();
    config.identity.trust_domains = vec!["example.org".into()];
    config.cache.decisions = cached;
    if !cached {
        config.cache.token_entries = 0;
        config.cache.certificate_entries = 0;
    }
    config
}

fn checker(dir: &Path, cached: bool) -> Checker {
    Checker::load(config(dir, cached), Arc::new(SystemClock)).unwrap()
}

/// A policy directory with the shipped schema and `n` permits, each on its own path
/// prefix: only one can apply to a request. `by_principal`: one per workload
/// `svc-i` (`principal ==`, which the index splits on); otherwise one per
/// namespace `ns-i` (`principal in`, which every request must evaluate).
fn generated_policies(n: usize, by_principal: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    std::fs::copy(shipped.join("schema.cedarschema"), dir.path().join("schema.cedarschema")).unwrap();
    let mut text = String::new();
    for i in 0..n {
        let principal = if by_principal {
            format!("principal == Workload::\"spiffe://example.org/ns/default/sa/svc-{i}\"")
        } else {
            format!("principal in Namespace::\"spiffe://example.org/ns/ns-{i}\"")
        };
        text.push_str(&format!(
            "permit ({principal}, action in Action::\"read\", resource in Path::\"/api/svc-{i}\") when {{ resource.host == \"orders.example.org\" }};\n"
        ));
    }
    std::fs::write(dir.path().join("generated.cedar"), text).unwrap();
    dir
}

fn benches(c: &mut Criterion) {
    let pki = pki::Pki::new();
    let cert = pki.svid(FRONTEND);
    let req = request(FRONTEND, &cert.cert_pem, "/api/orders/42?expand=items");
    let input = wire::check_input(req.clone());

    c.bench_function("input/from_check_request", |b| b.iter(|| wire::check_input(black_box(req.clone()))));
    let id_config = Config::default().identity;
    c.bench_function("identity/svid_with_certificate", |b| {
        b.iter(|| identity::establish(black_box(&input.source), SystemTime::now(), &id_config).unwrap())
    });
    let rules = http_path::PathRules { max_bytes: 8192, max_segments: 32, case_insensitive: true };
    c.bench_function("path/normalize", |b| {
        b.iter(|| http_path::normalize(black_box("/api/orders/42/items?expand=items&x=%20"), &rules).unwrap())
    });
    // The most a path may cost: 32 segments (the default limit) in 8 KiB.
    let longest = format!("/api/orders{}", format!("/{}", "s".repeat(250)).repeat(30));
    c.bench_function("path/normalize_max_segments", |b| {
        b.iter(|| http_path::normalize(black_box(&longest), &rules).unwrap())
    });

    let shipped_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    // What every decision's audit record costs the audit thread to encode.
    let decided = checker(&shipped_dir, true).check(&input);
    let entry = cedargate::ops::audit::AuditEntry::new(decided, input.clone(), SystemTime::now());
    let mut line = Vec::with_capacity(1024);
    c.bench_function("audit/record_to_json", |b| {
        b.iter(|| {
            line.clear();
            black_box(&entry).record(false).encode_into(&mut line);
        })
    });
    let mut group = c.benchmark_group("check/shipped");
    for (name, cached) in [("uncached", false), ("cached", true)] {
        let checker = checker(&shipped_dir, cached);
        group.bench_function(name, |b| b.iter(|| assert!(checker.check(black_box(&input)).is_allowed())));
    }
    // The longest path allowed, every decision evaluated: bounded whatever the path.
    let longest_input = wire::check_input(request(FRONTEND, &cert.cert_pem, &longest));
    let uncached = checker(&shipped_dir, false);
    group.bench_function("uncached_max_segments", |b| {
        b.iter(|| assert!(uncached.check(black_box(&longest_input)).is_allowed()))
    });
    // A mesh request as a sidecar forwards it: twenty headers, among them the
    // client certificate (XFCC) and trace context, none of which a policy reads.
    let mut mesh = request::Req::new(FRONTEND, Some(&cert.cert_pem)).path("/api/orders/42").envoy_headers();
    mesh = mesh.header(
        "x-forwarded-client-cert",
        &format!("By=spiffe://example.org/ns/default/sa/orders;Cert=\"{}\"", request::url_encode(&cert.cert_pem)),
    );
    for (name, value) in [
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", "vendor=opaque"),
        ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("x-b3-spanid", "00f067aa0ba902b7"),
        ("x-b3-sampled", "1"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-US,en;q=0.9"),
        ("cookie", "session=0123456789abcdef0123456789abcdef"),
        ("content-type", "application/json"),
        ("x-envoy-attempt-count", "1"),
        ("x-forwarded-for", "10.0.0.7"),
    ] {
        mesh = mesh.header(name, value);
    }
    let mesh_input = mesh.input();
    assert!(uncached.check(&mesh_input).is_allowed());
    group.bench_function("uncached_mesh_headers", |b| {
        b.iter(|| assert!(uncached.check(black_box(&mesh_input)).is_allowed()))
    });
    group.finish();

    // Bearer tokens: the shipped policies, GET with and without a verified token.
    let signers = [jwt::Signer::ec("ec"), jwt::Signer::ed("ed"), jwt::Signer::rsa("rsa")];
    let jwks_dir = tempfile::tempdir().unwrap();
    std::fs::write(jwks_dir.path().join("jwks.json"), jwt::jwks(&signers.iter().collect::<Vec<_>>())).unwrap();
    // Three settings: every cache off; only the verified-token cache (each
    // Check still evaluates); both caches.
    let token_checker = |decisions: bool, signatures: bool| {
        let mut config = config(&shipped_dir, decisions);
        config.cache.token_entries = if signatures { 10_000 } else { 0 };
        config.cache.certificate_entries = if signatures { 10_000 } else { 0 };
        config.tokens.issuers = vec![cedargate::config::IssuerConfig {
            issuer: jwt::ISSUER.into(),
            audiences: vec![jwt::AUDIENCE.into()],
            jwks_file: Some(jwks_dir.path().join("jwks.json")),
            ..Default::default()
        }];
        Checker::load(config, Arc::new(SystemClock)).unwrap()
    };
    let settings = [("uncached", false, false), ("signature_cached", false, true), ("cached", true, true)];
    let mut group = c.benchmark_group("check/token");
    let cold = token_checker(false, false);
    group.bench_function("none/uncached", |b| b.iter(|| assert!(cold.check(black_box(&input)).is_allowed())));
    for signer in &signers {
        let token = signer.sign(&jwt::claims(jwt::now(), "alice"));
        let mut req = req.clone();
        if let Some(http) = req.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
            http.headers.insert("authorization".into(), format!("Bearer {token}"));
        }
        let input = wire::check_input(req);
        for (setting, decisions, signatures) in settings {
            let checker = token_checker(decisions, signatures);
            let probe = checker.check(&input);
            assert!(probe.is_allowed() && probe.token.is_some(), "{probe:?}");
            group.bench_function(format!("{}/{setting}", jwt::alg_name(signer.alg)), |b| {
                b.iter(|| checker.check(black_box(&input)))
            });
        }
    }
    group.finish();

    // Uncached evaluation as policies grow, for both shapes.
    for (shape, by_principal, id) in [
        ("by_principal", true, "spiffe://example.org/ns/default/sa/svc-0"),
        ("by_namespace", false, "spiffe://example.org/ns/ns-0/sa/svc"),
    ] {
        let mut group = c.benchmark_group(format!("check/policies_{shape}"));
        let leaf = pki.svid(id);
        let input = wire::check_input(request(id, &leaf.cert_pem, "/api/svc-0/x"));
        for n in [10usize, 100, 1_000, 10_000] {
            if !by_principal && n == 10_000 {
                // Linear and slow: 1,000 shows the slope.
                continue;
            }
            let dir = generated_policies(n, by_principal);
            let checker = checker(dir.path(), false);
            let probe = checker.check(&input);
            assert!(probe.is_allowed(), "{probe:?}");
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| checker.check(black_box(&input)))
            });
        }
        group.finish();
    }

    // Uncached evaluation as entities.json grows (groups no policy names): a Check
    // is given only what of the store it can reach, so this stays flat.
    let mut group = c.benchmark_group("check/entities_json");
    for n in [0usize, 10_000, 50_000] {
        let dir = support::entities_with(n);
        let checker = checker(dir.path(), false);
        assert!(checker.check(&input).is_allowed());
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| b.iter(|| checker.check(black_box(&input))));
    }
    group.finish();

    // Startup: reading, parsing, validating and indexing 10,000 policies.
    let dir = generated_policies(10_000, true);
    let mut group = c.benchmark_group("startup");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.bench_function("load_10000_policies", |b| b.iter(|| checker(black_box(dir.path()), true)));
    group.finish();
}

criterion_group! {
    name = hot_path;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(hot_path);
