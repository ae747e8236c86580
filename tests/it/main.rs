//! Smelter's integration suites: one test binary, one module per area.

// Tests state their expectations with unwrap; a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod bench;
mod catalog_http;
mod cdc;
mod cli;
mod cluster;
mod deploy;
mod etcd;
mod evolution;
mod exchange;
mod faults;
mod files;
mod freshness;
mod infer;
mod kafka;
mod kafka_tls;
mod landing;
mod partition;
mod pipeline;
mod processes;
mod racing;
mod replay;
mod restart;
mod retention;
mod s3;
mod schema_registry;
mod security;
mod table_ops;
mod time_travel;
