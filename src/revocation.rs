//! Revoked credentials: a denylist file for the incident runbook "revoke this
//! credential now", re-read within a second of a change.
//!
//! The format is one entry per line, a kind and a value, with `#` comments:
//!
//! ```text
//! # INC-4711: laptop of j.doe stolen
//! jti 3f1c9a70-5b7e-4c1d-9a0e-6f2b8d4e1a11
//! sub alice@example.org
//! serial 4e:1f:0a:9c
//! fingerprint 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ```
//!
//! A file that does not parse never replaces the last good list, so a typo during
//! an incident cannot un-revoke anything.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

/// How often the file is re-read.
const POLL: Duration = Duration::from_millis(250);

/// One parsed denylist.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Denylist {
    jti: HashSet<String>,
    sub: HashSet<String>,
    /// Lowercase hex without separators, as `PeerCertificate::serial`.
    serial: HashSet<String>,
    /// SHA-256 of the DER, as bytes: a Check compares the certificate's digest
    /// without hex-encoding it.
    fingerprint: HashSet<[u8; 32]>,
}

/// What was found revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    TokenId,
    Subject,
    CertificateSerial,
    CertificateFingerprint,
}

impl Denylist {
    pub fn parse(text: &str) -> Result<Denylist, String> {
        let mut list = Denylist::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let (kind, value) = line
                .split_once(char::is_whitespace)
                .map(|(k, v)| (k, v.trim()))
                .ok_or_else(|| format!("line {}: expected `<kind> <value>`", n + 1))?;
            match kind {
                "jti" => list.jti.insert(value.to_owned()),
                "sub" => list.sub.insert(value.to_owned()),
                "serial" => list.serial.insert(
                    serial_value(value).ok_or_else(|| format!("line {}: `{value}` is not a hex serial", n + 1))?,
                ),
                "fingerprint" => list.fingerprint.insert(
                    fingerprint_value(value)
                        .ok_or_else(|| format!("line {}: `{value}` is not a hex SHA-256 fingerprint", n + 1))?,
                ),
                other => return Err(format!("line {}: unknown kind `{other}` (jti, sub, serial, fingerprint)", n + 1)),
            };
        }
        Ok(list)
    }

    pub fn len(&self) -> usize {
        self.jti.len() + self.sub.len() + self.serial.len() + self.fingerprint.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn token(&self, jti: Option<&str>, sub: &str) -> Option<Revoked> {
        if jti.is_some_and(|j| self.jti.contains(j)) {
            return Some(Revoked::TokenId);
        }
        self.sub.contains(sub).then_some(Revoked::Subject)
    }

    /// `sha256`: the SHA-256 of the certificate's DER.
    pub fn certificate(&self, serial: &str, sha256: &[u8; 32]) -> Option<Revoked> {
        if self.serial.contains(serial) {
            return Some(Revoked::CertificateSerial);
        }
        self.fingerprint.contains(sha256).then_some(Revoked::CertificateFingerprint)
    }
}

/// `4E:1F:0a:9c` → `4e1f0a9c`; leading zero bytes are dropped, as serials are
/// integers (`00:ab` and `ab` are the same serial).
fn serial_value(s: &str) -> Option<String> {
    let hex = hex_digits(s).filter(|h| !h.is_empty() && h.len() % 2 == 0)?;
    let mut trimmed = hex.as_str();
    while trimmed.len() > 2 && trimmed.starts_with("00") {
        trimmed = trimmed.get(2..).unwrap_or(trimmed);
    }
    Some(trimmed.to_owned())
}

fn fingerprint_value(s: &str) -> Option<[u8; 32]> {
    let hex = hex_digits(s).filter(|h| h.len() == 64)?;
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

fn hex_digits(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| *c != ':').map(|c| c.to_ascii_lowercase()).collect();
    hex.chars().all(|c| c.is_ascii_hexdigit()).then_some(hex)
}

/// The live denylist and where it comes from.
pub struct Revocations {
    path: Option<PathBuf>,
    current: ArcSwap<Denylist>,
    /// Bumped on every change; part of every cache key that depends on it.
    generation: AtomicU64,
    last_digest: Mutex<Option<[u8; 32]>>,
    pub reload_failures: AtomicU64,
}

impl Revocations {
    /// Nothing revoked, no file.
    pub fn none() -> Revocations {
        Revocations {
            path: None,
            current: ArcSwap::from_pointee(Denylist::default()),
            generation: AtomicU64::new(0),
            last_digest: Mutex::new(None),
            reload_failures: AtomicU64::new(0),
        }
    }

    /// Reads the file now; a missing or invalid file refuses to start.
    pub fn from_file(path: &Path) -> Result<Revocations, String> {
        let revocations = Revocations { path: Some(path.to_owned()), ..Revocations::none() };
        revocations.reload().map_err(|e| format!("revocation file `{}`: {e}", path.display()))?;
        Ok(revocations)
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<Denylist>> {
        self.current.load()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-reads the file; returns whether the list changed.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let mut last = self.last_digest.lock().map_err(|_| "state poisoned".to_owned())?;
        if *last == Some(digest) {
            return Ok(false);
        }
        let list = Denylist::parse(&text)?;
        tracing::info!(path = %path.display(), entries = list.len(), "revocation list loaded");
        self.current.store(Arc::new(list));
        self.generation.fetch_add(1, Ordering::AcqRel);
        *last = Some(digest);
        Ok(true)
    }

    /// Re-reads the file every 250 ms until the task is aborted.
    pub async fn run_watcher(self: Arc<Self>) {
        if self.path.is_none() {
            return;
        }
        let mut failing = false;
        loop {
            tokio::time::sleep(POLL).await;
            match self.reload() {
                Ok(_) => failing = false,
                Err(e) => {
                    self.reload_failures.fetch_add(1, Ordering::Relaxed);
                    // Log a broken file once, not four times a second.
                    if !failing {
                        tracing::error!(error = %e, "revocation file unusable; keeping the last good list");
                    }
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_every_kind_are_found() {
        let list = Denylist::parse("# incident\njti abc\nsub alice\nserial 00:0A:1b\nfingerprint 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08 # note\n\n").unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(list.token(Some("abc"), "bob"), Some(Revoked::TokenId));
        assert_eq!(list.token(None, "alice"), Some(Revoked::Subject));
        assert_eq!(list.token(Some("x"), "bob"), None);
        assert_eq!(list.certificate("0a1b", &[0; 32]), Some(Revoked::CertificateSerial));
        let digest = fingerprint_value("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08").unwrap();
        assert_eq!(digest[..2], [0x9f, 0x86]);
        assert_eq!(list.certificate("99", &digest), Some(Revoked::CertificateFingerprint));
    }

    #[test]
    fn bad_lines_name_the_line() {
        assert_eq!(
            Denylist::parse("jti a\nbogus x").unwrap_err(),
            "line 2: unknown kind `bogus` (jti, sub, serial, fingerprint)"
        );
        assert!(Denylist::parse("serial xyz").unwrap_err().contains("line 1"));
        assert!(Denylist::parse("jti").unwrap_err().contains("line 1"));
    }

    #[test]
    fn an_invalid_file_keeps_the_last_good_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.txt");
        std::fs::write(&path, "jti one\n").unwrap();
        let revocations = Revocations::from_file(&path).unwrap();
        let generation = revocations.generation();
        std::fs::write(&path, "jti one\nnonsense\n").unwrap();
        assert!(revocations.reload().is_err());
        assert_eq!(revocations.current().token(Some("one"), ""), Some(Revoked::TokenId));
        assert_eq!(revocations.generation(), generation);
        std::fs::write(&path, "jti two\n").unwrap();
        assert_eq!(revocations.reload(), Ok(true));
        assert_eq!(revocations.current().token(Some("one"), ""), None);
        assert!(revocations.generation() > generation);
    }
}
