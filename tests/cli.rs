//! The policy-author commands, run as the built binary: exit codes, text and JSON.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::process::{Command, Output};

use common::shipped_policies;

fn cedargate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cedargate")).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";

#[test]
fn test_passes_the_shipped_cases_and_catches_a_wrong_expectation() {
    let policies = shipped_policies();
    let out = cedargate(&["test", policies.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains(" passed, 0 failed"));

    let dir = common::shipped_policies_copy();
    std::fs::write(
        dir.path().join("wrong.test.toml"),
        format!(
            "[[case]]\nname = \"frontend deletes orders\"\nprincipal = \"{FRONTEND}\"\nmethod = \"DELETE\"\npath = \"/api/orders/1\"\nhost = \"orders.example.org\"\nexpect = {{ decision = \"allow\", policies = [\"frontend-reads-orders\"] }}\n"
        ),
    )
    .unwrap();
    let out = cedargate(&["test", dir.path().to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  wrong.test.toml: frontend deletes orders"), "{text}");
    assert!(text.contains("- decision: allow") && text.contains("+ decision: deny"), "{text}");
    assert!(text.contains("- policies: [frontend-reads-orders]") && text.contains("+ policies: []"), "{text}");

    let out = cedargate(&["test", dir.path().to_str().unwrap(), "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["failed"], 1);
    assert!(json["passed"].as_u64().unwrap() >= 11);

    let out = cedargate(&["test", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn authorize_decides_one_request_from_flags_or_json() {
    let policies = shipped_policies();
    let p = policies.to_str().unwrap();
    let allow = cedargate(&[
        "authorize",
        "--policies",
        p,
        "--principal",
        FRONTEND,
        "--path",
        "/api/orders/1",
        "--host",
        "orders.example.org",
    ]);
    assert_eq!(allow.status.code(), Some(0), "{}", stdout(&allow));
    assert!(stdout(&allow).starts_with("ALLOW") && stdout(&allow).contains("frontend-reads-orders"));

    let deny =
        cedargate(&["authorize", "--policies", p, "--principal", FRONTEND, "--path", "/admin", "--format", "json"]);
    assert_eq!(deny.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&deny.stdout).unwrap();
    assert_eq!((json["decision"].as_str(), json["reason"].as_str()), (Some("deny"), Some("policy_denied")));
    assert_eq!(json["policies"], serde_json::json!(["deny-admin"]));

    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("check.json");
    std::fs::write(
        &request,
        format!(r#"{{"attributes":{{"source":{{"principal":"{FRONTEND}"}},"request":{{"http":{{"method":"GET","path":"/api/orders/2","host":"orders.example.org","headers":{{}}}}}}}}}}"#),
    )
    .unwrap();
    // The JSON names no certificate, and the default config requires one.
    let out = cedargate(&["authorize", "--policies", p, "--request", request.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("certificate_missing"), "{}", stdout(&out));
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[identity]\nrequire_certificate = false\n").unwrap();
    let out = cedargate(&[
        "authorize",
        "--policies",
        p,
        "--config",
        config.to_str().unwrap(),
        "--request",
        request.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    let usage = cedargate(&["authorize", "--policies", p]);
    assert_eq!(usage.status.code(), Some(2));
    let usage = cedargate(&["authorize", "--policies", p, "--principal", FRONTEND, "--header", "nocolon"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn validate_reports_diagnostics_as_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(shipped_policies().join("schema.cedarschema"), dir.path().join("schema.cedarschema")).unwrap();
    std::fs::write(dir.path().join("bad.cedar"), "permit (principal, action, resource)\nwhen { principal.nope };\n")
        .unwrap();
    let out = cedargate(&["validate", "--policies", dir.path().to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], false);
    assert_eq!(json["diagnostics"][0]["file"], "bad.cedar");
    assert_eq!(json["diagnostics"][0]["line"], 2);
    let ok = cedargate(&["validate", "--policies", shipped_policies().to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0));
}

#[test]
fn fmt_checks_formats_in_place_and_refuses_what_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messy.cedar");
    let messy = "// kept\n@id(\"r\") permit(principal,action==Action::\"GET\",resource) when {resource.host==\"a\"};\n";
    std::fs::write(&file, messy).unwrap();
    let target = dir.path().to_str().unwrap();

    let out = cedargate(&["fmt", "--check", target]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("not formatted:") && stdout(&out).contains("messy.cedar"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), messy, "--check never writes");

    let out = cedargate(&["fmt", "--check", "--format", "json", target]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["files"][0]["changed"], true);

    let out = cedargate(&["fmt", target]);
    assert_eq!(out.status.code(), Some(0));
    let formatted = std::fs::read_to_string(&file).unwrap();
    assert!(formatted.contains("// kept") && formatted.contains("action == Action::\"GET\""), "{formatted}");
    assert_eq!(cedargate(&["fmt", "--check", target]).status.code(), Some(0));

    std::fs::write(dir.path().join("broken.cedar"), "permit (principal, action").unwrap();
    let out = cedargate(&["fmt", target]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.cedar"));
}

#[test]
fn demo_pki_makes_svids_the_shipped_policies_accept_and_an_envoy_config_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let run = cedargate(&["demo-pki", "--out", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for (stem, spiffe_id) in cedargate::cli::demo_pki::WORKLOADS {
        let pem = std::fs::read_to_string(out.join(format!("{stem}.pem"))).unwrap();
        let encoded = common::pki::url_encode(&pem);
        let cert = cedargate::identity::certificate::parse_url_encoded_pem(&encoded, 16 * 1024).unwrap();
        assert_eq!(cert.uri_sans, vec![spiffe_id.to_owned()]);
        assert!(cert.lifetime_seconds() <= 24 * 3600, "short-lived, as the shipped guardrail wants");
        assert!(out.join(format!("{stem}-key.pem")).exists());
    }
    // The frontend's SVID, judged by the full X.509-SVID rules and the shipped policies.
    let cert = out.join("frontend.pem");
    let policies = shipped_policies();
    let args = [
        "authorize",
        "--policies",
        policies.to_str().unwrap(),
        "--principal",
        "spiffe://example.org/ns/default/sa/frontend",
        "--cert",
        cert.to_str().unwrap(),
        "--path",
        "/api/orders/1",
        "--host",
        "orders.example.org",
    ];
    let allowed = cedargate(&args);
    assert!(allowed.status.success(), "{}", stdout(&allowed));
    let envoy = std::fs::read_to_string(out.join("envoy.yaml")).unwrap();
    assert!(!envoy.contains("/etc/cedargate/certs/"), "envoy.yaml points at the demo certificates");
    assert!(envoy.contains(&format!("{}/ca.pem", out.display())));
}
