//! The gRPC front-end: Envoy's `Authorization/Check` and gRPC health, protobuf ↔
//! domain translation, the listeners and their TLS, and the wiring that starts a
//! server and stops it gracefully.

pub mod app;
pub mod check_route;
pub mod grpc;
pub mod metadata;
pub mod proto;
pub mod tls;
pub mod wire;
