//! A throw-away PKI made at test time: a mesh CA and X.509-SVIDs.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

#[derive(Clone)]
pub struct LeafSpec {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    /// Key usages instead of the default (digitalSignature for a leaf).
    pub key_usages: Option<Vec<KeyUsagePurpose>>,
}

impl LeafSpec {
    /// A one-hour SVID for `spiffe_id`, valid from a minute ago.
    pub fn svid(spiffe_id: &str) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            uris: vec![spiffe_id.to_owned()],
            dns: Vec::new(),
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::hours(1),
            is_ca: false,
            key_usages: None,
        }
    }

    pub fn valid_for(mut self, from: OffsetDateTime, to: OffsetDateTime) -> LeafSpec {
        self.not_before = from;
        self.not_after = to;
        self
    }
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::OrganizationName, "example.org");
        params.distinguished_name.push(DnType::CommonName, "cedargate test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(400);
        params.not_after = now + Duration::days(400);
        let key = KeyPair::generate().unwrap();
        Pki { ca: CertifiedIssuer::self_signed(params, key).unwrap() }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn leaf(&self, spec: &LeafSpec) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::OrganizationName, "example.org");
        params.distinguished_name.push(DnType::CommonName, "workload");
        params.subject_alt_names = spec
            .uris
            .iter()
            .map(|u| SanType::URI(u.as_str().try_into().unwrap()))
            .chain(spec.dns.iter().map(|d| SanType::DnsName(d.as_str().try_into().unwrap())))
            .collect();
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        if spec.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        if let Some(usages) = &spec.key_usages {
            params.key_usages = usages.clone();
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    /// A server certificate for 127.0.0.1 (an IP SAN), for test HTTPS servers.
    pub fn loopback_server(&self) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    pub fn svid(&self, spiffe_id: &str) -> Leaf {
        self.leaf(&LeafSpec::svid(spiffe_id))
    }
}

/// PEM as Envoy forwards it in `source.certificate`.
pub fn url_encode(pem: &str) -> String {
    percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string()
}
