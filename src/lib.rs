//! cedargate: an Envoy external authorization server that authorizes SPIFFE
//! workloads with Cedar policies.
//!
//! The folders are the architecture (ARCHITECTURE.md has the page-long version):
//!
//! - `pipeline`: the core. A `CheckInput` in, a `Decision` out, with metrics, logs
//!   and audit done once for every front-end. Free of tonic and protobuf.
//! - `identity`: who the peer workload is (SPIFFE ID, X.509-SVID rules).
//! - `credentials`: bearer tokens, issuers' keys, the revocation list.
//! - `policy`: policy sets on disk, what their policies read, the Cedar request
//!   built per Check, the decision cache, hot reload.
//! - `server`: the gRPC front-end (protobuf ↔ domain), its listeners and TLS, and
//!   the wiring of a running server.
//! - `ops`: the admin listener, audit records, metrics, logs and traces, file watching.
//! - `cli`: the bodies of the command-line commands other than `serve`.
//! - `config`: the one typed configuration.
//!
//! A Check reads top to bottom: `server::grpc` → `server::wire` (protobuf →
//! `pipeline::input`) → `pipeline::authorize` → `pipeline::checker` → `identity` →
//! `credentials::token` → `policy::request` → `policy::decision_cache` /
//! `policy::index` → `pipeline::decision` → `pipeline::authorize` (metrics, log,
//! audit) → `server::wire` (→ `CheckResponse`).
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod credentials;
pub mod identity;
pub mod ops;
pub mod pipeline;
pub mod policy;
pub mod server;
