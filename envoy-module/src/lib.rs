//! cedargate inside Envoy: an HTTP filter for Envoy's dynamic modules
//! (`envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter`) that
//! decides each request with the very core the ext_authz server runs
//! (`cedargate::pipeline`), on Envoy's worker thread, without a network hop.
//!
//! A request's path through this crate, top to bottom:
//! `hooks` (Envoy calls in; panics stop here) → `request` (Envoy's headers and
//! connection as the core's `CheckInput`) → `engine` (the core's `Authorizer`,
//! never waiting) → `respond` (the core's `Reply` as Envoy calls). `abi` is the
//! only place that touches Envoy's C interface.
//!
//! Before any request, at each TLS handshake: `hooks` → `handshake` (the peer's
//! chain against its trust domain's bundle and the X.509-SVID rules, the verified
//! leaf kept on the connection for `request`).

mod abi;
mod engine;
mod handshake;
mod hooks;
mod request;
mod respond;
