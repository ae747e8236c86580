//! The one error type of the CLI crate.

/// Errors the `smelter` binary reports. `exit_code` maps them to process exit codes.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Talking to a cluster failed (unreachable, rejected, a stream broke).
    #[error(transparent)]
    Sdk(#[from] smelter_sdk::SdkError),
    /// Rendering results failed.
    #[error("output: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The pipeline spec or configuration is invalid.
    #[error(transparent)]
    Common(#[from] smelter_common::Error),
    /// A deeper check of the pipeline (expressions, SQL) failed, or a worker failed.
    #[error(transparent)]
    Worker(#[from] smelter_worker::WorkerError),
    /// Reading, verifying or compacting a table failed.
    #[error(transparent)]
    Lake(#[from] smelter_lake::LakeError),
    /// The coordinator failed.
    #[error(transparent)]
    Coordinator(#[from] smelter_coordinator::CoordinatorError),
    /// `smelter verify` found broken invariants.
    #[error("{tables} table(s) failed verification")]
    VerifyFailed {
        /// How many tables had findings.
        tables: usize,
    },
    /// A query engine error outside a worker (the benchmark's limit stages).
    #[error("query engine: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    /// A command's arguments name something that is not there (a table, a version).
    #[error("{0}")]
    InvalidArgument(String),
    /// The command could not finish now (a pipeline it waited for did not catch up); the
    /// message says what was done and how to finish.
    #[error("{0}")]
    Unfinished(String),
    /// The benchmark could not run.
    #[error("bench: {0}")]
    Bench(String),
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Sdk(smelter_sdk::SdkError::from(status))
    }
}

impl CliError {
    /// Process exit code: 2 for invalid input (spec, SQL, arguments), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Sdk(error) if error.is_invalid_input() => 2,
            CliError::Common(
                smelter_common::Error::Spec { .. } | smelter_common::Error::Config { .. },
            ) => 2,
            CliError::Worker(smelter_worker::WorkerError::InvalidSpec { .. }) => 2,
            CliError::Worker(smelter_worker::WorkerError::Lake(
                smelter_lake::LakeError::Invalid { .. },
            )) => 2,
            CliError::InvalidArgument(_) => 2,
            CliError::Lake(smelter_lake::LakeError::Invalid { .. }) => 2,
            _ => 1,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
