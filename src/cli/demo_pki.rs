//! `cedargate demo-pki`: a throw-away mesh for trying cedargate with Envoy on a
//! laptop — a CA, Envoy's certificate, three workloads' X.509-SVIDs and
//! cedargate's own, and the shipped envoy.yaml pointed at them. Nothing here is
//! for production: the CA's key is thrown away, so these certificates can never be
//! renewed.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The shipped Envoy configuration; its certificate directory is replaced.
const ENVOY_YAML: &str = include_str!("../../envoy-config/envoy.yaml");
const ENVOY_CERT_DIR: &str = "/etc/cedargate/certs/";
/// Short-lived, as the shipped guardrail wants (it forbids more than 24 hours).
const LIFETIME: time::Duration = time::Duration::hours(12);

/// The certificates made, by file stem, with the identity each carries.
pub const WORKLOADS: [(&str, &str); 4] = [
    ("frontend", "spiffe://example.org/ns/default/sa/frontend"),
    ("payments", "spiffe://example.org/ns/default/sa/payments"),
    ("reporting", "spiffe://example.org/ns/ops/sa/reporting"),
    ("cedargate", "spiffe://example.org/ns/cedargate-system/sa/cedargate"),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoPkiError {
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot write `{path}`: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write into (created if missing).
    #[arg(long, default_value = "demo")]
    pub out: PathBuf,
}

/// `cedargate demo-pki`: writes the files and lists them.
pub fn run(args: Args) -> std::process::ExitCode {
    match write(&args.out) {
        Ok(files) => {
            for file in files {
                println!("wrote {}", file.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes `ca.pem`, `server.pem` (Envoy: the orders service and
/// `orders.example.org`), a `<name>.pem` for each of `WORKLOADS`, their keys
/// (`*-key.pem`) and `envoy.yaml` into `out`; returns the files written.
pub fn write(out: &Path) -> Result<Vec<PathBuf>, DemoPkiError> {
    let write = |name: &str, text: &str| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|source| DemoPkiError::Write { path: path.clone(), source })?;
        Ok::<_, DemoPkiError>(path)
    };
    std::fs::create_dir_all(out).map_err(|source| DemoPkiError::Write { path: out.to_owned(), source })?;
    let now = time::OffsetDateTime::now_utc();
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::OrganizationName, "cedargate demo");
    ca_params.distinguished_name.push(DnType::CommonName, "cedargate demo mesh CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - time::Duration::minutes(5);
    ca_params.not_after = now + time::Duration::days(1);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let mut files = vec![write("ca.pem", &ca.pem())?];
    let mut leaf = |stem: &str, spiffe_id: &str, dns: Option<&str>| -> Result<(), DemoPkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::OrganizationName, "cedargate demo");
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        if let Some(dns) = dns {
            params.subject_alt_names.push(SanType::DnsName(dns.try_into()?));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + LIFETIME;
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &ca)?;
        files.push(write(&format!("{stem}.pem"), &certificate.pem())?);
        files.push(write(&format!("{stem}-key.pem"), &key.serialize_pem())?);
        Ok(())
    };
    leaf("server", "spiffe://example.org/ns/default/sa/orders", Some("orders.example.org"))?;
    for (stem, spiffe_id) in WORKLOADS {
        leaf(stem, spiffe_id, None)?;
    }
    let absolute = std::path::absolute(out).unwrap_or_else(|_| out.to_owned());
    let envoy = ENVOY_YAML.replace(ENVOY_CERT_DIR, &format!("{}/", absolute.display()));
    files.push(write("envoy.yaml", &envoy)?);
    Ok(files)
}
