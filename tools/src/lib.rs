//! Operator and developer tools.
//!
//! Owns `vortexctl` (the admin and client CLI over VBP, `doctor`, the quickstart demo) and the
//! fuzz targets for every parser.
//!
//! Empty until issue #9 fills it.
