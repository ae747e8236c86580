//! Shared runtime of Smelter, used by the coordinator, the workers and the CLI.
//!
//! Deliberately small: layered configuration, logging, the coordination-store trait with
//! its in-memory and etcd implementations, Kafka client settings, and the pipeline spec types with their validation. Anything
//! that needs DataFusion or Delta lives in the worker crate instead.

pub mod config;
pub mod error;
pub mod kafka;
pub mod quality;
pub mod security;
pub mod shutdown;
pub mod spec;
pub mod store;
pub mod telemetry;

pub use error::{Error, Result};
