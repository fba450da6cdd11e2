//! Hot reload of the policy directory: changes are picked up, invalid ones are
//! refused while the last good set keeps serving, bursts coalesce, and Checks under
//! a storm of reloads all get answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::{check, outcome, shipped_policies_copy, test_config, Req};

const REPORTING: &str = "spiffe://example.org/ns/ops/sa/reporting";

/// DELETE /api/orders/1 from the reporting service: denied by the shipped policies.
fn delete(pki: &Pki) -> cedargate::server::proto::envoy::service::auth::v3::CheckRequest {
    Req::new(REPORTING, Some(&pki.svid(REPORTING).cert_pem)).method("DELETE").build()
}

fn write_policy(dir: &Path, name: &str, id: &str) {
    let text = format!(
        "@id(\"{id}\")\npermit (principal == Workload::\"{REPORTING}\", action == Action::\"DELETE\", resource in Path::\"/api/orders\");\n"
    );
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test]
async fn a_valid_change_is_served() {
    let dir = shipped_policies_copy();
    let pki = Pki::new();
    let running = common::start(test_config(dir.path().to_owned())).await;
    let before = running.sets.default_set().current().version.clone();
    assert_eq!(outcome(&check(&running, delete(&pki)).await), (403, "policy_denied".into()));

    write_policy(dir.path(), "extra.cedar", "reporting-deletes");
    let started = Instant::now();
    while outcome(&check(&running, delete(&pki)).await).0 != 200 {
        // The watcher polls every 100 ms and debounces 200 ms; the deadline is
        // generous so a busy machine does not fail the test.
        assert!(started.elapsed() < Duration::from_secs(10), "change not served after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = running.sets.default_set().status();
    assert_ne!(status.version, before);
    assert_eq!(status.version, running.sets.default_set().current().version);
    assert_eq!(status.last_error, None);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_invalid_change_keeps_the_last_good_set_and_is_reported() {
    let dir = shipped_policies_copy();
    let pki = Pki::new();
    let running = common::start(test_config(dir.path().to_owned())).await;
    let good = running.sets.default_set().current().version.clone();

    // A syntax error, then a policy that parses but does not validate.
    std::fs::write(dir.path().join("broken.cedar"), "permit (principal, action, resource) when { ;\n").unwrap();
    let started = Instant::now();
    while running.sets.default_set().failed.load(Ordering::Relaxed) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "invalid change not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = running.sets.default_set().status();
    let error = status.last_error.expect("the failure is reported");
    assert!(error.contains("broken.cedar:1:"), "diagnostics point at file:line:column: {error}");
    assert_eq!(status.version, good);
    assert_eq!(running.sets.default_set().current().version, good);
    assert_eq!(outcome(&check(&running, delete(&pki)).await), (403, "policy_denied".into()), "still the old set");
    let frontend = "spiffe://example.org/ns/default/sa/frontend";
    let allowed = Req::new(frontend, Some(&pki.svid(frontend).cert_pem)).build();
    assert_eq!(outcome(&check(&running, allowed).await).0, 200, "and still serving");

    std::fs::write(dir.path().join("broken.cedar"), "permit (principal, action, resource) when { principal.nope };\n")
        .unwrap();
    let started = Instant::now();
    while running.sets.default_set().failed.load(Ordering::Relaxed) < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "second invalid change not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running.sets.default_set().current().version, good);

    // Fixing it recovers.
    std::fs::remove_file(dir.path().join("broken.cedar")).unwrap();
    write_policy(dir.path(), "extra.cedar", "reporting-deletes");
    let started = Instant::now();
    while outcome(&check(&running, delete(&pki)).await).0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(10), "fixed set not served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running.sets.default_set().status().last_error, None);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_burst_of_saves_is_one_reload() {
    let dir = shipped_policies_copy();
    let running = common::start(test_config(dir.path().to_owned())).await;
    for i in 0..8 {
        write_policy(dir.path(), "extra.cedar", &format!("draft-{i}"));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Wait for the last save to be served, then count: the burst coalesced into
    // fewer reloads than saves (one when the saves keep within the 200 ms debounce;
    // a machine busy enough to stretch the 30 ms gaps may see two or three).
    let started = Instant::now();
    while !running.sets.default_set().current().policy_files.keys().any(|id| id.to_string() == "draft-7") {
        assert!(started.elapsed() < Duration::from_secs(10), "the last save was not served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reloads = running.sets.default_set().succeeded.load(Ordering::Relaxed);
    assert!((1..8).contains(&reloads), "{reloads} reloads for 8 saves: {:?}", running.sets.default_set().status());
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_during_many_reloads_all_get_correct_answers() {
    let dir = shipped_policies_copy();
    let pki = Pki::new();
    let mut config = test_config(dir.path().to_owned());
    config.policies.watch = false; // reloads are driven directly, as fast as they go
    write_policy(dir.path(), "extra.cedar", "version-a");
    let running = common::start(config).await;
    let request = delete(&pki);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (addr, request, stop) = (running.local_addr.clone(), request.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut client = common::client(&addr).await;
            let mut answered = 0u32;
            while !stop.load(Ordering::Relaxed) && answered < 20_000 {
                let reply = client.check(request.clone()).await.expect("no Check fails").into_inner();
                let (status, _) = outcome(&reply);
                let metadata = common::dynamic_metadata(&reply);
                let policies = format!("{:?}", metadata.fields["policies"]);
                assert_eq!(status, 200, "every answer is an allow from one version or the other");
                assert!(policies.contains("version-a") || policies.contains("version-b"), "{policies}");
                answered += 1;
            }
            answered
        }));
    }
    let reloader = running.sets.default_set().clone();
    let dir_path = dir.path().to_owned();
    let swaps = tokio::task::spawn_blocking(move || {
        let mut swaps = 0;
        for i in 0..30 {
            write_policy(&dir_path, "extra.cedar", if i % 2 == 0 { "version-b" } else { "version-a" });
            if matches!(reloader.reload(), Ok(cedargate::policy::reload::ReloadOutcome::Swapped { .. })) {
                swaps += 1;
            }
        }
        swaps
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap();
    }
    assert_eq!(swaps, 30);
    assert!(answered > 0);
    running.shutdown().await.unwrap();
}

#[test]
fn sighup_reloads_the_running_binary() {
    let dir = shipped_policies_copy();
    let config = format!(
        "[policies]\ndir = \"{}\"\nwatch = false\n[identity]\ntrust_domains = [\"example.org\"]\n",
        dir.path().display()
    );
    let binary = common::Binary::start(dir.path(), &config);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pki = Pki::new();
        let mut client = common::client(&binary.addr).await;
        let status = |reply: tonic::Response<_>| outcome(&reply.into_inner()).0;
        assert_eq!(status(client.check(delete(&pki)).await.unwrap()), 403);
        write_policy(dir.path(), "extra.cedar", "reporting-deletes");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(status(client.check(delete(&pki)).await.unwrap()), 403, "watch = false: no reload yet");
        let killed =
            std::process::Command::new("kill").args(["-HUP", &binary.child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        let started = Instant::now();
        while status(client.check(delete(&pki)).await.unwrap()) != 200 {
            assert!(started.elapsed() < Duration::from_secs(20), "SIGHUP did not reload");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// A Kubernetes ConfigMap volume: each file is a link through `..data`, which the
/// kubelet swaps to a new directory on an update. The links themselves never change,
/// so the watcher must look through them.
#[tokio::test]
async fn a_configmap_style_update_is_served() {
    use std::os::unix::fs::symlink;
    let root = tempfile::tempdir().unwrap();
    let volume = root.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let v1 = volume.join("..2026_11_23_v1");
    std::fs::create_dir(&v1).unwrap();
    common::copy_shipped_policies(&v1);
    symlink("..2026_11_23_v1", volume.join("..data")).unwrap();
    for entry in std::fs::read_dir(&v1).unwrap() {
        let name = entry.unwrap().file_name();
        symlink(Path::new("..data").join(&name), volume.join(&name)).unwrap();
    }
    let pki = Pki::new();
    let running = common::start(test_config(volume.clone())).await;
    assert_eq!(outcome(&check(&running, delete(&pki)).await), (403, "policy_denied".into()));

    // The kubelet's update: a new directory, `..data` swapped by rename, and a link
    // for the new file.
    let v2 = volume.join("..2026_11_23_v2");
    std::fs::create_dir(&v2).unwrap();
    common::copy_shipped_policies(&v2);
    write_policy(&v2, "orders.cedar", "reporting-deletes");
    symlink("..2026_11_23_v2", volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    let started = Instant::now();
    while outcome(&check(&running, delete(&pki)).await).0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(10), "the swapped ConfigMap was not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.unwrap();
}
