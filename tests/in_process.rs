//! cedargate inside Envoy (the dynamic module, `envoy-module/`), end to end: the
//! shipped `envoy-config/envoy-in-process.yaml`, a real Envoy 1.40 and real mTLS
//! clients, answering the same cases as the ext_authz server (`common::cases`),
//! plus what only the in-process mode has: the peer certificate verified by the
//! module's own validator at the handshake (or, without it, taken from Envoy's
//! `x-forwarded-client-cert` and vouched for by the TLS session's digest),
//! per-route policy sets, a refused configuration, and background reloads.
//!
//! Needs `libcedargate_envoy.so` beside the test binaries (`scripts/test.sh`
//! builds it; by hand: `cargo build -p cedargate-envoy-module`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::cases;
use common::envoy::{reason, start_upstream, write_leaf, Client, Envoy, PeerCertificateFrom, FRONTEND};

/// The directory holding the module built with this test's profile.
fn module_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/in_process-<hash>
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    assert!(
        dir.join("libcedargate_envoy.so").exists(),
        "{} has no libcedargate_envoy.so: run scripts/test.sh, or `cargo build -p cedargate-envoy-module` first",
        dir.display()
    );
    dir
}

/// A cedargate configuration file for the module: the shipped policies, the cases'
/// token issuer, an `admin` policy set, the audit log in `d/audit.jsonl`, and the
/// admin listener on a port of its own choosing (logged to Envoy's stderr).
fn write_config(d: &Path, policies: &Path) -> PathBuf {
    let admin_set = d.join("admin-set");
    std::fs::create_dir_all(&admin_set).unwrap();
    std::fs::copy(policies.join("schema.cedarschema"), admin_set.join("schema.cedarschema")).unwrap();
    std::fs::write(
        admin_set.join("console.cedar"),
        "@id(\"console-readers\")\npermit (principal == Workload::\"spiffe://example.org/ns/default/sa/payments\", action == Action::\"GET\", resource in Path::\"/console\");\n",
    )
    .unwrap();
    let config = format!(
        r#"[policies]
dir = "{policies}"
debounce = "50ms"
[policies.sets]
admin = "{admin_set}"
[identity]
trust_domains = ["example.org"]
trust_bundles = {{ "example.org" = "{ca}" }}
[[tokens.issuers]]
issuer = "{issuer}"
audiences = ["{audience}"]
jwks_file = "{jwks}"
forward = {{ "x-user" = "sub" }}
[admin]
listen = "127.0.0.1:0"
[audit]
enabled = true
sink = "{audit}"
"#,
        policies = policies.display(),
        admin_set = admin_set.display(),
        issuer = common::jwt::ISSUER,
        audience = common::jwt::AUDIENCE,
        jwks = d.join("jwks.json").display(),
        audit = d.join("audit.jsonl").display(),
        ca = d.join("bundle.pem").display(),
    );
    // The validator's own copy of the mesh CA, apart from the one clients trust.
    std::fs::copy(d.join("ca.pem"), d.join("bundle.pem")).unwrap();
    let path = d.join("cedargate.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// `d/policies`, a copy of the shipped policies.
fn shipped_policies(d: &Path) -> PathBuf {
    let policies = d.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    common::copy_shipped_policies(&policies);
    policies
}

#[test]
fn cedargate_inside_envoy_answers_as_the_server_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (frontend, signer) = cases::setup(d);
    let policies = shipped_policies(d);
    // A workload of the right trust domain, from a CA that is not its bundle.
    write_leaf(d, "stranger", &common::pki::Pki::new().svid(FRONTEND));
    let config = write_config(d, &policies);
    let upstream = start_upstream();
    let envoy = Envoy::start_in_process(d, &module_dir(), &config, upstream.port, PeerCertificateFrom::Handshake);
    let client = Client { envoy: &envoy, dir: d, validates_handshake: true };
    let hits = || upstream.hits.load(Ordering::SeqCst);

    cases::run(&client, d, &signer, &frontend, &hits);
    client_sent_certificates_change_nothing(&client, &frontend);

    // Refused at the handshake, each with its reason in the module's log.
    let reply = client.get(Some("stranger"), "/api/orders/1", &[]);
    assert!(reply.exit != 0 && reply.status == 0, "{reply:?}");
    let stderr = std::fs::read_to_string(d.join("envoy.stderr")).unwrap_or_default();
    for code in ["trust_domain_not_allowed", "certificate_chain_untrusted"] {
        assert!(stderr.contains(code), "no refusal with {code} logged: {stderr}");
    }
    assert!(stderr.contains("cedargate certificate validator loaded in Envoy"), "{stderr}");

    // Per-route policy set: /console/ is decided by the `admin` set alone, where
    // payments may read and the frontend (allowed /api/ by the default set) not.
    let reply = client.get(Some("payments"), "/console/status", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = client.get(Some("frontend"), "/console/status", &[]);
    assert_eq!((reply.status, reason(&reply)), (403, "policy_denied".into()), "{reply:?}");
    assert_eq!(hits(), 4);

    // A policy change is picked up in the background, never on a request.
    std::fs::write(
        policies.join("late.cedar"),
        "@id(\"late-payments\")\npermit (principal == Workload::\"spiffe://example.org/ns/default/sa/payments\", action == Action::\"GET\", resource in Path::\"/api/orders\");\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = client.get(Some("payments"), "/api/orders/1", &[]);
        if reply.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the new policy was never served: {reply:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The admin listener inside Envoy serves the server's metrics and status.
    let stderr = std::fs::read_to_string(d.join("envoy.stderr")).unwrap_or_default();
    let admin: std::net::SocketAddr = common::ports::logged_address(&stderr, "admin listening")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no admin address logged: {stderr}"));

    // An invalid change keeps the last good set: once the refusal shows in the
    // metrics (not after a guessed time), the old set still answers.
    std::fs::write(policies.join("broken.cedar"), "permit (principal, action, resource").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, metrics) = common::admin_request(admin, "GET", "/metrics", "");
        let failing = format!("cedargate_policy_reload_failing{{dir=\"{}\"}}", policies.display());
        if common::metric(&metrics, &failing) == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the broken file was never refused: {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let reply = client.get(Some("payments"), "/api/orders/1", &[]);
    assert_eq!(reply.status, 200, "a broken file replaced the last good set: {reply:?}");
    let (status, metrics) = common::admin_request(admin, "GET", "/metrics", "");
    assert_eq!(status, 200);
    let denied = common::metric(&metrics, "cedargate_decisions_total{decision=\"deny\",reason=\"policy_denied\"}");
    assert!(denied.is_some_and(|n| n >= 5.0), "{metrics}");
    // Handshakes: the frontend's and payments' verified; evil's, the expired and the
    // stranger's refused, each for its reason.
    let verified = common::metric(&metrics, "cedargate_handshakes_total{outcome=\"verified\",reason=\"verified\"}");
    assert!(verified.is_some_and(|n| n >= 10.0), "{metrics}");
    for reason in ["trust_domain_not_allowed", "certificate_expired", "certificate_chain_untrusted"] {
        let refused = format!("cedargate_handshakes_total{{outcome=\"refused\",reason=\"{reason}\"}}");
        assert_eq!(common::metric(&metrics, &refused), Some(1.0), "{reason}: {metrics}");
    }
    // A trust bundle that does not load is refused, visibly, and the last good one
    // keeps verifying new connections.
    let bundle = std::fs::read_to_string(d.join("bundle.pem")).unwrap();
    std::fs::write(d.join("bundle.pem"), "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, metrics) = common::admin_request(admin, "GET", "/metrics", "");
        if common::metric(&metrics, "cedargate_trust_bundle_reload_failing") == Some(1.0) {
            assert_eq!(common::metric(&metrics, "cedargate_trust_bundle_reloads_total{result=\"failure\"}"), Some(1.0));
            break;
        }
        assert!(Instant::now() < deadline, "the broken bundle was never refused: {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let reply = client.get(Some("payments"), "/api/orders/1", &[]);
    assert_eq!(reply.status, 200, "a broken bundle replaced the last good one: {reply:?}");
    std::fs::write(d.join("bundle.pem"), bundle).unwrap();
    let (status, body) = common::admin_request(admin, "GET", "/status", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"admin\""), "the named set is reported: {body}");

    // Every decision was audited, with its reason, as the server audits.
    let read_audit = || std::fs::read_to_string(d.join("audit.jsonl")).unwrap_or_default();
    let parse = |audit: &str| -> Vec<serde_json::Value> {
        audit.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    };
    let mut audit = read_audit();
    let mut records = parse(&audit);
    assert!(records.len() >= 20, "{} audit records", records.len());
    assert!(records.iter().any(|r| r["reason"] == "token_binding_mismatch"), "{audit}");
    assert!(records.iter().any(|r| r["policy_set"] == "admin"), "{audit}");

    // Envoy's access log carries each decision from the filter's dynamic metadata,
    // and joins its audit record by decision id.
    let logged = envoy.access_log(records.len());
    let decided: Vec<&serde_json::Value> = logged.iter().filter(|l| l["decision_id"].is_string()).collect();
    assert!(decided.len() >= 20, "{logged:?}");
    // The audit writer takes its queue every 20 ms, so a request Envoy has logged may not
    // have its record in the file yet when it was read above: read it again until
    // every logged decision has one, for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(5);
    while decided.iter().any(|l| !records.iter().any(|r| r["decision_id"] == l["decision_id"]))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
        audit = read_audit();
        records = parse(&audit);
    }
    for line in &decided {
        let record = records.iter().find(|r| r["decision_id"] == line["decision_id"]);
        let record = record.unwrap_or_else(|| panic!("no audit record for {line}"));
        assert_eq!((&line["decision"], &line["reason"]), (&record["decision"], &record["reason"]), "{line}");
    }
    assert!(decided.iter().any(|l| l["decision"] == "allow" && l["principal"] == FRONTEND), "{decided:?}");
    assert!(decided.iter().any(|l| l["reason"] == "policy_denied" && l["status"] == 403), "{decided:?}");
}

/// Certificates a client sends in `x-forwarded-client-cert` are never believed:
/// payments presenting the frontend's certificate there is still payments.
fn client_sent_certificates_change_nothing(client: &Client<'_>, frontend: &common::pki::Leaf) {
    let reply = client.get(
        Some("payments"),
        "/api/orders/1",
        &[
            "-H",
            &format!(
                "x-forwarded-client-cert: Cert=\"{}\";URI={FRONTEND}",
                common::request::url_encode(&frontend.cert_pem)
            ),
        ],
    );
    assert_eq!((reply.status, reason(&reply)), (403, "policy_denied".into()), "{reply:?}");
}

/// Without the module's validator (Envoy's own, and the certificate from
/// `x-forwarded-client-cert`, vouched for by the TLS session's digest), the filter
/// answers the same cases.
#[test]
fn without_the_handshake_validator_the_forwarded_certificate_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (frontend, signer) = cases::setup(d);
    let policies = shipped_policies(d);
    let config = write_config(d, &policies);
    let upstream = start_upstream();
    let envoy = Envoy::start_in_process(d, &module_dir(), &config, upstream.port, PeerCertificateFrom::ForwardedHeader);
    let client = Client { envoy: &envoy, dir: d, validates_handshake: false };
    let hits = || upstream.hits.load(Ordering::SeqCst);
    cases::run(&client, d, &signer, &frontend, &hits);
    client_sent_certificates_change_nothing(&client, &frontend);
}

#[test]
fn envoy_refuses_a_configuration_cedargate_cannot_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cases::setup(d);
    let policies = shipped_policies(d);
    std::fs::write(policies.join("broken.cedar"), "permit (principal, action, resource").unwrap();
    let config = write_config(d, &policies);
    let upstream = start_upstream();
    let started = std::panic::catch_unwind(|| {
        Envoy::start_in_process(d, &module_dir(), &config, upstream.port, PeerCertificateFrom::Handshake)
    });
    assert!(started.is_err(), "Envoy started with a policy set that does not parse");
    let stderr = std::fs::read_to_string(d.join("envoy.stderr")).unwrap_or_default();
    assert!(stderr.contains("cedargate: the filter configuration is refused"), "{stderr}");

    // Nor without the trust bundle its certificate validator names.
    std::fs::remove_file(policies.join("broken.cedar")).unwrap();
    std::fs::remove_file(d.join("bundle.pem")).unwrap();
    let started = std::panic::catch_unwind(|| {
        Envoy::start_in_process(d, &module_dir(), &config, upstream.port, PeerCertificateFrom::Handshake)
    });
    assert!(started.is_err(), "Envoy started without the trust bundle");
    let stderr = std::fs::read_to_string(d.join("envoy.stderr")).unwrap_or_default();
    assert!(stderr.contains("cedargate: the certificate validator configuration is refused"), "{stderr}");
    assert!(stderr.contains("bundle.pem"), "the missing file is named: {stderr}");
}
