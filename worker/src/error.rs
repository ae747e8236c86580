//! The one error type of the worker crate, with an explicit retry class per variant.

use smelter_lake::LakeError;
pub use smelter_lake::Retry;
use smelter_lake::error::{arrow_retry, io_retry, query_retry};

/// Errors raised by worker tasks and the query service.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The Delta layer failed: opening, committing or reading a table.
    #[error(transparent)]
    Lake(#[from] LakeError),
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
    /// A source could not be read now (brokers unreachable, a file unreadable); retried.
    #[error("source {source_name}: {message}")]
    Source {
        /// Source name.
        source_name: String,
        /// What went wrong.
        message: String,
    },
    /// A source is set up in a way that cannot work (a bad start time, a reader that broke
    /// its contract); the task stops.
    #[error("source {source_name}: {message}")]
    SourceInvalid {
        /// Source name.
        source_name: String,
        /// What is wrong.
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
    /// A task panicked; its unit reports it failed with this message and starts it again.
    #[error("task panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
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
    /// Wraps a delta-rs error of `table`.
    pub fn delta(table: &str, source: deltalake::DeltaTableError) -> WorkerError {
        WorkerError::Lake(LakeError::delta(table, source))
    }

    /// What a task should do about this error: back off and retry, re-read and retry, or
    /// stop in `failed` with the message.
    pub fn retry(&self) -> Retry {
        match self {
            WorkerError::Lake(error) => error.retry(),
            WorkerError::Query(error) => query_retry(error),
            WorkerError::Arrow(error) => arrow_retry(error),
            WorkerError::ExpectationFailed { .. } => Retry::Permanent,
            WorkerError::InvalidSpec { .. } => Retry::Permanent,
            WorkerError::Source { .. } => Retry::Transient,
            WorkerError::SourceInvalid { .. } => Retry::Permanent,
            WorkerError::Io { source, .. } => io_retry(source),
            // A panic is a bug, but often one of a particular input or moment: the unit
            // reports it and tries again under backoff, as for a transient failure.
            WorkerError::Panicked { .. } => Retry::Transient,
            WorkerError::Control(_) | WorkerError::Transport(_) => Retry::Transient,
            WorkerError::Common(error) if error.is_retryable() => Retry::Transient,
            WorkerError::Common(_) => Retry::Permanent,
        }
    }

    /// Whether the task should back off and retry rather than stop.
    pub fn is_retryable(&self) -> bool {
        self.retry() != Retry::Permanent
    }
}

/// Result alias for this crate.
pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors about data, plans and specs stop a task; trouble reaching things retries.
    /// Before, every variant not listed retried (`_ => true`): an Arrow or DataFusion
    /// error in a task retried forever.
    #[test]
    fn classes_are_explicit() {
        let permanent = [
            WorkerError::Arrow(arrow::error::ArrowError::SchemaError("x".into())),
            WorkerError::Query(datafusion::error::DataFusionError::Plan("x".into())),
            WorkerError::Query(datafusion::error::DataFusionError::ResourcesExhausted(
                "x".into(),
            )),
            WorkerError::SourceInvalid {
                source_name: "s".into(),
                message: "bad start".into(),
            },
            WorkerError::delta(
                "silver.t",
                deltalake::DeltaTableError::SchemaMismatch { msg: "x".into() },
            ),
        ];
        for error in permanent {
            assert_eq!(error.retry(), Retry::Permanent, "{error}");
        }
        let transient = [
            WorkerError::Source {
                source_name: "s".into(),
                message: "brokers unreachable".into(),
            },
            WorkerError::Control(tonic::Status::unavailable("no leader")),
            WorkerError::Panicked {
                message: "index out of bounds".into(),
            },
            WorkerError::Common(smelter_common::Error::StoreUnavailable {
                message: "etcd".into(),
            }),
        ];
        for error in transient {
            assert_eq!(error.retry(), Retry::Transient, "{error}");
        }
        let conflict = WorkerError::Lake(LakeError::CommitConflict {
            table: "silver.t".into(),
            message: "version taken".into(),
        });
        assert_eq!(conflict.retry(), Retry::Conflict);
    }
}
