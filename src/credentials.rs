//! Bearer tokens and what they are judged by: issuers' keys (JWKS) and the
//! revocation list, kept fresh while cedargate runs.

pub mod jwks;
pub mod revocation;
pub mod sources;
pub mod token;
