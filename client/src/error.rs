//! The one error type of the client crate.

/// Errors the SDK and the CLI report. `exit_code` maps them to process exit codes.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server rejected the request (bad SQL, unknown table, limits).
    #[error("{}", .0.message())]
    Rejected(tonic::Status),
    /// The server could not be reached.
    #[error("cannot reach {endpoint}: {message}")]
    Unreachable {
        /// What was dialled.
        endpoint: String,
        /// Why it failed.
        message: String,
    },
    /// A Flight stream failed mid-way.
    #[error("flight: {0}")]
    Flight(#[from] arrow_flight::error::FlightError),
    /// Rendering results failed.
    #[error("output: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The pipeline spec or configuration is invalid.
    #[error(transparent)]
    Common(#[from] smelter_common::Error),
    /// A deeper check of the pipeline (expressions, SQL) failed, or a worker failed.
    #[error(transparent)]
    Worker(#[from] smelter_worker::WorkerError),
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

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Rejected(status)
    }
}

impl ClientError {
    /// Process exit code: 2 for invalid input (spec, SQL, arguments), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Rejected(status) if status.code() == tonic::Code::InvalidArgument => 2,
            ClientError::Common(
                smelter_common::Error::Spec { .. } | smelter_common::Error::Config { .. },
            ) => 2,
            ClientError::Worker(smelter_worker::WorkerError::InvalidSpec { .. }) => 2,
            _ => 1,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
