//! Token signing keys generated at test time (RSA, P-256, Ed25519), their JWKS, and
//! tokens signed with them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

pub const ISSUER: &str = "https://idp.example.org";
pub const AUDIENCE: &str = "orders";

/// A private key with its public JWK.
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
    pub jwk: Value,
    /// Public key bytes (PKCS#1 DER for RSA, raw otherwise), for the HS256 confusion attack.
    pub public_der: Vec<u8>,
}

impl Signer {
    pub fn rsa(kid: &str) -> Signer {
        use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
        use rsa::traits::PublicKeyParts;
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let public = private.to_public_key();
        let der = private.to_pkcs1_der().unwrap();
        Signer {
            kid: kid.to_owned(),
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "kid": kid, "use": "sig",
                "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            }),
            public_der: public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
        }
    }

    pub fn ec(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        Signer {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            }),
            public_der: pair.public_key_raw().to_vec(),
        }
    }

    pub fn ed(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Signer {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw()) }),
            public_der: pair.public_key_raw().to_vec(),
        }
    }

    /// Signs `claims` with this key, `kid` and `alg` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(json!({ "alg": alg_name(self.alg), "kid": self.kid, "typ": "JWT" }), claims)
    }

    pub fn sign_with_header(&self, header: Value, claims: &Value) -> String {
        let alg: Algorithm = header["alg"].as_str().unwrap().parse().unwrap();
        let signing_input = format!("{}.{}", b64_json(&header), b64_json(claims));
        let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &self.key, alg).unwrap();
        format!("{signing_input}.{signature}")
    }
}

pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        Algorithm::PS256 => "PS256",
        other => panic!("not used in tests: {other:?}"),
    }
}

pub fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// An HS256 token whose "secret" is a public key: the classic key-confusion attack.
pub fn hs256_with_secret(secret: &[u8], kid: &str, claims: &Value) -> String {
    let header = json!({ "alg": "HS256", "kid": kid, "typ": "JWT" });
    let signing_input = format!("{}.{}", b64_json(&header), b64_json(claims));
    let signature =
        jsonwebtoken::crypto::sign(signing_input.as_bytes(), &EncodingKey::from_secret(secret), Algorithm::HS256)
            .unwrap();
    format!("{signing_input}.{signature}")
}

/// A JWKS document with the public keys of `signers`.
pub fn jwks(signers: &[&Signer]) -> String {
    json!({ "keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// Valid claims for the test issuer: issued now, five minutes to live.
pub fn claims(now: i64, sub: &str) -> Value {
    json!({
        "iss": ISSUER, "sub": sub, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 300,
        "jti": format!("jti-{sub}-{now}"), "scope": "orders:read orders:write",
    })
}

/// base64url(SHA-256(DER)): the RFC 8705 `x5t#S256` of a certificate.
pub fn x5t_s256(cert_der: &[u8]) -> String {
    use sha2::Digest;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(cert_der))
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}
