//! The one error type of the worker crate.

/// Errors raised by worker tasks, the commit protocol and the query service.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Delta Lake read, write or commit failure.
    #[error("delta table {table}: {source}")]
    Delta {
        /// `layer.name` of the table.
        table: String,
        /// The delta-rs error.
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    /// Another writer committed the same application transaction first; reload and decide
    /// from the table's txn versions.
    #[error("commit to {table} conflicted with a concurrent writer: {message}")]
    CommitConflict {
        /// `layer.name` of the table.
        table: String,
        /// What delta-rs reported.
        message: String,
    },
    /// The table storage (an object store) is unusable or refused a request.
    #[error("storage {location}: {message}")]
    Storage {
        /// The storage location.
        location: String,
        /// What went wrong.
        message: String,
    },
    /// Query planning or execution failed (bad SQL, unknown table, resource limit).
    #[error("query failed: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    /// Building or converting Arrow data failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// An expectation with `on_violation: fail` was violated.
    #[error(
        "expectation `{rule}` failed on {table}: {count} row(s) violate `{expr}`, first at {position}"
    )]
    ExpectationFailed {
        /// Silver table.
        table: String,
        /// Rule name.
        rule: String,
        /// The rule's expression.
        expr: String,
        /// Violating rows in the batch.
        count: usize,
        /// Source position of the first violation (`topic/partition@offset`).
        position: String,
    },
    /// The pipeline spec is inconsistent with what the planner finds (bad expression, bad SQL).
    #[error("{origin}: {field}: {message}")]
    InvalidSpec {
        /// File name of the spec.
        origin: String,
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A source could not be read.
    #[error("source {source_name}: {message}")]
    Source {
        /// Source name.
        source_name: String,
        /// What went wrong.
        message: String,
    },
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The coordinator rejected or did not answer a control-plane call.
    #[error("control plane: {0}")]
    Control(#[from] tonic::Status),
    /// The coordinator could not be reached.
    #[error("cannot reach coordinator: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Shared runtime error (config, spec, store).
    #[error(transparent)]
    Common(#[from] smelter_common::Error),
}

impl WorkerError {
    /// Wraps a delta-rs error, classifying commit conflicts so callers can branch on them.
    pub fn delta(table: &str, source: deltalake::DeltaTableError) -> WorkerError {
        use deltalake::DeltaTableError as E;
        use deltalake::kernel::transaction::TransactionError as T;
        match &source {
            E::Transaction {
                source: T::CommitConflict(_) | T::VersionAlreadyExists(_) | T::MaxCommitAttempts(_),
            } => WorkerError::CommitConflict {
                table: table.to_string(),
                message: source.to_string(),
            },
            E::VersionAlreadyExists(_) => WorkerError::CommitConflict {
                table: table.to_string(),
                message: source.to_string(),
            },
            _ => WorkerError::Delta {
                table: table.to_string(),
                source: Box::new(source),
            },
        }
    }

    /// Whether the task should back off and retry rather than stop.
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkerError::ExpectationFailed { .. } | WorkerError::InvalidSpec { .. } => false,
            WorkerError::Common(e) => e.is_retryable(),
            _ => true,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = WorkerError> = std::result::Result<T, E>;
