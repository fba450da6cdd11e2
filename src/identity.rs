//! Who is calling: the peer workload's SPIFFE ID, proven by its X.509-SVID.

pub mod bundle;
pub mod certificate;
pub mod spiffe;
pub mod svid;
