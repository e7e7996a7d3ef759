//! Operator and developer tools.
//!
//! Owns `vortexctl` (the admin and client CLI over VBP, `doctor`, the quickstart demo; issue
//! #9) and the fuzz targets for every parser: [`fuzz`] holds their bodies, `tools/fuzz/` the
//! cargo-fuzz crate that drives them, `tools/fuzz/corpus/` the corpus that `cargo test`
//! replays.

pub mod ctl;
pub mod fuzz;
