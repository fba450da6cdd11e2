//! The command-line front-end: the bodies of the commands `main.rs` parses, and
//! what they share (request specs, reports, test signers, output formats).

pub mod authorize;
pub mod check_json;
pub mod demo_pki;
pub mod fmt;
pub mod offline;
pub mod output;
pub mod policy_test;
pub mod serve;
pub mod test_tokens;
pub mod validate;
