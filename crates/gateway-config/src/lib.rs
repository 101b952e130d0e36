//! `gateway-config`: the schema of `gateway.toml`, `${ENV}` interpolation, and validation
//! whose every error names `FILE:LINE:COL`.

pub mod schema;
pub mod units;

pub use schema::*;
pub use units::{ByteSize, Duration};
