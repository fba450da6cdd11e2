//! The peer's leaf certificate, as Envoy forwards it (`include_peer_certificate`):
//! URL-encoded PEM, parsed with x509-parser into the few facts cedargate needs.
//!
//! Only parsing happens here; the X.509-SVID rules are applied in `identity`. The
//! chain was already verified by Envoy during the handshake, so no signature is
//! checked here: this module must only never trust bytes it could not parse.

use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// Facts about a parsed leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// SHA-256 of the DER encoding (what RFC 8705 `x5t#S256` binds to).
    pub sha256: [u8; 32],
    /// `sha256` as lowercase hex, worked out once: every audit record carries it.
    pub sha256_hex: String,
    /// Serial number, lowercase hex without separators or leading zero bytes (as
    /// `openssl x509 -serial` prints it, lowercased).
    pub serial: String,
    /// Issuer distinguished name, RFC 4514 form.
    pub issuer: String,
    /// Validity window, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// Whether basicConstraints says `CA:true`.
    pub is_ca: bool,
    /// The keyUsage extension, when present.
    pub key_usage: Option<KeyUsage>,
    /// Every URI subject alternative name, in certificate order.
    pub uri_sans: Vec<String>,
}

impl PeerCertificate {
    /// The SHA-256 fingerprint as lowercase hex.
    pub fn fingerprint(&self) -> &str {
        &self.sha256_hex
    }

    /// `not_after - not_before` in seconds.
    pub fn lifetime_seconds(&self) -> i64 {
        self.not_after.saturating_sub(self.not_before)
    }
}

/// The keyUsage bits the X.509-SVID rules speak of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUsage {
    pub digital_signature: bool,
    pub key_cert_sign: bool,
    pub crl_sign: bool,
}

/// Why `source.certificate` could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("certificate is {0} bytes, over the limit")]
    TooLarge(usize),
    #[error("certificate is not valid PEM")]
    NotPem,
    #[error("PEM block is `{0}`, not `CERTIFICATE`")]
    WrongLabel(String),
    #[error("certificate is not valid DER: {0}")]
    NotDer(String),
    #[error("certificate has trailing data after its DER encoding")]
    TrailingData,
    #[error("certificate extensions are malformed or repeated: {0}")]
    BadExtensions(String),
}

/// Parses the URL-encoded PEM of a leaf certificate.
pub fn parse_url_encoded_pem(encoded: &str, max_bytes: usize) -> Result<PeerCertificate, CertificateError> {
    if encoded.len() > max_bytes {
        return Err(CertificateError::TooLarge(encoded.len()));
    }
    let pem_bytes: Vec<u8> = percent_decode_str(encoded).collect();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem_bytes).map_err(|_| CertificateError::NotPem)?;
    if pem.label != "CERTIFICATE" {
        // The label is attacker-controlled; keep the message short.
        let label: String = pem.label.chars().take(40).collect();
        return Err(CertificateError::WrongLabel(label));
    }
    parse_der(&pem.contents)
}

/// Parses one DER-encoded certificate.
pub fn parse_der(der: &[u8]) -> Result<PeerCertificate, CertificateError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertificateError::NotDer(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertificateError::TrailingData);
    }
    let basic_constraints = cert.basic_constraints().map_err(|e| CertificateError::BadExtensions(e.to_string()))?;
    let san = cert.subject_alternative_name().map_err(|e| CertificateError::BadExtensions(e.to_string()))?;
    let key_usage = cert.key_usage().map_err(|e| CertificateError::BadExtensions(e.to_string()))?.map(|ext| KeyUsage {
        digital_signature: ext.value.digital_signature(),
        key_cert_sign: ext.value.key_cert_sign(),
        crl_sign: ext.value.crl_sign(),
    });
    let uri_sans = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let sha256: [u8; 32] = Sha256::digest(der).into();
    Ok(PeerCertificate {
        sha256,
        sha256_hex: hex::encode(sha256),
        serial: serial_hex(cert.raw_serial()),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: basic_constraints.is_some_and(|ext| ext.value.ca),
        key_usage,
        uri_sans,
    })
}

/// The serial as an integer in hex: DER pads a serial with a high bit set with a
/// leading zero byte, which is not part of the number.
pub fn serial_hex(raw: &[u8]) -> String {
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    hex::encode(raw.get(first..).unwrap_or(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_pem() {
        assert_eq!(parse_url_encoded_pem("hello", 16384), Err(CertificateError::NotPem));
        assert_eq!(parse_url_encoded_pem("", 16384), Err(CertificateError::NotPem));
    }

    #[test]
    fn truncated_der_is_rejected() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB+TCCAZ+gAwIBAgIUWg8DTM9Ph8ahFqoc2gDfELhefS8wCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----\n";
        let encoded: String = percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).collect();
        assert!(matches!(parse_url_encoded_pem(&encoded, 16384), Err(CertificateError::NotDer(_))));
    }

    #[test]
    fn other_pem_labels_are_rejected() {
        let pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(parse_url_encoded_pem(pem, 16384), Err(CertificateError::WrongLabel("PRIVATE KEY".to_owned())));
    }

    #[test]
    fn oversized_input_is_rejected_before_decoding() {
        assert_eq!(parse_url_encoded_pem(&"A".repeat(100), 10), Err(CertificateError::TooLarge(100)));
    }

    #[test]
    fn serial_hex_is_lowercase_without_the_der_padding() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0xab]), "8fab");
    }
}
