//! cohort: find and coordinate the other running instances of your program.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod local;
