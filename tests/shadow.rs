//! Shadow rollout: a second policy set decides beside the enforced one; it never
//! changes an answer, and every disagreement is counted, logged and audited.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::pki::Pki;
use common::{admin_request, metric, outcome, shipped_policies, Binary, Req};

const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";
const PAYMENTS: &str = "spiffe://example.org/ns/payments/sa/payments";

#[test]
fn a_disagreeing_shadow_set_is_counted_logged_and_audited_and_changes_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    // The candidate change: the frontend may no longer read orders.
    let shadow = dir.path().join("shadow");
    std::fs::create_dir(&shadow).unwrap();
    common::copy_shipped_policies(&shadow);
    let orders = shadow.join("orders.cedar");
    let text = std::fs::read_to_string(&orders).unwrap();
    std::fs::write(
        &orders,
        text.replacen("@id(\"frontend-reads-orders\")\npermit", "@id(\"frontend-reads-orders\")\nforbid", 1),
    )
    .unwrap();
    let binary = Binary::start(
        dir.path(),
        &format!(
            "[policies]\ndir = \"{}\"\nshadow_dir = \"{}\"\n[identity]\ntrust_domains = [\"example.org\"]\n",
            shipped_policies().display(),
            shadow.display()
        ),
    );
    let pki = Pki::new();
    let (frontend, payments) = (pki.svid(FRONTEND), pki.svid(PAYMENTS));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = common::client(&binary.addr).await;
        // Enforced: allowed, as before. Shadow: denied by the changed policy.
        let read = Req::new(FRONTEND, Some(&frontend.cert_pem)).build();
        for _ in 0..2 {
            assert_eq!(outcome(&client.check(read.clone()).await.unwrap().into_inner()).0, 200);
        }
        // Both sets deny this one: no disagreement.
        let other = Req::new(PAYMENTS, Some(&payments.cert_pem)).path("/api/orders").build();
        assert_eq!(outcome(&client.check(other).await.unwrap().into_inner()).0, 403);
    });
    let (_, scrape) = admin_request(binary.admin, "GET", "/metrics", "");
    assert_eq!(metric(&scrape, "cedargate_shadow_disagreements_total"), Some(2.0), "{scrape}");
    let (_, status) = admin_request(binary.admin, "GET", "/status", "");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["shadow"]["version"].as_str().map(str::len), Some(12), "{status}");

    let started = std::time::Instant::now();
    while std::fs::read_to_string(dir.path().join("stdout.log")).unwrap().lines().count() < 3 {
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "audit records not written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let records: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("stdout.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let shadow = &records[0]["shadow"];
    assert_eq!(records[0]["decision"], "allow");
    assert_eq!(shadow["decision"], "policy_denied", "{shadow}");
    assert_eq!(shadow["policies"], serde_json::json!(["frontend-reads-orders"]));
    assert_eq!(shadow["agrees"], false);
    assert_eq!(records[2]["shadow"]["agrees"], true);

    let logs = binary.stderr(dir.path());
    let line = logs.lines().find(|l| l.contains("the shadow policy set disagrees")).unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains("enforced=\"allow\"") || line.contains("enforced=allow"), "{line}");
    assert!(line.contains("frontend-reads-orders"), "{line}");
}
