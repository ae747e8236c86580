//! Everything behind the `smelter` binary: the command-line interface ([`cli`]) and its
//! verbs ([`commands`]), the in-process cluster of `smelter up` ([`local`]), progress and
//! output rendering, and the benchmark ([`bench`]), which the `bench` verb runs.
//!
//! Programs that only query or operate a cluster use the `smelter-sdk` crate instead.

pub mod bench;
pub mod cli;
pub mod commands;
pub mod error;
pub mod local;
pub mod output;
pub mod progress;
pub mod workload;

pub use error::{CliError, Result};
