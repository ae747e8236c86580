//! The Smelter client: a Rust SDK ([`sdk`]) for Flight SQL queries and the admin API, and
//! everything behind the `smelter` binary ([`cli`], [`commands`]), including the
//! in-process cluster of `smelter up` ([`local`]).

pub mod bench;
pub mod cli;
pub mod commands;
pub mod error;
pub mod local;
pub mod output;
pub mod progress;
pub mod sdk;
pub mod workload;

pub use error::{ClientError, Result};
