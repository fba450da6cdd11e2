//! What operators watch and steer, kept apart from the request path: the admin
//! listener, the audit writer, metrics, logs and traces.

pub mod admin;
pub mod audit;
pub mod json_line;
pub mod metrics;
pub mod telemetry;
pub mod watch;
