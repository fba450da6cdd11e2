//! cedargate: an Envoy external authorization server that authorizes SPIFFE
//! workloads with Cedar policies.
//!
//! A Check flows through the modules in this order: `grpc` (tonic) → `wire`
//! (protobuf → `input`) → `check` (the pipeline) → `identity` (`spiffe`,
//! `certificate`) → `token` (`jwks`, `revocation`, kept fresh by `credentials`) →
//! `cedar_request` (`http_path`) → Cedar evaluation against a `policy_set` snapshot
//! → `decision` → `wire` (→ `CheckResponse`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod cedar_request;
pub mod certificate;
pub mod check;
pub mod check_json;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod decision_cache;
pub mod demo_pki;
pub mod grpc;
pub mod http_path;
pub mod identity;
pub mod input;
pub mod jwks;
pub mod metrics;
pub mod offline;
pub mod policy_fmt;
pub mod policy_index;
pub mod policy_load;
pub mod policy_reads;
pub mod policy_set;
pub mod proto;
pub mod reload;
pub mod revocation;
pub mod spiffe;
pub mod telemetry;
pub mod test_tokens;
pub mod tls;
pub mod token;
pub mod wire;
