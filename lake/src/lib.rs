//! Smelter's Delta layer: everything that reads or writes a table's log, and nothing that
//! runs a pipeline. The worker's tasks, `smelter verify`, `smelter compact`, the benchmark
//! and the tests all use it directly.
//!
//! * [`location`]: where tables live ([`TableStore`]: local directory or S3 bucket) and how
//!   the store makes a log write atomic ([`LogKind`]); [`storage`] and [`arbitrated`] are
//!   the object-store and log-store plumbing behind it, and [`claims`] how a log write
//!   is fenced on a store without put-if-absent;
//! * [`commit`]: the commit protocol — data files, then one log entry carrying the txn
//!   actions that make it exactly-once — with [`app_id`] (the only spelling of those txns),
//!   [`lock`] (the etcd commit lock and writer epochs) and [`heads`] (what a writer knows
//!   of each table's log without reloading snapshots);
//! * [`log`], [`changes`] and [`history`]: reading positions, the files a range of versions
//!   added, and the commits themselves; [`log_size`]: what opening a table reads;
//! * [`exchange`]: the rows of a committed file offered to the other workers over Flight.
//! * [`file_format`]: how data files are encoded; [`recent_files`]: rows of files this
//!   process committed moments ago, for the readers downstream;
//! * [`evolve`]: how rows of a wider schema evolve their table in their own commit, and
//!   [`backfill`]: moving rescued values into the columns declared since;
//! * [`merge`]: applying a change stream by key (the current row per key, deletes, stale
//!   changes ignored), with [`change_data`] writing Delta's change data feed;
//! * [`verify`], [`compact`] and [`delete`]: the checks behind `smelter verify`, and the
//!   rewrites behind maintenance, `smelter delete` and [`restore`]; [`concat`]:
//!   compaction by copying row groups, with [`stats_merge`] deriving the new file's
//!   statistics; [`vacuum`]: deleting the files
//!   rewrites took out, after the retention; [`log_cleanup`]: deleting log entries past
//!   the history no reader still needs; [`maintenance_record`]: what maintenance did to
//!   each table, kept beside its log; [`zorder`]: the order compaction writes rows in; [`failpoint`]: crash hooks for the fault suite.
//!
//! The invariants this crate keeps are listed, with the tests that break them, in
//! `docs/exactly-once.md`.

pub mod app_id;
pub mod arbitrated;
pub mod backfill;
pub mod change_data;
pub mod changes;
pub mod claims;
pub mod commit;
pub mod compact;
pub mod concat;
pub mod delete;
pub mod describe;
pub mod detail;
pub mod error;
pub mod evolve;
pub mod exchange;
pub mod failpoint;
pub mod file_format;
pub mod heads;
pub mod history;
pub mod location;
pub mod lock;
pub mod log;
pub mod log_cleanup;
pub mod log_size;
pub mod maintenance_record;
pub mod merge;
pub mod recent_files;
pub mod restore;
pub mod signals;
pub mod stats_merge;
pub mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod timings;
pub mod txns;
pub mod vacuum;
pub mod verify;
pub mod zorder;

pub use app_id::AppId;
pub use commit::{CommitEnv, CommitOutcome, TxnUpdate, WriteMode, commit, commit_write};
pub use error::{LakeError, Result, Retry};
pub use location::{LogKind, TableStore};
