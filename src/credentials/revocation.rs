//! Revoked credentials: a denylist file for the incident runbook "revoke this
//! credential now", re-read within a second of a change.
//!
//! One entry per line, a kind and a value; a line starting with `#` is a comment,
//! and so is anything after whitespace and `#` that follows the value:
//!
//! ```text
//! # INC-4711: laptop of j.doe stolen
//! jti 3f1c9a70-5b7e-4c1d-9a0e-6f2b8d4e1a11
//! sub alice@example.org          # the value ends at whitespace; `user#1` is a value
//! sub "Jane Doe"                 # a JSON string for a value with spaces
//! serial 4e:1f:0a:9c             # hex as openssl prints it; also a1b, 0xA1B
//! serial_decimal 5294621338      # the serial as an integer (Python's serial_number)
//! fingerprint 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ```
//!
//! Every line means exactly what it says or the whole file is refused, and a file
//! that does not parse never replaces the last good list, so a typo during an
//! incident cannot un-revoke anything; the refusal is logged, counted and shown.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::ops::metrics::{Sample, StateSource};

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

/// Why a revocation file is refused (the list in force stays).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    #[error("cannot read: {0}")]
    Read(String),
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
}

impl Denylist {
    pub fn parse(text: &str) -> Result<Denylist, RevocationError> {
        let mut list = Denylist::default();
        for (n, line) in text.lines().enumerate() {
            let at = |message: String| RevocationError::Line { line: n + 1, message };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (kind, rest) =
                line.split_once(char::is_whitespace).ok_or_else(|| at("expected `<kind> <value>`".to_owned()))?;
            let (value, rest) = value_of(rest.trim_start()).map_err(at)?;
            let rest = rest.trim_start();
            if !rest.is_empty() && !rest.starts_with('#') {
                return Err(at(format!("unexpected text after the value: `{}`", excerpt(rest))));
            }
            let bad = |what: &str| at(format!("`{}` is not {what}", excerpt(&value)));
            match kind {
                "jti" => list.jti.insert(value),
                "sub" => list.sub.insert(value),
                "serial" => list.serial.insert(serial_hex(&value).ok_or_else(|| bad("a hex serial"))?),
                "serial_decimal" => list.serial.insert(serial_decimal(&value).ok_or_else(|| bad("a decimal serial"))?),
                "fingerprint" => {
                    list.fingerprint.insert(fingerprint_value(&value).ok_or_else(|| bad("a hex SHA-256 fingerprint"))?)
                }
                other => {
                    return Err(at(format!(
                        "unknown kind `{}` (jti, sub, serial, serial_decimal, fingerprint)",
                        excerpt(other)
                    )))
                }
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

/// The value at the start of `s`, and what follows it: a JSON string when it starts
/// with `"`, else everything up to the next whitespace.
fn value_of(s: &str) -> Result<(String, &str), String> {
    if s.starts_with('"') {
        let mut stream = serde_json::Deserializer::from_str(s).into_iter::<String>();
        let value = match stream.next() {
            Some(Ok(value)) => value,
            _ => return Err("the quoted value is not a JSON string".to_owned()),
        };
        let rest = s.get(stream.byte_offset()..).unwrap_or_default();
        if value.is_empty() {
            return Err("the value is empty".to_owned());
        }
        return Ok((value, rest));
    }
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    let (value, rest) = s.split_at(end);
    if value.is_empty() {
        return Err("expected `<kind> <value>`".to_owned());
    }
    Ok((value.to_owned(), rest))
}

/// At most 64 characters of a value, for an error message.
fn excerpt(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A serial in hex, as `PeerCertificate::serial` has it: lowercase, without
/// separators or leading zeros (serials are integers: `00:ab`, `0xAB` and `ab` are
/// one serial). Any number of digits, so Python's `%x` (`a1b`) is accepted.
fn serial_hex(s: &str) -> Option<String> {
    let s = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    let hex = hex_digits(s).filter(|h| !h.is_empty())?;
    Some(canonical_serial(hex.trim_start_matches('0')))
}

/// A serial written as a decimal integer, converted to the hex form.
fn serial_decimal(s: &str) -> Option<String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Base conversion digit by digit: serials have up to 20 bytes, past u128.
    let mut value: Vec<u8> = Vec::new(); // big-endian base-256
    for digit in s.bytes().map(|b| b - b'0') {
        let mut carry = u32::from(digit);
        for byte in value.iter_mut().rev() {
            let next = u32::from(*byte) * 10 + carry;
            *byte = (next & 0xff) as u8;
            carry = next >> 8;
        }
        while carry > 0 {
            value.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    Some(canonical_serial(hex::encode(&value).trim_start_matches('0')))
}

/// Hex digits without leading zeros as `certificate::serial_hex` prints them: whole
/// bytes (an odd count gets one leading `0`), and `00` for zero.
fn canonical_serial(digits: &str) -> String {
    match digits.len() {
        0 => "00".to_owned(),
        n if n % 2 == 1 => format!("0{digits}"),
        _ => digits.to_owned(),
    }
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
    last_digest: Mutex<Option<[u8; 32]>>,
    /// Why the file on disk is not the list in force, until a good version is read.
    last_error: Mutex<Option<String>>,
    loaded: AtomicU64,
    failed: AtomicU64,
}

impl Revocations {
    /// Nothing revoked, no file.
    pub fn none() -> Revocations {
        Revocations {
            path: None,
            current: ArcSwap::from_pointee(Denylist::default()),
            last_digest: Mutex::new(None),
            last_error: Mutex::new(None),
            loaded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Reads the file now; a missing or invalid file refuses to start.
    pub fn from_file(path: &Path) -> Result<Revocations, RevocationError> {
        let revocations = Revocations { path: Some(path.to_owned()), ..Revocations::none() };
        revocations.reload()?;
        Ok(revocations)
    }

    /// The file, when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<Denylist>> {
        self.current.load()
    }

    /// Why the file is refused, while it is.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Re-reads the file; returns whether the list changed. A failure keeps the
    /// list in force and is remembered for metrics and `/status`.
    pub fn reload(&self) -> Result<bool, RevocationError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let result = self.reload_from(path);
        if let Ok(mut last_error) = self.last_error.lock() {
            let error = result.as_ref().err().map(ToString::to_string);
            // Logged once per broken version of the file, not on every look.
            if let Some(e) = error.as_ref().filter(|e| last_error.as_ref() != Some(*e)) {
                tracing::error!(path = %path.display(), error = %e, "revocation file refused; keeping the last good list");
            }
            *last_error = error;
        }
        match &result {
            Ok(true) => self.loaded.fetch_add(1, Ordering::Relaxed),
            Ok(false) => 0,
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn reload_from(&self, path: &Path) -> Result<bool, RevocationError> {
        let text = std::fs::read_to_string(path).map_err(|e| RevocationError::Read(e.to_string()))?;
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let mut last = self.last_digest.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *last == Some(digest) {
            return Ok(false);
        }
        let list = Denylist::parse(&text)?;
        tracing::info!(path = %path.display(), entries = list.len(), "revocation list loaded");
        self.current.store(Arc::new(list));
        *last = Some(digest);
        Ok(true)
    }
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The list in force and the file's reloads, sampled when scraped.
impl StateSource for Revocations {
    fn samples(&self) -> Vec<Sample> {
        let reloads = |result: &str, value: &AtomicU64| Sample::Counter {
            name: "revocation_reloads",
            help: "Revocation file reads that changed the list, and refused ones (a refused file keeps the last list)",
            labels: vec![("result", result.to_owned())],
            value: value.load(Ordering::Relaxed),
        };
        vec![
            reloads("success", &self.loaded),
            reloads("failure", &self.failed),
            Sample::Gauge {
                name: "revocation_reload_failing",
                help: "1 while the revocation file on disk is refused and an older list is in force",
                labels: vec![],
                value: i64::from(self.last_error().is_some()),
            },
            Sample::Gauge {
                name: "revocation_entries",
                help: "Entries of the revocation list in force",
                labels: vec![],
                value: i64::try_from(self.current().len()).unwrap_or(i64::MAX),
            },
        ]
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
    fn a_hash_inside_a_value_is_part_of_it() {
        let list = Denylist::parse("sub user#1\njti a#b # a comment\n").unwrap();
        assert_eq!(list.token(None, "user#1"), Some(Revoked::Subject));
        assert_eq!(list.token(None, "user"), None);
        assert_eq!(list.token(Some("a#b"), ""), Some(Revoked::TokenId));
    }

    #[test]
    fn quoted_values_may_hold_spaces() {
        let list = Denylist::parse("sub \"Jane Doe\" # HR\nsub \"a\\\"b\"\n").unwrap();
        assert_eq!(list.token(None, "Jane Doe"), Some(Revoked::Subject));
        assert_eq!(list.token(None, "a\"b"), Some(Revoked::Subject));
        assert!(Denylist::parse("sub \"open").is_err());
        assert!(Denylist::parse("sub \"\"").is_err());
    }

    #[test]
    fn serials_in_every_common_form_are_one_serial() {
        // 0x0a1b as a certificate prints it, written as openssl, Python `%x`,
        // Python `hex()`, with leading zeros, and in decimal (2587).
        for line in
            ["serial 0a:1b", "serial 0A1B", "serial a1b", "serial 0xa1b", "serial 00:00:0a:1b", "serial_decimal 2587"]
        {
            let list = Denylist::parse(line).unwrap();
            assert_eq!(list.certificate("0a1b", &[0; 32]), Some(Revoked::CertificateSerial), "{line}");
        }
        // A 20-byte serial, past any machine integer, in decimal.
        let list = Denylist::parse("serial_decimal 1461501637330902918203684832716283019655932542975").unwrap();
        assert_eq!(list.certificate(&"ff".repeat(20), &[0; 32]), Some(Revoked::CertificateSerial));
        assert_eq!(Denylist::parse("serial 0").unwrap().certificate("00", &[0; 32]), Some(Revoked::CertificateSerial));
    }

    #[test]
    fn every_line_means_what_it_says_or_the_file_is_refused() {
        assert_eq!(
            Denylist::parse("jti a\nbogus x").unwrap_err().to_string(),
            "line 2: unknown kind `bogus` (jti, sub, serial, serial_decimal, fingerprint)"
        );
        for bad in ["serial xyz", "serial_decimal 12a", "jti", "sub alice bob", "fingerprint abcd", "sub a\tb c"] {
            let err = Denylist::parse(bad).unwrap_err();
            assert!(matches!(err, RevocationError::Line { line: 1, .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn an_invalid_file_keeps_the_last_good_list_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.txt");
        std::fs::write(&path, "jti one\n").unwrap();
        let revocations = Revocations::from_file(&path).unwrap();
        assert_eq!(revocations.last_error(), None);
        std::fs::write(&path, "jti one\nnonsense\n").unwrap();
        assert!(revocations.reload().is_err());
        assert_eq!(revocations.current().token(Some("one"), ""), Some(Revoked::TokenId));
        assert!(revocations.last_error().is_some_and(|e| e.contains("line 2")));
        let failing = revocations
            .samples()
            .into_iter()
            .any(|s| matches!(s, Sample::Gauge { name: "revocation_reload_failing", value: 1, .. }));
        assert!(failing, "the refused file shows in the metrics");
        std::fs::write(&path, "jti two\n").unwrap();
        assert_eq!(revocations.reload(), Ok(true));
        assert_eq!(revocations.current().token(Some("one"), ""), None);
        assert_eq!(revocations.last_error(), None);
    }
}
