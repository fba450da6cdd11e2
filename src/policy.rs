//! Cedar policy sets: loaded from a directory (each file parsed in batches of
//! whole policies) and proven against the schema, what
//! each policy can read, the Cedar request built for a Check and the entity store it is
//! evaluated against, the evaluation index, Cedar's evaluation read straight from
//! a request's facts,
//! the decision cache keyed by exactly that request, and hot reload.

pub mod decision_cache;
pub mod direct;
pub mod format;
pub mod http_path;
pub mod index;
pub mod interpret;
pub mod load;
pub mod reads;
pub mod reload;
pub mod request;
pub mod set;
pub mod sets;
pub mod statements;
pub mod store;
pub mod values;
