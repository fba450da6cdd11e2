//! The shipped `envoy-in-process.yaml` without the module's certificate
//! validator: Envoy's own validator (`trusted_ca`) and the peer certificate in
//! `x-forwarded-client-cert`, the filter's fallback. Shared by the end-to-end
//! tests and the Envoy benchmark, so both run the same variant.

/// `yaml` (the shipped file, its paths already replaced) with Envoy's own
/// validator trusting `ca_file`, and the certificate header on.
pub fn with_forwarded_certificate(yaml: &str, ca_file: &str) -> String {
    let validator = "              custom_validator_config:";
    let start = yaml.find(validator).expect("envoy-in-process.yaml has the module's certificate validator");
    let end = yaml[start..].find("      filters:").expect("the validator is followed by the filters") + start;
    let sanitize = "          forward_client_cert_details: SANITIZE\n";
    assert_eq!(yaml.matches(sanitize).count(), 1, "envoy-in-process.yaml sets forward_client_cert_details: SANITIZE");
    let mut yaml = yaml.to_owned();
    yaml.replace_range(start..end, &format!("              trusted_ca: {{ filename: {ca_file} }}\n"));
    yaml.replace(
        sanitize,
        "          forward_client_cert_details: SANITIZE_SET\n          set_current_client_cert_details: { cert: true, uri: true }\n",
    )
}
