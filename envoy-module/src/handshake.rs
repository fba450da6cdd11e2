//! The certificate validator at the TLS handshake (Envoy's
//! `envoy.tls.cert_validator.dynamic_modules`, in place of its default validator):
//! the peer's chain is verified against the bundle of its own trust domain and the
//! X.509-SVID rules are applied once per connection (`identity::bundle`), so a bad
//! SVID is refused before any request is read, with a TLS alert and its reason in
//! Envoy's transport failure details.
//!
//! A verified leaf is kept on the connection (read-only filter state,
//! `PEER_CERTIFICATE_KEY`) as PEM, for the HTTP filter: the ABI gives the filter no
//! other way to the certificate, and Envoy then need not write it into
//! `x-forwarded-client-cert` on every request. The core still applies the rules
//! that depend on time or on reloadable state (expiry, revocation) to every request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine as _;
use cedargate::config::IdentityConfig;
use cedargate::identity::bundle::{BundleError, TrustBundles};
use cedargate::identity::svid::IdentityError;
use cedargate::ops::metrics::{Sample, StateSource};
use cedargate::ops::watch::FileWatcher;
use tokio::task::JoinHandle;

use crate::abi::{
    Handshake, ValidationResult, ALERT_ACCESS_DENIED, ALERT_BAD_CERTIFICATE, ALERT_CERTIFICATE_EXPIRED,
    ALERT_UNKNOWN_CA,
};
use crate::engine::{background_runtime, read_config, ConfigFileError};

/// The filter-state key under which a verified peer certificate travels from the
/// handshake to the HTTP filter.
pub const PEER_CERTIFICATE_KEY: &str = "cedargate.peer_certificate";

/// Handshakes verified and refused in this process, by every validator
/// configuration: the filter's `/metrics` reports them (`HandshakeMetrics`), as a
/// validator has no metrics of its own to serve.
static HANDSHAKES: Handshakes = Handshakes {
    verified: AtomicU64::new(0),
    refused: Mutex::new(BTreeMap::new()),
    reloads: [AtomicU64::new(0), AtomicU64::new(0)],
    reload_failing: AtomicBool::new(false),
};

struct Handshakes {
    verified: AtomicU64,
    /// By reason code: refusals are rare, and their reasons few.
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Bundle reloads that swapped new bundles in, and that were refused.
    reloads: [AtomicU64; 2],
    /// The last look at the bundle files found one that does not load (the bundles
    /// in use are older than what is on disk).
    reload_failing: AtomicBool,
}

impl Handshakes {
    fn refused(&self, reason: &'static str) {
        let mut refused = self.refused.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *refused.entry(reason).or_default() += 1;
    }
}

/// `cedargate_handshakes_total`, for a filter engine's metrics.
#[derive(Debug)]
pub struct HandshakeMetrics;

impl StateSource for HandshakeMetrics {
    fn samples(&self) -> Vec<Sample> {
        const NAME: &str = "handshakes";
        const HELP: &str = "Peer certificates verified or refused at the TLS handshake, by the in-process validator";
        let verified = HANDSHAKES.verified.load(Ordering::Relaxed);
        let mut samples = vec![Sample::Counter {
            name: NAME,
            help: HELP,
            labels: vec![("outcome", "verified".to_owned()), ("reason", "verified".to_owned())],
            value: verified,
        }];
        let refused = HANDSHAKES.refused.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        samples.extend(refused.iter().map(|(reason, count)| Sample::Counter {
            name: NAME,
            help: HELP,
            labels: vec![("outcome", "refused".to_owned()), ("reason", (*reason).to_owned())],
            value: *count,
        }));
        for (result, count) in ["success", "failure"].iter().zip(&HANDSHAKES.reloads) {
            samples.push(Sample::Counter {
                name: "trust_bundle_reloads",
                help:
                    "Trust bundle files read again after a change: swapped in, or refused (the last good bundles stay)",
                labels: vec![("result", (*result).to_owned())],
                value: count.load(Ordering::Relaxed),
            });
        }
        samples.push(Sample::Gauge {
            name: "trust_bundle_reload_failing",
            help: "1 while a trust bundle file on disk is refused and older bundles are in use",
            labels: vec![],
            value: i64::from(HANDSHAKES.reload_failing.load(Ordering::Relaxed)),
        });
        samples
    }
}

/// `SSL_VERIFY_PEER` and `SSL_VERIFY_FAIL_IF_NO_PEER_CERT` (BoringSSL).
const VERIFY_PEER: i32 = 0x01;
const VERIFY_FAIL_IF_NO_PEER_CERT: i32 = 0x02;

#[derive(Debug, thiserror::Error)]
pub enum ValidatorError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("cannot start the background runtime: {0}")]
    Runtime(std::io::Error),
}

/// One `DynamicModuleCertValidatorConfig`.
pub struct Validator {
    identity: IdentityConfig,
    bundles: std::sync::Arc<TrustBundles>,
    /// What TLS sessions are tied to: the configuration file and the bundles at load.
    session_context: Vec<u8>,
    /// Re-reads the bundle files when they change (a CA rotation), off Envoy's threads.
    runtime: Option<tokio::runtime::Runtime>,
    reloads: JoinHandle<()>,
    _watcher: FileWatcher,
}

impl Validator {
    /// Reads the cedargate configuration file named by `validator_config` and the
    /// trust bundles it names; either failing refuses, and Envoy rejects the listener.
    pub fn start(validator_config: &[u8]) -> Result<Validator, ValidatorError> {
        let (path, config) = read_config("validator_config", validator_config)?;
        let bundles = std::sync::Arc::new(TrustBundles::load(&config.identity)?);
        let mut session_context = b"cedargate:".to_vec();
        session_context.extend_from_slice(path.as_bytes());
        session_context.extend_from_slice(&bundles.digest());
        let runtime = background_runtime("cedargate-bundles", &config).map_err(ValidatorError::Runtime)?;
        let watcher = FileWatcher::new(config.policies.debounce);
        let reloads = {
            let _entered = runtime.enter();
            let watched = std::sync::Arc::clone(&bundles);
            watcher.spawn("trust bundles", &bundles.paths(), move |_| match watched.reload() {
                Ok(changed) => {
                    HANDSHAKES.reload_failing.store(false, Ordering::Relaxed);
                    if changed {
                        HANDSHAKES.reloads[0].fetch_add(1, Ordering::Relaxed);
                        tracing::info!("trust bundles reloaded");
                    }
                }
                Err(e) => {
                    if !HANDSHAKES.reload_failing.swap(true, Ordering::Relaxed) {
                        HANDSHAKES.reloads[1].fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::error!(error = %e, "trust bundles not reloaded; the last good ones stay in use");
                }
            })
        };
        tracing::info!(trust_domains = ?config.identity.trust_bundles.keys().collect::<Vec<_>>(), "cedargate certificate validator loaded in Envoy");
        Ok(Validator {
            identity: config.identity,
            bundles,
            session_context,
            runtime: Some(runtime),
            reloads,
            _watcher: watcher,
        })
    }

    /// BoringSSL's verify mode: a certificate is demanded unless the configuration
    /// lets a request through on `source.principal` alone.
    pub fn verify_mode(&self) -> i32 {
        match self.identity.require_certificate {
            true => VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT,
            false => VERIFY_PEER,
        }
    }

    pub fn session_context(&self) -> &[u8] {
        &self.session_context
    }

    /// Verifies one handshake's chain; on success the leaf is kept on the connection.
    /// `is_server`: Envoy is the TLS server, verifying a client (a listener).
    pub fn verify(&self, handshake: &Handshake, chain: &[&[u8]], is_server: bool) -> ValidationResult {
        if !is_server {
            // An upstream's certificate is a server's, for which none of the
            // X.509-SVID client rules or the filter state make sense.
            handshake.set_error_details("cedargate: the cedargate validator verifies clients on listeners only");
            HANDSHAKES.refused("not_a_listener");
            return ValidationResult::failed(ALERT_BAD_CERTIFICATE);
        }
        let refused = |e: &IdentityError| {
            let details = format!("cedargate: {}: {e}", e.code());
            tracing::warn!(reason = e.code(), error = %e, "peer certificate refused at the handshake");
            HANDSHAKES.refused(e.code());
            handshake.set_error_details(&details);
            ValidationResult::failed(alert(e))
        };
        let Some(leaf) = chain.first() else { return refused(&IdentityError::Missing) };
        let verified = match self.bundles.verify(chain, SystemTime::now(), &self.identity) {
            Ok(verified) => verified,
            Err(e) => return refused(&e),
        };
        if !handshake.set_filter_state(PEER_CERTIFICATE_KEY, pem(leaf).as_bytes()) {
            // Without it no request on this connection could be decided.
            return refused(&IdentityError::CertificateMissing);
        }
        tracing::debug!(peer = verified.spiffe_id.as_str(), "peer certificate verified at the handshake");
        HANDSHAKES.verified.fetch_add(1, Ordering::Relaxed);
        ValidationResult::VALIDATED
    }
}

impl Drop for Validator {
    fn drop(&mut self) {
        self.reloads.abort();
        // Without waiting on Envoy's main thread for a reload in progress.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The TLS alert for a refusal: what a client's TLS library reports.
fn alert(e: &IdentityError) -> u8 {
    match e {
        IdentityError::CertificateExpired | IdentityError::CertificateNotYetValid => ALERT_CERTIFICATE_EXPIRED,
        IdentityError::ChainUntrusted(_) | IdentityError::TrustBundleMissing(_) => ALERT_UNKNOWN_CA,
        IdentityError::TrustDomainNotAllowed(_) => ALERT_ACCESS_DENIED,
        _ => ALERT_BAD_CERTIFICATE,
    }
}

/// DER as a PEM `CERTIFICATE` block: the form the core reads a certificate in.
fn pem(der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = String::with_capacity(encoded.len() + encoded.len() / 64 + 64);
    text.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap_or_default());
        text.push('\n');
    }
    text.push_str("-----END CERTIFICATE-----\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_as_pem_parses_back_to_the_same_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["x.example.org".to_owned()]).unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let parsed = cedargate::identity::certificate::parse_url_encoded_pem(&pem(&der), 16 * 1024).unwrap();
        assert_eq!(parsed, cedargate::identity::certificate::parse_der(&der).unwrap());
    }
}
