//! The Smelter worker: a stateless executor of pipeline tasks.
//!
//! * [`runtime`]: registration, heartbeats, the assignment stream, and the supervised units
//!   that run the assigned tasks;
//! * [`tasks`]: ingest (source -> bronze), refine (bronze -> silver + quarantine) and
//!   aggregate (silver -> gold) loops, and the schemas of the tables they write;
//! * [`source`]: the source interface with the generator, files and Kafka implementations;
//! * [`refine`]: decoding, expectations and dedupe; [`checks`]: the table checks evaluated
//!   on what each pass commits;
//! * [`gold`]: gold query results, folded incrementally from new upstream files;
//! * [`serve`]: read-only SQL over the tables and the Flight SQL service.
//!
//! Everything that touches a table's log — locations, the commit protocol, heads, locks,
//! verification — is the `smelter-lake` crate. A worker keeps nothing that matters across
//! restarts: positions live in the Delta log.

pub mod checks;
pub mod error;
pub mod gold;
pub mod refine;
pub mod runtime;
pub mod serve;
pub mod source;
pub mod tasks;
pub mod timings;

pub use error::{Result, WorkerError};
pub use runtime::{ProcessShared, run};
