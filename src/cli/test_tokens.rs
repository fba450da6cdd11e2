//! Signed tokens for policy test cases (`token_claims` in `*.test.toml`).
//!
//! A test run makes every configured issuer trust one Ed25519 key generated for
//! that run only (it never leaves the process but for a JWKS file that is deleted
//! afterwards), and signs each case's claims with it. The token then goes through
//! the server's full verification (issuer, audience, expiry, lifetime, type,
//! required claims, custom claim types), so a case tests what production would do
//! with a token carrying those claims.

use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::config::{Config, IssuerConfig};

const KID: &str = "cedargate-test";
/// Issuer and audience used when the configuration names no issuer.
pub const TEST_ISSUER: &str = "https://cedargate.test";
pub const TEST_AUDIENCE: &str = "cedargate-test";
/// How long a test token is valid after its `iat`, unless the case sets `exp`.
const LIFETIME_SECONDS: i64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum TestTokenError {
    #[error("cannot make a test key: {0}")]
    Key(String),
    #[error("cannot write the test JWKS `{path}`: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("issuer `{0}` uses the JWT-SVID profile, which test tokens (EdDSA) cannot satisfy")]
    SpiffeIssuer(String),
    #[error("cannot sign the test token: {0}")]
    Sign(String),
}

/// The run's key, the JWKS file the issuers read it from, and the issuer that
/// unspecified claims default to.
pub struct TestSigner {
    key: jsonwebtoken::EncodingKey,
    jwks_file: PathBuf,
    issuer: String,
    audience: String,
    typ: Option<String>,
}

impl Drop for TestSigner {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.jwks_file);
    }
}

impl TestSigner {
    /// Generates the key and points every issuer of `config` at it (adding a test
    /// issuer when none is configured).
    pub fn install(config: &mut Config) -> Result<TestSigner, TestTokenError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| TestTokenError::Key(e.to_string()))?;
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410): a fixed prefix.
        let mut pkcs8 =
            vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        pkcs8.extend_from_slice(&seed);
        let key = jsonwebtoken::EncodingKey::from_ed_der(&pkcs8);
        let jwks = json!({ "keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": KID,
            "x": URL_SAFE_NO_PAD.encode(public),
        }]});
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let jwks_file = std::env::temp_dir().join(format!("cedargate-test-jwks-{}-{nanos}.json", std::process::id()));
        std::fs::write(&jwks_file, jwks.to_string())
            .map_err(|source| TestTokenError::Write { path: jwks_file.clone(), source })?;
        if config.tokens.issuers.is_empty() {
            config.tokens.issuers.push(IssuerConfig {
                issuer: TEST_ISSUER.to_owned(),
                audiences: vec![TEST_AUDIENCE.to_owned()],
                ..IssuerConfig::default()
            });
        }
        for issuer in &mut config.tokens.issuers {
            if issuer.spiffe {
                let _ = std::fs::remove_file(&jwks_file);
                return Err(TestTokenError::SpiffeIssuer(issuer.issuer.clone()));
            }
            issuer.jwks_file = Some(jwks_file.clone());
            issuer.jwks_url = None;
            issuer.jwks_ca_file = None;
            if !issuer.algorithms.iter().any(|a| a == "EdDSA") {
                issuer.algorithms.push("EdDSA".to_owned());
            }
        }
        let first = config.tokens.issuers.first().cloned().unwrap_or_default();
        Ok(TestSigner {
            key,
            jwks_file,
            issuer: first.issuer,
            audience: first.audiences.first().cloned().unwrap_or_default(),
            typ: first.typ,
        })
    }

    /// A token with `claims`; `iss`, `aud`, `iat` (= `now`) and `exp` (5 minutes
    /// later) are filled in when the case leaves them out.
    pub fn sign(&self, claims: &Map<String, Value>, now: i64) -> Result<String, TestTokenError> {
        let mut claims = claims.clone();
        claims.entry("iss").or_insert_with(|| self.issuer.clone().into());
        claims.entry("aud").or_insert_with(|| self.audience.clone().into());
        claims.entry("iat").or_insert_with(|| now.into());
        let iat = claims.get("iat").and_then(Value::as_i64).unwrap_or(now);
        claims.entry("exp").or_insert_with(|| (iat + LIFETIME_SECONDS).into());
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(KID.to_owned());
        header.typ = self.typ.clone().or(header.typ);
        jsonwebtoken::encode(&header, &Value::Object(claims), &self.key)
            .map_err(|e| TestTokenError::Sign(e.to_string()))
    }
}
