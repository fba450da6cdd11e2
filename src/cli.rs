//! The command-line front-end: the bodies of `validate`, `authorize`, `test`, `fmt`
//! and `demo-pki`, and what they share (request specs, reports, test signers).

pub mod check_json;
pub mod demo_pki;
pub mod offline;
pub mod test_tokens;
