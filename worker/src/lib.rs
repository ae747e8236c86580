//! The Smelter worker: a stateless executor of pipeline tasks.
//!
//! * [`tasks`]: ingest (source -> bronze), refine (bronze -> silver + quarantine) and
//!   aggregate (silver -> gold) loops;
//! * [`tables`]: table locations and the Delta commit protocol (design.md §5);
//! * [`source`]: the source interface with the generator and files implementations;
//! * [`refine`]: decoding, expectations and dedupe;
//! * [`gold`]: gold query results, folded incrementally from new upstream files;
//! * [`changes`]: the data files a range of versions added;
//! * [`query`] and [`serve`]: read-only SQL and the Flight SQL service;
//! * [`runtime`]: registration, heartbeats, assignment reconciliation.
//!
//! A worker keeps nothing that matters across restarts: positions live in the Delta log.

pub mod changes;
pub mod commit;
pub mod error;
pub mod failpoint;
pub mod file_format;
pub mod functions;
pub mod gold;
pub mod heads;
pub mod history;
pub mod lock;
pub mod query;
pub mod recent_files;
pub mod refine;
pub mod runtime;
pub mod schemas;
pub mod serve;
pub mod source;
pub mod storage;
pub mod tables;
pub mod tasks;
pub mod validate;
pub mod verify;

pub use error::{Result, WorkerError};
pub use runtime::run;
