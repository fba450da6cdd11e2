//! X.509 trust bundles by trust domain, and an X.509-SVID validated whole against
//! the bundle of its own trust domain, where cedargate itself sees the handshake
//! (the in-process mode's certificate validator in `envoy-module/`).
//!
//! The ext_authz server never needs this: Envoy verified the chain before the
//! Check was sent. A validator in Envoy's place must do all of it: the chain to a
//! root (signatures, validity of every certificate, CA constraints, the client
//! authentication usage) through rustls' WebPKI verifier, and the X.509-SVID rules
//! on the leaf (`identity::svid`). Each trust domain is anchored in its own bundle
//! only, as the SPIFFE X.509-SVID specification asks (§5.1): a CA trusted for
//! `example.org` cannot vouch for `spiffe://other.org/...`, which Envoy's single
//! `trusted_ca` does not know to refuse.
//!
//! A workload reconnects with the same chain until it rotates its SVID, so a chain
//! that verified is remembered by the SHA-256 of its exact bytes, with the bundles
//! it verified against and the earliest expiry in it: the chain's verdict depends
//! on nothing else, so a later handshake with the same bytes, the same bundles and
//! no certificate expired skips the signatures (the leaf's own rules, which depend
//! on the time and the configuration, run on every handshake). The TLS handshake
//! itself still proves the peer holds the leaf's key. Refusals are not remembered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use sha2::{Digest, Sha256};

use crate::config::IdentityConfig;
use crate::identity::certificate::{self, CertificateError};
use crate::identity::spiffe::SpiffeId;
use crate::identity::svid::{self, IdentityError};

/// Why a bundle could not be loaded; a reload that fails keeps the last good one.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("identity.trust_bundles is empty: a validator must know each trust domain's CA certificates")]
    NoneConfigured,
    #[error("trust bundle {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("trust bundle {path} holds no certificate")]
    Empty { path: PathBuf },
    #[error("trust bundle {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A leaf whose chain and X.509-SVID rules passed.
#[derive(Debug)]
pub struct VerifiedSvid {
    pub spiffe_id: SpiffeId,
    pub certificate: certificate::PeerCertificate,
}

/// Every configured trust domain's verifier, swapped whole when a file changes.
pub struct TrustBundles {
    paths: BTreeMap<String, PathBuf>,
    loaded: ArcSwap<Loaded>,
    /// Chains that verified, by the SHA-256 of their bytes.
    verified: moka::sync::Cache<[u8; 32], Arc<VerifiedChain>>,
}

/// What a chain's verification established, and for how long it holds.
struct VerifiedChain {
    svid: Arc<VerifiedSvid>,
    /// `Loaded::digest` of the bundles the chain verified against.
    bundles: [u8; 32],
    /// The earliest `not_after` in the chain (Unix seconds).
    until: i64,
}

struct Loaded {
    verifiers: BTreeMap<String, Arc<dyn ClientCertVerifier>>,
    /// SHA-256 over every bundle's bytes, by trust domain: what was loaded, to tell
    /// a changed file from an unchanged one, and to tie TLS sessions to the bundles.
    digest: [u8; 32],
}

impl TrustBundles {
    /// Reads every bundle in `identity.trust_bundles`; any that cannot be used refuses.
    pub fn load(config: &IdentityConfig) -> Result<TrustBundles, BundleError> {
        if config.trust_bundles.is_empty() {
            return Err(BundleError::NoneConfigured);
        }
        let loaded = read(&config.trust_bundles)?;
        Ok(TrustBundles {
            paths: config.trust_bundles.clone(),
            loaded: ArcSwap::from_pointee(loaded),
            verified: moka::sync::Cache::new(VERIFIED_CHAINS),
        })
    }

    /// The bundle files, for a file watcher.
    pub fn paths(&self) -> Vec<&Path> {
        self.paths.values().map(PathBuf::as_path).collect()
    }

    /// SHA-256 over the bundles in use.
    pub fn digest(&self) -> [u8; 32] {
        self.loaded.load().digest
    }

    /// Reads the files again and swaps them in when they changed and all load:
    /// `Ok(true)` when new bundles are in use. On an error the bundles in use stay.
    pub fn reload(&self) -> Result<bool, BundleError> {
        let fresh = read(&self.paths)?;
        if fresh.digest == self.loaded.load().digest {
            return Ok(false);
        }
        self.loaded.store(Arc::new(fresh));
        Ok(true)
    }

    /// Validates a peer's certificate chain as presented in the handshake (leaf
    /// first, then any intermediates), at `now`.
    pub fn verify(
        &self,
        chain: &[&[u8]],
        now: SystemTime,
        config: &IdentityConfig,
    ) -> Result<Arc<VerifiedSvid>, IdentityError> {
        let (leaf, intermediates) = chain.split_first().ok_or(IdentityError::Missing)?;
        if leaf.len() > config.max_certificate_bytes {
            return Err(IdentityError::Certificate(CertificateError::TooLarge(leaf.len())));
        }
        let loaded = self.loaded.load_full();
        let key = chain_digest(chain);
        if let Some(known) = self.verified.get(&key) {
            if known.bundles == loaded.digest && svid::unix_seconds(now) <= known.until {
                let svid = Arc::clone(&known.svid);
                svid::check_trust_domain(&svid.spiffe_id, config)?;
                svid::check_leaf(&svid.certificate, now, config)?;
                return Ok(svid);
            }
        }
        let parsed = certificate::parse_der(leaf).map_err(IdentityError::Certificate)?;
        // The SAN picks the bundle; nothing in the leaf is believed until its chain
        // to that bundle verifies. Its rules are applied first all the same: a
        // refusal on unverified claims allows nothing, names the reason (an expired
        // leaf is `certificate_expired`, not an untrusted chain) and spares the
        // signatures.
        let spiffe_id = svid::svid_spiffe_id(&parsed)?;
        svid::check_trust_domain(&spiffe_id, config)?;
        svid::check_leaf(&parsed, now, config)?;
        let domain = spiffe_id.trust_domain();
        let verifier =
            loaded.verifiers.get(domain).ok_or_else(|| IdentityError::TrustBundleMissing(domain.to_owned()))?;
        let presented: Vec<CertificateDer<'_>> = intermediates.iter().map(|der| CertificateDer::from(*der)).collect();
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        verifier
            .verify_client_cert(&CertificateDer::from(*leaf), &presented, UnixTime::since_unix_epoch(since_epoch))
            .map_err(|e| IdentityError::ChainUntrusted(e.to_string()))?;
        // The chain verified, so every certificate in it parses; one that does not
        // only means the chain is not remembered.
        let until = intermediates.iter().try_fold(parsed.not_after, |earliest, der| {
            certificate::parse_der(der).ok().map(|c| earliest.min(c.not_after))
        });
        let svid = Arc::new(VerifiedSvid { spiffe_id, certificate: parsed });
        if let Some(until) = until {
            self.verified
                .insert(key, Arc::new(VerifiedChain { svid: Arc::clone(&svid), bundles: loaded.digest, until }));
        }
        Ok(svid)
    }
}

/// How many verified chains are remembered: a mesh's workloads, each with a
/// certificate or two in rotation.
const VERIFIED_CHAINS: u64 = 10_000;

/// SHA-256 over the chain's certificates, each prefixed by its length, so no two
/// different chains share the bytes hashed.
fn chain_digest(chain: &[&[u8]]) -> [u8; 32] {
    let mut digest = Sha256::new();
    for der in chain {
        digest.update(u64::try_from(der.len()).unwrap_or(u64::MAX).to_be_bytes());
        digest.update(der);
    }
    digest.finalize().into()
}

fn read(paths: &BTreeMap<String, PathBuf>) -> Result<Loaded, BundleError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifiers = BTreeMap::new();
    let mut digest = Sha256::new();
    for (domain, path) in paths {
        let text = std::fs::read(path).map_err(|e| BundleError::Read { path: path.clone(), message: e.to_string() })?;
        let invalid = |message: String| BundleError::Invalid { path: path.clone(), message };
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(&text) {
            let certificate = certificate.map_err(|e| invalid(e.to_string()))?;
            roots.add(certificate).map_err(|e| invalid(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(BundleError::Empty { path: path.clone() });
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| invalid(e.to_string()))?;
        digest.update(domain.as_bytes());
        digest.update([0]);
        digest.update(Sha256::digest(&text));
        verifiers.insert(domain.clone(), verifier);
    }
    Ok(Loaded { verifiers, digest: digest.finalize().into() })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        SanType,
    };

    struct Ca(CertifiedIssuer<'static, KeyPair>);

    impl Ca {
        fn new() -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
        }

        /// A workload leaf with `uri` as its one URI SAN, valid for `hours` from an
        /// hour ago.
        fn leaf(&self, uri: &str, hours: i64) -> Vec<u8> {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::hours(hours - 1);
            params.signed_by(&KeyPair::generate().unwrap(), &self.0).unwrap().der().to_vec()
        }
    }

    fn config(dir: &Path, bundles: &[(&str, &Ca)]) -> IdentityConfig {
        let mut config = IdentityConfig::default();
        for (domain, ca) in bundles {
            let path = dir.join(format!("{domain}.pem"));
            std::fs::write(&path, ca.0.pem()).unwrap();
            config.trust_bundles.insert((*domain).to_owned(), path);
        }
        config
    }

    #[test]
    fn a_leaf_of_its_own_trust_domains_ca_is_verified() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let config = config(dir.path(), &[("example.org", &ca)]);
        let bundles = TrustBundles::load(&config).unwrap();
        let leaf = ca.leaf("spiffe://example.org/ns/default/sa/frontend", 12);
        let verified = bundles.verify(&[&leaf], SystemTime::now(), &config).unwrap();
        assert_eq!(verified.spiffe_id.as_str(), "spiffe://example.org/ns/default/sa/frontend");
    }

    #[test]
    fn a_ca_vouches_for_its_own_trust_domain_only() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (Ca::new(), Ca::new());
        let config = config(dir.path(), &[("example.org", &ours), ("other.org", &theirs)]);
        let bundles = TrustBundles::load(&config).unwrap();
        // Signed by example.org's CA, claiming other.org: other.org's bundle decides.
        let leaf = ours.leaf("spiffe://other.org/ns/default/sa/frontend", 12);
        let err = bundles.verify(&[&leaf], SystemTime::now(), &config).unwrap_err();
        assert_eq!(err.code(), "certificate_chain_untrusted", "{err}");
        // A trust domain without a bundle has no CA at all.
        let leaf = ours.leaf("spiffe://unknown.org/x", 12);
        let err = bundles.verify(&[&leaf], SystemTime::now(), &config).unwrap_err();
        assert_eq!(err, IdentityError::TrustBundleMissing("unknown.org".into()));
    }

    #[test]
    fn what_is_not_a_valid_svid_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let mut config = config(dir.path(), &[("example.org", &ca)]);
        let bundles = TrustBundles::load(&config).unwrap();
        let now = SystemTime::now();
        let reason = |chain: &[&[u8]], config: &IdentityConfig| bundles.verify(chain, now, config).unwrap_err().code();
        assert_eq!(reason(&[], &config), "identity_missing");
        assert_eq!(reason(&[b"not a certificate"], &config), "certificate_malformed");
        // The CA itself presented as a workload's certificate.
        assert_eq!(reason(&[ca.0.der()], &config), "certificate_uri_san_count");
        let day = ca.leaf("spiffe://example.org/a", 24);
        config.max_certificate_lifetime = Some(std::time::Duration::from_secs(3600));
        assert_eq!(reason(&[&day], &config), "certificate_long_lived");
        config.max_certificate_lifetime = None;
        let later = now + std::time::Duration::from_secs(48 * 3600);
        assert_eq!(bundles.verify(&[&day], later, &config).unwrap_err().code(), "certificate_expired");
        config.trust_domains = vec!["other.org".into()];
        assert_eq!(reason(&[&day], &config), "trust_domain_not_allowed");
    }

    #[test]
    fn a_reload_swaps_bundles_only_when_they_all_load() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (Ca::new(), Ca::new());
        let config = config(dir.path(), &[("example.org", &old)]);
        let bundles = TrustBundles::load(&config).unwrap();
        let old_leaf = old.leaf("spiffe://example.org/a", 12);
        let new_leaf = new.leaf("spiffe://example.org/a", 12);
        assert!(!bundles.reload().unwrap(), "nothing changed");
        let path = &config.trust_bundles["example.org"];
        std::fs::write(path, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
        assert!(bundles.reload().is_err());
        assert!(bundles.verify(&[&old_leaf], SystemTime::now(), &config).is_ok(), "a broken file replaced the bundle");
        std::fs::write(path, "").unwrap();
        assert!(matches!(bundles.reload(), Err(BundleError::Empty { .. })));
        std::fs::write(path, format!("{}{}", old.0.pem(), new.0.pem())).unwrap();
        assert!(bundles.reload().unwrap());
        assert!(bundles.verify(&[&new_leaf], SystemTime::now(), &config).is_ok());
        assert!(bundles.verify(&[&old_leaf], SystemTime::now(), &config).is_ok(), "both CAs are in the bundle");
    }

    #[test]
    fn a_remembered_chain_still_meets_the_rules_and_the_bundles_of_the_moment() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (Ca::new(), Ca::new());
        let mut config = config(dir.path(), &[("example.org", &old)]);
        let bundles = TrustBundles::load(&config).unwrap();
        let leaf = old.leaf("spiffe://example.org/a", 24);
        let now = SystemTime::now();
        assert!(bundles.verify(&[&leaf], now, &config).is_ok());
        assert_eq!(bundles.verified.iter().count(), 1, "the verified chain is remembered");
        // The leaf's own rules run on every handshake, remembered or not.
        config.max_certificate_lifetime = Some(std::time::Duration::from_secs(3600));
        assert_eq!(bundles.verify(&[&leaf], now, &config).unwrap_err().code(), "certificate_long_lived");
        config.max_certificate_lifetime = None;
        config.trust_domains = vec!["other.org".into()];
        assert_eq!(bundles.verify(&[&leaf], now, &config).unwrap_err().code(), "trust_domain_not_allowed");
        config.trust_domains = Vec::new();
        // Past the chain's earliest expiry it is verified again, and refused.
        let later = now + std::time::Duration::from_secs(48 * 3600);
        assert_eq!(bundles.verify(&[&leaf], later, &config).unwrap_err().code(), "certificate_expired");
        // A CA taken out of the bundle no longer vouches for what it signed.
        assert!(bundles.verify(&[&leaf], now, &config).is_ok());
        std::fs::write(&config.trust_bundles["example.org"], new.0.pem()).unwrap();
        assert!(bundles.reload().unwrap());
        assert_eq!(bundles.verify(&[&leaf], now, &config).unwrap_err().code(), "certificate_chain_untrusted");
    }

    #[test]
    fn chains_of_the_same_bytes_split_differently_hash_apart() {
        assert_ne!(chain_digest(&[b"ab", b"c"]), chain_digest(&[b"a", b"bc"]));
        assert_ne!(chain_digest(&[b"abc"]), chain_digest(&[b"abc", b""]));
    }

    #[test]
    fn no_bundles_configured_refuses() {
        assert!(matches!(TrustBundles::load(&IdentityConfig::default()), Err(BundleError::NoneConfigured)));
    }
}
