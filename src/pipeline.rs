//! The core: one Check from a domain `CheckInput` to a `Decision`, and what happens
//! with every decision (metrics, log line, audit record), the same for every
//! front-end. Nothing here knows about tonic or protobuf.

pub mod authorize;
pub mod checker;
pub mod decision;
pub mod input;
pub mod reply;
