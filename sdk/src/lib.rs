//! The Smelter SDK: what a Rust program embeds to query and operate a Smelter cluster.
//!
//! * [`QueryClient`]: SQL over Arrow Flight SQL against any worker (or `smelter up`);
//! * [`AdminClient`]: the coordinator's control API — status, apply — that finds the
//!   leader among the replicas it is given and waits out an election;
//! * [`Channels`]: connections kept per endpoint for servers that call many times;
//! * [`status_json`]: a cluster status as the stable JSON document `smelter status
//!   --output json` prints.
//!
//! It depends on the wire types, tonic and arrow-flight only: no query engine, no Delta,
//! no worker runtime.

mod admin;
mod connect;
mod error;
mod query;
mod status;

pub use admin::{AdminClient, ELECTION_WAIT};
pub use connect::{Channels, Credentials, TlsOptions};
pub use error::{Result, SdkError};
pub use query::QueryClient;
pub use status::status_json;
