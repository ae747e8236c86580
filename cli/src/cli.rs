//! Command-line interface definitions (kept apart from the library configuration).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::output::Format;

/// Smelter: Kafka-to-lakehouse pipelines (bronze, silver, gold Delta tables) on a cluster
/// of stateless Rust workers, queried over Flight SQL.
#[derive(Debug, Parser)]
#[command(name = "smelter", version, about)]
pub struct Cli {
    /// Configuration file (smelter.toml); `SMELTER__SECTION__KEY` variables override it.
    #[arg(long, global = true, env = "SMELTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log lines as JSON objects.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// Default log level (RUST_LOG overrides).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a coordinator and workers in this process, with local tables; no external services.
    Up(UpArgs),
    /// Run SQL over Flight SQL and print the result.
    Query(QueryArgs),
    /// Show workers, task placement and progress.
    Status(StatusArgs),
    /// List the tables a worker serves.
    Tables(TablesArgs),
    /// Check a pipeline file (schema, expectations, gold SQL) without running it.
    Validate(ValidateArgs),
    /// Declare or update a pipeline on a running coordinator.
    Apply(ApplyArgs),
    /// Read the first records of a source and print the schema they suggest, to pin.
    Infer(InferArgs),
    /// Replay tables' Delta logs and check the exactly-once invariants (exit 1 on findings).
    Verify(VerifyArgs),
    /// Rewrite tables' small files into larger ones (safe while the pipeline runs).
    Compact(CompactArgs),
    /// A table's commits, newest first: what each did and what it consumed.
    History(HistoryArgs),
    /// A silver table's data-quality figures, summed over its refine commits.
    Quality(QualityArgs),
    /// What automatic maintenance did to the tables (compactions, vacuums, failures).
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
    /// Delete the rows matching a predicate, in one commit (safe while the pipeline runs).
    Delete(DeleteArgs),
    /// Refine a silver table's quarantined records again under the current spec: those
    /// that now pass go to silver, the others stay quarantined with their new reason.
    Replay(ReplayArgs),
    /// Move the values a silver table kept in `_rescued_data` into the columns the spec
    /// declared since, in one commit.
    Backfill(BackfillArgs),
    /// Bring a table (and the layers it feeds) or a whole pipeline back to an earlier
    /// version; the pipeline is paused meanwhile and reprocesses from there.
    Restore(RestoreArgs),
    /// Pause a pipeline: its tasks finish their batch and stop, staying placed.
    Pause(PauseArgs),
    /// Resume a paused pipeline.
    Resume(PauseArgs),
    /// Measure throughput, latency and memory against the limit of the bare stages.
    Bench(BenchArgs),
    /// Run the coordinator role.
    Coordinator,
    /// Run a worker role.
    Worker,
}

/// `smelter up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Run the built-in demo (examples/shop.yaml: the clickstream, the users table's change
    /// stream, and gold joining them).
    #[arg(long, conflicts_with = "pipeline")]
    pub demo: bool,
    /// Pipeline file to run.
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Number of workers (1 to 64).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Where tables are kept (tables go to DIR/tables).
    #[arg(long, default_value = "smelter-data")]
    pub data_dir: PathBuf,
    /// Flight SQL address of the first worker.
    #[arg(long)]
    pub flight_addr: Option<String>,
    /// gRPC address of the coordinator.
    #[arg(long)]
    pub coordinator_addr: Option<String>,
    /// Serve /health, /ready and /metrics (Prometheus) on this address.
    #[arg(long)]
    pub http_addr: Option<String>,
    /// Exit once every bounded source is fully processed through gold.
    #[arg(long)]
    pub exit_when_done: bool,
}

/// `smelter query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The SQL (read-only; tables are named `layer.table`).
    pub sql: String,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Flight SQL endpoint of a worker.
    #[arg(long, env = "SMELTER_FLIGHT", default_value = "127.0.0.1:8815")]
    pub endpoint: String,
}

/// `smelter status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Output format (`table` or `json`).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Coordinator endpoints, comma-separated: every replica (the leader is found among them).
    #[arg(long, env = "SMELTER_COORDINATOR", default_value = "127.0.0.1:7070")]
    pub coordinator: String,
}

/// `smelter tables`.
#[derive(Debug, clap::Args)]
pub struct TablesArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Flight SQL endpoint of a worker.
    #[arg(long, env = "SMELTER_FLIGHT", default_value = "127.0.0.1:8815")]
    pub endpoint: String,
}

/// `smelter validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The pipeline file.
    pub file: PathBuf,
}

/// `smelter infer`.
#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// The pipeline file declaring the source.
    #[arg(long)]
    pub pipeline: PathBuf,
    /// The source to read (one of the pipeline's `sources`).
    #[arg(long)]
    pub source: String,
    /// How many records to look at, at most.
    #[arg(long, default_value_t = 1000)]
    pub sample: usize,
    /// Stop reading once the source has had nothing new for this many seconds.
    #[arg(long, default_value_t = 5)]
    pub idle_secs: u64,
    /// Output format (`table`: the spec's YAML; `json`: the schema and what was seen).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// `smelter apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The pipeline file.
    pub file: PathBuf,
    /// Coordinator endpoints, comma-separated: every replica (the leader is found among them).
    #[arg(long, env = "SMELTER_COORDINATOR", default_value = "127.0.0.1:7070")]
    pub coordinator: String,
}

/// `smelter verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Tables to check (`bronze.events` ...); all tables when none are named.
    pub tables: Vec<String>,
    /// Data directory as given to `smelter up` (tables in DIR/tables); defaults to
    /// `storage.root` of the configuration.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output format (`table` or `json`).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// `smelter quality`.
#[derive(Debug, clap::Args)]
pub struct QualityArgs {
    /// The silver table (`silver.events`).
    pub table: String,
    /// Only commits at or after this time (RFC 3339: `2026-11-01T10:00:00Z`).
    #[arg(long)]
    pub since: Option<String>,
    /// Data directory as given to `smelter up` (tables in DIR/tables); defaults to
    /// `storage.root` of the configuration.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output format (`table` or `json`).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// `smelter maintenance ...`.
#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Per table: files now (small ones too), and what maintenance ran, when, and what it
    /// saved — read from storage, no cluster needed.
    Status(MaintenanceStatusArgs),
}

/// `smelter maintenance status`.
#[derive(Debug, clap::Args)]
pub struct MaintenanceStatusArgs {
    /// Tables to show (default: every table under the root).
    pub tables: Vec<String>,
    /// Data directory as given to `smelter up` (tables in DIR/tables); defaults to
    /// `storage.root` of the configuration.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output format (`table` or `json`).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// `smelter history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The table (`silver.events` ...).
    pub table: String,
    /// Show at most this many versions (the newest).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Data directory as given to `smelter up` (tables in DIR/tables); defaults to
    /// `storage.root` of the configuration.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output format (`table` or `json`).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// `smelter compact`.
#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// Tables to compact; all tables when none are named.
    pub tables: Vec<String>,
    /// Data directory as given to `smelter up` (tables in DIR/tables); defaults to
    /// `storage.root` of the configuration.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output format (`table` or `json`).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// `smelter delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The table (`layer.name`).
    pub table: String,
    /// SQL predicate over the table's columns; matching rows are deleted.
    #[arg(long = "where")]
    pub predicate: String,
    /// On a silver table, also delete the bronze and quarantine records the rows came from
    /// (gold tables that read it rebuild on their next pass).
    #[arg(long)]
    pub cascade: bool,
    /// With `--cascade`: the pipeline file declaring the silver table. Bronze and
    /// quarantine records are then found by what they say (each payload refined as silver
    /// would, the predicate evaluated on it): re-sent copies, quarantined records and
    /// records not yet refined go too. Without it, only the records at the deleted rows'
    /// source positions.
    #[arg(long, requires = "cascade")]
    pub pipeline: Option<PathBuf>,
    /// With `--pipeline`: how long to wait for refine to catch up with bronze (before
    /// anything is deleted, and once more after bronze's delete).
    #[arg(long, default_value_t = 120, requires = "pipeline")]
    pub wait_secs: u64,
    /// Data directory as given to `smelter up` (tables in DIR/tables); defaults to
    /// `storage.root` of the configuration.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output format (`table` or `json`).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// `smelter backfill`.
#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// The silver table (`layer.name`).
    pub table: String,
    /// The pipeline file declaring the table (its columns are filled).
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Only these columns (repeatable); all declared columns by default.
    #[arg(long = "column")]
    pub columns: Vec<String>,
    /// Data directory as given to `smelter up` (tables in DIR/tables); defaults to
    /// `storage.root` of the configuration.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output format (`table` or `json`).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// `smelter replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The quarantine table (`silver.<name>_quarantine`).
    pub table: String,
    /// The pipeline file the cluster runs (its current spec refines the records).
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Only records quarantined by this rule.
    #[arg(long)]
    pub rule: Option<String>,
    /// Only records matching this SQL predicate over the quarantine's columns.
    #[arg(long = "where")]
    pub predicate: Option<String>,
    /// Data directory as given to `smelter up` (tables in DIR/tables); defaults to
    /// `storage.root` of the configuration.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output format (`table` or `json`).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// `smelter restore`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["table", "pipeline"])))]
#[command(group(clap::ArgGroup::new("when").required(true).args(["version", "timestamp"])))]
pub struct RestoreArgs {
    /// The table (`layer.name`) to bring back.
    pub table: Option<String>,
    /// Bring every table of this pipeline back to one consistent cut (with --timestamp).
    #[arg(long, requires = "timestamp", conflicts_with = "version")]
    pub pipeline: Option<String>,
    /// The version to bring the table back to.
    #[arg(long)]
    pub version: Option<i64>,
    /// The time to bring it back to (RFC 3339, `YYYY-MM-DD HH:MM:SS` or a date; UTC): the
    /// latest version committed at or before it.
    #[arg(long)]
    pub timestamp: Option<String>,
    /// Coordinator endpoints, comma-separated: the pipeline is paused there meanwhile.
    #[arg(long, env = "SMELTER_COORDINATOR", default_value = "127.0.0.1:7070")]
    pub coordinator: String,
    /// Nothing runs the pipeline: restore the tables without pausing it.
    #[arg(long)]
    pub offline: bool,
    /// Data directory as given to `smelter up` (tables in DIR/tables); defaults to
    /// `storage.root` of the configuration.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output format (`table` or `json`).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// `smelter pause` and `smelter resume`.
#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// The pipeline.
    pub pipeline: String,
    /// Coordinator endpoints, comma-separated.
    #[arg(long, env = "SMELTER_COORDINATOR", default_value = "127.0.0.1:7070")]
    pub coordinator: String,
}

/// `smelter bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Events per run.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Produce rate of the end-to-end runs, events per second.
    #[arg(long, default_value_t = 50_000)]
    pub rate: u64,
    /// Source partitions.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub partitions: u32,
    /// Workers (in process and in the cluster).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Kafka bootstrap servers: also run the pipeline as a cluster on this broker.
    #[arg(long, requires = "etcd")]
    pub brokers: Option<String>,
    /// etcd client URLs for the cluster run, comma-separated.
    #[arg(long, requires = "brokers")]
    pub etcd: Option<String>,
    /// Process id of that etcd, when it runs on this machine: its CPU is reported.
    #[arg(long, requires = "etcd")]
    pub etcd_pid: Option<u32>,
    /// Run the cluster only (skip the in-process runs).
    #[arg(long, requires = "brokers")]
    pub cluster_only: bool,
    /// `RUST_LOG` of the cluster run's coordinator and workers (their logs go to this
    /// command's stderr), for example `warn,smelter_worker::tasks::aggregate=debug`.
    #[arg(long, default_value = smelter_harness::QUIET_LOGS)]
    pub cluster_log: String,
    /// An S3-compatible endpoint (moto, MinIO) for the cluster run's tables (or the
    /// soak's), in bucket `smelter-bench` (created if missing); default: a local directory.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// With `--s3-endpoint`: treat the store as one without put-if-absent (log writes
    /// arbitrated through the commit locks).
    #[arg(long, requires = "s3_endpoint")]
    pub s3_no_conditional_put: bool,
    /// Run only maintenance under load: the demo in process at `--rate` for this many
    /// seconds with automatic compaction, checkpoints and vacuum, sampling every table
    /// (files, snapshot open time, maintenance done, failed commit attempts).
    #[arg(long, default_value_t = 0)]
    pub soak_secs: u64,
    /// Seconds between the soak's samples.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub soak_sample_secs: u64,
    /// Runs of each end-to-end pipeline; the one with the least CPU is reported (as for
    /// the limit's stages: other load on a shared machine only ever adds CPU time).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,
    /// Small commits written for the table-operations figures (snapshot open time with
    /// and without checkpoints, compaction and vacuum per GB).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(2..=100_000))]
    pub table_commits: u64,
    /// Changes merged for the CDC figures (SCD 1 and 2 against appends and a bare delta-rs
    /// MERGE of the same batches); 0 skips them.
    #[arg(long, default_value_t = 1_000_000)]
    pub cdc_changes: u64,
    /// Distinct keys of those changes.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub cdc_keys: u64,
    /// Changes per merge commit.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub cdc_batch: u64,
    /// Seconds of the paced change stream whose change-to-gold latency is measured (a
    /// merged silver table and a gold aggregate over it); 0 skips it.
    #[arg(long, default_value_t = 20)]
    pub cdc_seconds: u64,
    /// Changes per second of that stream (over `--cdc-keys` keys).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub cdc_rate: u64,
    /// Rows per file of the file-format figures (NDJSON, CSV, Parquet and Avro read as a
    /// files source and refine read them, against each format's bare Arrow reader); 0
    /// skips them.
    #[arg(long, default_value_t = 200_000)]
    pub format_rows: u64,
    /// Events of the files-source run: the demo's clickstream written as six NDJSON files
    /// and refined by the demo pipeline reading them; 0 skips it.
    #[arg(long, default_value_t = 300_000)]
    pub files_events: u64,
    /// A Python with polars and the `deltalake` package: the files-source run also times a
    /// short polars script doing the same job on the same files.
    #[arg(long)]
    pub polars_python: Option<PathBuf>,
    /// Where runs keep their tables (removed after each run); defaults to the temp dir.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Also write the JSON result to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
    /// Output format (`table` or `json`).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}
