//! Token signing keys: JWKS documents parsed once into verification keys, and kept
//! fresh from a local file or an HTTPS URL.
//!
//! Keys only ever come from the configured source of their issuer, never from a
//! token (`jku`, `x5u`, `x5c` and embedded `jwk` headers are not read anywhere).
//! Each key records which algorithms it may verify, decided from the key itself
//! (`kty`, `crv`, and `alg` when published), so that a token cannot choose an
//! algorithm its key was not made for.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::IssuerConfig;

/// Largest JWKS document accepted from a file or URL.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// RSA moduli shorter than this are refused (NIST SP 800-131A).
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// Time allowed for one JWKS fetch, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One public key and what it may verify.
pub struct VerificationKey {
    pub kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl VerificationKey {
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

/// The usable keys of one JWKS document.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<VerificationKey>,
}

/// What a token's `kid` found.
pub enum KeyLookup<'a> {
    Found(&'a VerificationKey),
    /// No key with that `kid` (or, without a `kid`, no single key for the algorithm).
    Unknown,
    /// The key exists but was not made for the token's algorithm.
    WrongAlgorithm,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read `{path}`: {message}")]
    Read { path: String, message: String },
    #[error("cannot fetch `{url}`: {message}")]
    Fetch { url: String, message: String },
    #[error("not a JWKS document: {0}")]
    Format(String),
    #[error("the JWKS has no usable signing key ({0})")]
    NoUsableKey(String),
    #[error("cannot set up the HTTPS client: {0}")]
    Tls(String),
}

impl KeySet {
    /// Parses a JWKS document. Keys cedargate cannot use (symmetric, encryption-only,
    /// short RSA, unknown curves) are skipped; a document with no usable key at all is
    /// an error, so that a broken publication never replaces working keys.
    pub fn parse(bytes: &[u8]) -> Result<KeySet, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::Format(format!("{} bytes, over the {MAX_JWKS_BYTES} byte limit", bytes.len())));
        }
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| JwksError::Format(e.to_string()))?;
        let entries =
            doc.get("keys").and_then(Value::as_array).ok_or_else(|| JwksError::Format("no `keys` array".to_owned()))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            match verification_key(entry) {
                Ok(key) => keys.push(key),
                Err(why) => skipped.push(format!("key {index}: {why}")),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey(if skipped.is_empty() {
                "empty".to_owned()
            } else {
                skipped.join("; ")
            }));
        }
        for why in &skipped {
            tracing::debug!("jwks: skipped {why}");
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Finds the key for a token. `kid` is only a lookup key: the key must also have
    /// been made for `alg`. A token without `kid` is accepted only when exactly one
    /// key can verify its algorithm.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup<'_> {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(key) if key.accepts(alg) => KeyLookup::Found(key),
                Some(_) => KeyLookup::WrongAlgorithm,
                None => KeyLookup::Unknown,
            },
            None => {
                let mut candidates = self.keys.iter().filter(|k| k.accepts(alg));
                match (candidates.next(), candidates.next()) {
                    (Some(key), None) => KeyLookup::Found(key),
                    _ => KeyLookup::Unknown,
                }
            }
        }
    }
}

/// One JWK as a verification key, or why it cannot be one.
fn verification_key(entry: &Value) -> Result<VerificationKey, String> {
    let field = |name: &str| entry.get(name).and_then(Value::as_str);
    if field("use").is_some_and(|u| u != "sig") {
        return Err("not a signing key (`use`)".to_owned());
    }
    if let Some(ops) = entry.get("key_ops").and_then(Value::as_array) {
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Err("`key_ops` does not include verify".to_owned());
        }
    }
    let by_key_type: Vec<Algorithm> = match (field("kty"), field("crv")) {
        (Some("RSA"), _) => {
            let modulus = field("n").unwrap_or_default();
            // base64url without padding: 4 characters per 3 bytes.
            if modulus.len() * 3 / 4 < MIN_RSA_MODULUS_BYTES {
                return Err("RSA modulus shorter than 2048 bits".to_owned());
            }
            use Algorithm::*;
            vec![RS256, RS384, RS512, PS256, PS384, PS512]
        }
        (Some("EC"), Some("P-256")) => vec![Algorithm::ES256],
        (Some("EC"), Some("P-384")) => vec![Algorithm::ES384],
        (Some("OKP"), Some("Ed25519")) => vec![Algorithm::EdDSA],
        (Some("oct"), _) => return Err("symmetric keys are never used".to_owned()),
        (kty, crv) => return Err(format!("unsupported key type {kty:?} / curve {crv:?}")),
    };
    let algorithms = match field("alg") {
        None => by_key_type,
        Some(alg) => {
            let alg: Algorithm = alg.parse().map_err(|_| format!("unknown `alg` {alg:?}"))?;
            if !by_key_type.contains(&alg) {
                return Err(format!("`alg` {alg:?} does not fit the key type"));
            }
            vec![alg]
        }
    };
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("malformed JWK: {e}"))?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable JWK: {e}"))?;
    Ok(VerificationKey { kid: field("kid").map(str::to_owned), algorithms, key })
}

/// Where an issuer's keys come from.
enum KeySource {
    File(PathBuf),
    Url(Box<HttpsFetcher>),
}

/// An issuer's current keys, with their refresh machinery.
pub struct IssuerKeys {
    pub issuer: String,
    source: KeySource,
    current: ArcSwap<KeySet>,
    /// Bumped whenever the keys change; part of every cache key derived from them.
    generation: AtomicU64,
    min_refresh: Duration,
    interval: Duration,
    /// Serializes refreshes and remembers the last attempt, for rate limiting.
    refresh: tokio::sync::Mutex<RefreshState>,
    pub stats: RefreshStats,
}

#[derive(Default)]
struct RefreshState {
    /// Last refresh asked for by a token with an unknown `kid` (the rate-limited kind;
    /// scheduled refreshes do not count against it).
    last_on_demand: Option<Instant>,
    last_digest: Option<[u8; 32]>,
}

/// Refresh outcomes, for metrics.
#[derive(Default)]
pub struct RefreshStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

impl IssuerKeys {
    /// Sets up an issuer's key source. A file is read now (and must be usable); a URL
    /// starts empty and is fetched by `run_refresher` and on demand.
    pub fn new(config: &IssuerConfig) -> Result<IssuerKeys, JwksError> {
        let (source, interval) = match (&config.jwks_file, &config.jwks_url) {
            (Some(path), _) => (KeySource::File(path.clone()), config.jwks_refresh),
            (None, Some(url)) => {
                (KeySource::Url(Box::new(HttpsFetcher::new(url, config.jwks_ca_file.as_deref())?)), config.jwks_refresh)
            }
            (None, None) => return Err(JwksError::Format("no JWKS source configured".to_owned())),
        };
        let keys = IssuerKeys {
            issuer: config.issuer.clone(),
            source,
            current: ArcSwap::from_pointee(KeySet::default()),
            generation: AtomicU64::new(0),
            min_refresh: config.jwks_min_refresh,
            interval,
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            stats: RefreshStats::default(),
        };
        if let KeySource::File(path) = &keys.source {
            let bytes = read_file(path)?;
            let set = KeySet::parse(&bytes)
                .map_err(|e| JwksError::Read { path: path.display().to_string(), message: e.to_string() })?;
            keys.current.store(Arc::new(set));
            if let Ok(mut state) = keys.refresh.try_lock() {
                state.last_digest = Some(Sha256::digest(&bytes).into());
            }
        }
        Ok(keys)
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Refreshes because a token named a `kid` not in `seen_generation`'s keys.
    /// Returns whether the keys changed since then. Rate-limited: at most one fetch
    /// per `jwks_min_refresh`, so a flood of made-up `kid`s cannot hammer the issuer;
    /// concurrent callers share one fetch.
    pub async fn refresh_for_unknown_kid(&self, seen_generation: u64) -> bool {
        let mut state = self.refresh.lock().await;
        if self.generation() != seen_generation {
            return true;
        }
        if state.last_on_demand.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return false;
        }
        state.last_on_demand = Some(Instant::now());
        self.refresh_locked(&mut state).await;
        self.generation() != seen_generation
    }

    /// The JWKS file, when the keys come from one (`ops::watch` watches it).
    pub fn file(&self) -> Option<&std::path::Path> {
        match &self.source {
            KeySource::File(path) => Some(path),
            KeySource::Url(_) => None,
        }
    }

    /// Reads the source once more; a failure keeps the last good keys.
    pub async fn refresh(&self) {
        let mut state = self.refresh.lock().await;
        self.refresh_locked(&mut state).await;
    }

    /// Fetches a JWKS URL now and then every `jwks_refresh`, until the task is
    /// aborted. (A file is watched instead.)
    pub async fn run_refresher(self: Arc<Self>) {
        if self.file().is_some() {
            return;
        }
        loop {
            self.refresh().await;
            tokio::time::sleep(self.interval).await;
        }
    }

    /// One refresh attempt; a failure keeps the last good keys.
    async fn refresh_locked(&self, state: &mut RefreshState) {
        let fetched = match &self.source {
            KeySource::File(path) => read_file(path),
            KeySource::Url(fetcher) => fetcher.fetch().await,
        };
        let bytes = match fetched {
            Ok(bytes) => bytes,
            Err(e) => return self.refresh_failed(&e),
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if state.last_digest == Some(digest) {
            self.stats.ok.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match KeySet::parse(&bytes) {
            Ok(set) => {
                tracing::info!(issuer = %self.issuer, keys = set.len(), "jwks updated");
                self.current.store(Arc::new(set));
                self.generation.fetch_add(1, Ordering::AcqRel);
                state.last_digest = Some(digest);
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.refresh_failed(&e),
        }
    }

    fn refresh_failed(&self, error: &JwksError) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(issuer = %self.issuer, error = %error, keys = self.current().len(), "jwks refresh failed; keeping the last good keys");
    }
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, JwksError> {
    let read = |message: String| JwksError::Read { path: path.display().to_string(), message };
    let meta = std::fs::metadata(path).map_err(|e| read(e.to_string()))?;
    if meta.len() > MAX_JWKS_BYTES as u64 {
        return Err(read(format!("{} bytes, over the {MAX_JWKS_BYTES} byte limit", meta.len())));
    }
    std::fs::read(path).map_err(|e| read(e.to_string()))
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// Fetches a JWKS document over HTTPS (HTTP/1.1, rustls).
struct HttpsFetcher {
    url: hyper::Uri,
    client: HttpsClient,
}

impl HttpsFetcher {
    fn new(url: &str, ca_file: Option<&std::path::Path>) -> Result<HttpsFetcher, JwksError> {
        let uri: hyper::Uri =
            url.parse().map_err(|e| JwksError::Fetch { url: url.to_owned(), message: format!("{e}") })?;
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                use rustls::pki_types::{pem::PemObject, CertificateDer};
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| JwksError::Tls(format!("{}: {e}", path.display())))?;
                for cert in certs {
                    let cert = cert.map_err(|e| JwksError::Tls(format!("{}: {e}", path.display())))?;
                    roots.add(cert).map_err(|e| JwksError::Tls(format!("{}: {e}", path.display())))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                let (added, _ignored) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(JwksError::Tls("no system root certificates found; set jwks_ca_file".to_owned()));
                }
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| JwksError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Ok(HttpsFetcher { url: uri, client })
    }

    async fn fetch(&self) -> Result<Vec<u8>, JwksError> {
        use http_body_util::BodyExt;
        let fail = |message: String| JwksError::Fetch { url: self.url.to_string(), message };
        let request = hyper::Request::get(self.url.clone())
            .header(hyper::header::ACCEPT, "application/jwk-set+json, application/json")
            .body(http_body_util::Empty::new())
            .map_err(|e| fail(e.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| fail(error_chain(&e)))?;
            if response.status() != hyper::StatusCode::OK {
                return Err(fail(format!("HTTP status {}", response.status())));
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| fail(e.to_string()))?;
            Ok(body.to_bytes().to_vec())
        };
        tokio::time::timeout(FETCH_TIMEOUT, exchange).await.map_err(|_| fail("timed out".to_owned()))?
    }
}

/// An error with its sources, which hyper keeps the useful part of.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        message.push_str(": ");
        message.push_str(&e.to_string());
        source = e.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_KEY: &str =
        r#"{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

    fn jwks(keys: &[&str]) -> Vec<u8> {
        format!(r#"{{"keys":[{}]}}"#, keys.join(",")).into_bytes()
    }

    #[test]
    fn keys_verify_only_the_algorithms_they_were_made_for() {
        let set = KeySet::parse(&jwks(&[ED_KEY])).unwrap();
        assert!(matches!(set.find(Some("ed"), Algorithm::EdDSA), KeyLookup::Found(_)));
        assert!(matches!(set.find(Some("ed"), Algorithm::RS256), KeyLookup::WrongAlgorithm));
        assert!(matches!(set.find(Some("other"), Algorithm::EdDSA), KeyLookup::Unknown));
        assert!(matches!(set.find(None, Algorithm::EdDSA), KeyLookup::Found(_)));
    }

    #[test]
    fn symmetric_and_encryption_keys_are_never_used() {
        let oct = r#"{"kty":"oct","kid":"s","k":"c2VjcmV0"}"#;
        let enc =
            r#"{"kty":"OKP","crv":"Ed25519","use":"enc","kid":"e","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        assert!(matches!(KeySet::parse(&jwks(&[oct, enc])), Err(JwksError::NoUsableKey(_))));
        assert_eq!(KeySet::parse(&jwks(&[oct, ED_KEY])).unwrap().len(), 1);
    }

    #[test]
    fn published_alg_must_fit_the_key() {
        let lying = r#"{"kty":"OKP","crv":"Ed25519","alg":"RS256","kid":"x","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        assert!(KeySet::parse(&jwks(&[lying])).is_err());
        let short_rsa = r#"{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}"#;
        assert!(KeySet::parse(&jwks(&[short_rsa])).is_err());
    }

    #[test]
    fn garbage_is_a_format_error() {
        assert!(matches!(KeySet::parse(b"not json"), Err(JwksError::Format(_))));
        assert!(matches!(KeySet::parse(b"{}"), Err(JwksError::Format(_))));
        assert!(matches!(KeySet::parse(b"{\"keys\":[]}"), Err(JwksError::NoUsableKey(_))));
    }
}
