//! Offline evaluation for policy authors: one request (`cedargate authorize`) or a
//! file of test cases (`cedargate test`), decided by the very `Checker` the server
//! uses — only the input comes from flags or files instead of Envoy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::cli::test_tokens::TestSigner;
use crate::config::{Config, ConfigError};
use crate::pipeline::checker::{Checker, Clock};
use crate::pipeline::decision::{Decision, Outcome};
use crate::pipeline::input::{CheckInput, HttpInput, PeerInput};

/// The configuration offline commands run with: the file's, or the defaults, with
/// the given policy directory.
pub fn config(path: Option<&Path>, policies: &Path) -> Result<Config, ConfigError> {
    let mut config = match path {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.policies.dir = policies.to_owned();
    Ok(config)
}

/// A clock the test runner sets per case.
#[derive(Debug, Default)]
pub struct SettableClock(Mutex<Option<SystemTime>>);

impl SettableClock {
    pub fn set(&self, at: Option<SystemTime>) {
        if let Ok(mut t) = self.0.lock() {
            *t = at;
        }
    }
}

impl Clock for SettableClock {
    fn now(&self) -> SystemTime {
        self.0.lock().ok().and_then(|t| *t).unwrap_or_else(SystemTime::now)
    }
}

/// A request described by its parts, as on the command line or in a test case.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RequestSpec {
    /// The caller's SPIFFE ID (`source.principal`).
    pub principal: String,
    /// PEM of the caller's certificate; without it the SPIFFE ID alone is used.
    pub certificate: Option<String>,
    pub method: String,
    pub path: String,
    pub host: String,
    pub headers: BTreeMap<String, String>,
    /// Envoy's per-route context_extensions.
    pub route: BTreeMap<String, String>,
    /// `destination.principal`.
    pub destination: String,
    /// A bearer token, sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl RequestSpec {
    pub fn input(&self) -> CheckInput {
        let mut headers: Vec<(String, String)> =
            self.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
        if let Some(token) = &self.token {
            headers.push(("authorization".to_owned(), format!("Bearer {token}")));
        }
        headers.sort();
        let certificate = self.certificate.as_deref().map(url_encode).unwrap_or_default();
        CheckInput {
            source: PeerInput { principal: self.principal.clone(), certificate, ..PeerInput::default() },
            destination: PeerInput { principal: self.destination.clone(), ..PeerInput::default() },
            http: Some(HttpInput {
                method: if self.method.is_empty() { "GET".to_owned() } else { self.method.to_ascii_uppercase() },
                path: if self.path.is_empty() { "/".to_owned() } else { self.path.clone() },
                host: self.host.clone(),
                scheme: "https".to_owned(),
                protocol: "HTTP/1.1".to_owned(),
                headers,
                ..HttpInput::default()
            }),
            context_extensions: self.route.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

/// Envoy forwards the certificate URL-encoded; offline inputs are plain PEM.
fn url_encode(pem: &str) -> String {
    percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A decision in the form both commands print.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub decision: &'static str,
    pub reason: String,
    pub status: u16,
    pub policies: Vec<String>,
    pub errors: Vec<String>,
    pub detail: Option<String>,
    pub policy_version: String,
}

impl Report {
    pub fn of(decision: &Decision) -> Report {
        let (status, detail) = match &decision.outcome {
            Outcome::Allow => (200, None),
            Outcome::Deny(reason) => (reason.http_status(), Some(reason.to_string())),
        };
        Report {
            decision: if decision.is_allowed() { "allow" } else { "deny" },
            reason: decision.code().to_owned(),
            status,
            policies: decision.policies.to_vec(),
            errors: decision.errors.to_vec(),
            detail,
            policy_version: decision.policy_version.clone(),
        }
    }

    /// For people: the decision, why, and which policies determined it.
    pub fn human(&self) -> String {
        let mut out = match self.decision {
            "allow" => "ALLOW".to_owned(),
            _ => format!("DENY {} {}", self.status, self.reason),
        };
        if let Some(detail) = self.detail.as_ref().filter(|_| self.reason != "policy_denied") {
            out.push_str(&format!("\n  why: {detail}"));
        }
        match (self.policies.is_empty(), self.decision) {
            (true, "deny") if self.reason == "policy_denied" => out.push_str("\n  no permit applies (default deny)"),
            (false, _) => out.push_str(&format!("\n  determined by: {}", self.policies.join(", "))),
            _ => {}
        }
        for error in &self.errors {
            out.push_str(&format!("\n  evaluation error: {error}"));
        }
        out
    }
}

/// One file of policy test cases (`*.test.toml` beside the policies).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    #[serde(rename = "case")]
    pub cases: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    /// When the request is decided (RFC 3339); default: now.
    #[serde(default)]
    pub time: Option<String>,
    #[serde(flatten)]
    pub request: RequestSpec,
    /// Claims of a bearer token the test run signs with a key the configured
    /// issuers trust for the run (see `test_tokens`).
    #[serde(default)]
    pub token_claims: Option<toml::Table>,
    pub expect: Expected,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// `allow` or `deny`.
    pub decision: String,
    /// The reason code, for a deny (`policy_denied`, `certificate_expired`, ...).
    #[serde(default)]
    pub reason: Option<String>,
    /// Exactly the policies that determined the decision, in any order.
    #[serde(default)]
    pub policies: Option<Vec<String>>,
}

/// The outcome of one case.
#[derive(Debug, Serialize)]
pub struct CaseResult {
    pub file: String,
    pub name: String,
    pub passed: bool,
    /// Expected vs actual, line by line, for a failure.
    pub diff: Vec<String>,
    pub actual: Report,
}

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("cannot read `{path}`: {message}")]
    Read { path: String, message: String },
    #[error("`{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("`{path}`: case `{case}`: {message}")]
    Token { path: String, case: String, message: String },
}

/// The `*.test.toml` files of a directory, sorted.
pub fn test_files(dir: &Path) -> Result<Vec<PathBuf>, OfflineError> {
    let read_err = |e: std::io::Error| OfflineError::Read { path: dir.display().to_string(), message: e.to_string() };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".test.toml")))
        .collect();
    files.sort();
    Ok(files)
}

pub fn parse_test_file(path: &Path) -> Result<TestFile, OfflineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| OfflineError::Read { path: path.display().to_string(), message: e.to_string() })?;
    toml::from_str(&text).map_err(|e| OfflineError::Parse { path: path.display().to_string(), message: e.to_string() })
}

/// Runs one file's cases against `checker`, whose clock `clock` is.
pub fn run_cases(
    file: &str,
    tests: &TestFile,
    checker: &Checker,
    clock: &Arc<SettableClock>,
    signer: Option<&TestSigner>,
) -> Result<Vec<CaseResult>, OfflineError> {
    let mut results = Vec::new();
    for case in &tests.cases {
        let at = case
            .time
            .as_deref()
            .map(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map(SystemTime::from)
                    .map_err(|e| OfflineError::Parse {
                        path: file.to_owned(),
                        message: format!("case `{}`: time: {e}", case.name),
                    })
            })
            .transpose()?;
        clock.set(at);
        let mut request = case.request.clone();
        if let Some(claims) = &case.token_claims {
            let token_error =
                |message: String| OfflineError::Token { path: file.to_owned(), case: case.name.clone(), message };
            let signer = signer.ok_or_else(|| token_error("no test signer was set up".to_owned()))?;
            let claims = match serde_json::to_value(claims) {
                Ok(serde_json::Value::Object(claims)) => claims,
                _ => return Err(token_error("token_claims must be a table".to_owned())),
            };
            let now = crate::identity::svid::unix_seconds(at.unwrap_or_else(SystemTime::now));
            request.token = Some(signer.sign(&claims, now).map_err(|e| token_error(e.to_string()))?);
        }
        let actual = Report::of(&checker.check(&request.input()));
        let diff = compare(&case.expect, &actual);
        results.push(CaseResult {
            file: file.to_owned(),
            name: case.name.clone(),
            passed: diff.is_empty(),
            diff,
            actual,
        });
    }
    clock.set(None);
    Ok(results)
}

fn compare(expected: &Expected, actual: &Report) -> Vec<String> {
    let mut diff = Vec::new();
    if expected.decision != actual.decision {
        diff.push(format!("- decision: {}\n+ decision: {}", expected.decision, actual.decision));
    }
    if let Some(reason) = expected.reason.as_ref().filter(|r| **r != actual.reason) {
        diff.push(format!("- reason: {reason}\n+ reason: {}", actual.reason));
    }
    if let Some(policies) = &expected.policies {
        let (mut want, mut got) = (policies.clone(), actual.policies.clone());
        want.sort();
        got.sort();
        if want != got {
            diff.push(format!("- policies: [{}]\n+ policies: [{}]", want.join(", "), got.join(", ")));
        }
    }
    diff
}
