//! The one error type of the lake crate, with an explicit retry class per variant.

use deltalake::DeltaTableError;

/// What a caller should do about an error: every variant says, none by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A store or the network failed: back off and try again.
    Transient,
    /// Another writer (or a lapsed commit lock) got in the way: re-read the log, let the
    /// txn versions decide, and try again at once.
    Conflict,
    /// Retrying cannot help (bad data, bad configuration, a table that is not one): the
    /// task stops and says why.
    Permanent,
}

/// Errors of the Delta layer: opening, committing, reading and checking tables.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// Delta Lake read, write or commit failure (classified by [`LakeError::retry`]).
    #[error("delta table {table}: {source}")]
    Delta {
        /// `layer.name` of the table.
        table: String,
        /// The delta-rs error.
        #[source]
        source: Box<DeltaTableError>,
    },
    /// Another writer committed first, or this writer's commit lock lapsed; re-read the
    /// log and decide from the table's txn versions.
    #[error("commit to {table} conflicted with a concurrent writer: {message}")]
    CommitConflict {
        /// `layer.name` of the table.
        table: String,
        /// What happened.
        message: String,
    },
    /// A rewrite (delete, compaction, restore) would remove a file the table no longer
    /// holds: another rewrite took it first. Nothing was written; plan again from the log.
    #[error("rewrite of {table} superseded: {path} is no longer in the table")]
    Superseded {
        /// `layer.name` of the table.
        table: String,
        /// The file that went away.
        path: String,
    },
    /// A request about a table is wrong (a predicate naming an unknown column, a version
    /// the table never had); the message says what.
    #[error("{table}: {message}")]
    Invalid {
        /// `layer.name` of the table.
        table: String,
        /// What is wrong.
        message: String,
    },
    /// The object store failed a request that may succeed later.
    #[error("storage {location}: {message}")]
    Storage {
        /// The storage location.
        location: String,
        /// What went wrong.
        message: String,
    },
    /// The storage is configured in a way Smelter refuses or cannot use (a bad location, a
    /// store without put-if-absent, an operation the store's commit mode does not allow).
    #[error("storage {location}: {message}")]
    Unsupported {
        /// The storage location or table.
        location: String,
        /// What is refused, and why.
        message: String,
    },
    /// Reading a table through the query engine failed (verification).
    #[error("query: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    /// Building or converting Arrow data failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The coordination store (commit locks) or a configuration value failed.
    #[error(transparent)]
    Common(#[from] smelter_common::Error),
}

impl LakeError {
    /// Wraps a delta-rs error, classifying commit conflicts so callers can branch on them.
    pub fn delta(table: &str, source: DeltaTableError) -> LakeError {
        use deltalake::kernel::transaction::TransactionError as T;
        match &source {
            DeltaTableError::Transaction {
                source: T::CommitConflict(_) | T::VersionAlreadyExists(_) | T::MaxCommitAttempts(_),
            }
            | DeltaTableError::VersionAlreadyExists(_) => LakeError::CommitConflict {
                table: table.to_string(),
                message: source.to_string(),
            },
            _ => LakeError::Delta {
                table: table.to_string(),
                source: Box::new(source),
            },
        }
    }

    /// A delta-rs error of `table` with only a message.
    pub fn generic(table: &str, message: impl Into<String>) -> LakeError {
        LakeError::Delta {
            table: table.to_string(),
            source: Box::new(DeltaTableError::Generic(message.into())),
        }
    }

    /// What to do about this error.
    pub fn retry(&self) -> Retry {
        match self {
            LakeError::CommitConflict { .. } | LakeError::Superseded { .. } => Retry::Conflict,
            LakeError::Storage { .. } => Retry::Transient,
            LakeError::Unsupported { .. } | LakeError::Invalid { .. } => Retry::Permanent,
            LakeError::Delta { source, .. } => delta_retry(source),
            LakeError::Query(error) => query_retry(error),
            LakeError::Arrow(error) => arrow_retry(error),
            LakeError::Io { source, .. } => io_retry(source),
            LakeError::Common(error) if error.is_retryable() => Retry::Transient,
            LakeError::Common(_) => Retry::Permanent,
        }
    }

    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        self.retry() != Retry::Permanent
    }
}

/// delta-rs errors: I/O and object-store failures are transient, conflicts are conflicts,
/// and everything about the data, the schema or the table itself is permanent.
pub fn delta_retry(error: &DeltaTableError) -> Retry {
    use deltalake::kernel::transaction::TransactionError as T;
    match error {
        DeltaTableError::ObjectStore { .. } | DeltaTableError::Io { .. } => Retry::Transient,
        DeltaTableError::Transaction { source } => match source {
            T::CommitConflict(_) | T::VersionAlreadyExists(_) | T::MaxCommitAttempts(_) => {
                Retry::Conflict
            }
            T::ObjectStore { .. } => Retry::Transient,
            _ => Retry::Permanent,
        },
        DeltaTableError::VersionAlreadyExists(_) => Retry::Conflict,
        // A log entry that vanished under a reader (cleanup racing a read) or a reader that
        // asked before the writer's entry was visible: reading again settles it.
        DeltaTableError::InvalidVersion(_) => Retry::Transient,
        // The log kernel's and other wrapped errors: transient exactly when storage or
        // I/O underneath failed.
        DeltaTableError::KernelError(_)
        | DeltaTableError::Parquet { .. }
        | DeltaTableError::GenericError { .. }
            if caused_by_io(error) =>
        {
            Retry::Transient
        }
        _ => Retry::Permanent,
    }
}

/// Whether `error` or anything in its source chain is a storage or I/O failure.
fn caused_by_io(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<object_store::Error>() || error.is::<std::io::Error>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// DataFusion errors: storage and I/O underneath are transient, the rest (plans, data,
/// resources) permanent.
pub fn query_retry(error: &datafusion::error::DataFusionError) -> Retry {
    use datafusion::error::DataFusionError as D;
    match error {
        D::ObjectStore(_) | D::IoError(_) => Retry::Transient,
        D::ArrowError(inner, _) => arrow_retry(inner),
        D::External(inner) => match inner.downcast_ref::<DeltaTableError>() {
            Some(delta) => delta_retry(delta),
            None if caused_by_io(inner.as_ref()) => Retry::Transient,
            None => Retry::Permanent,
        },
        D::Context(_, inner) | D::Diagnostic(_, inner) => query_retry(inner),
        D::Shared(inner) => query_retry(inner),
        _ => Retry::Permanent,
    }
}

/// Arrow errors are about the data, except I/O underneath.
pub fn arrow_retry(error: &arrow::error::ArrowError) -> Retry {
    match error {
        arrow::error::ArrowError::IoError(..) => Retry::Transient,
        _ => Retry::Permanent,
    }
}

/// Local I/O: a missing path or a refused permission needs an operator; the rest may pass.
pub fn io_retry(error: &std::io::Error) -> Retry {
    use std::io::ErrorKind as K;
    match error.kind() {
        K::NotFound | K::PermissionDenied | K::InvalidInput | K::InvalidData => Retry::Permanent,
        _ => Retry::Transient,
    }
}

/// Result alias for this crate.
pub type Result<T, E = LakeError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_error_has_its_class() {
        let conflict = LakeError::delta("silver.t", DeltaTableError::VersionAlreadyExists(3));
        assert_eq!(conflict.retry(), Retry::Conflict);
        let bad_schema = LakeError::delta(
            "silver.t",
            DeltaTableError::SchemaMismatch {
                msg: "extra column".into(),
            },
        );
        assert_eq!(bad_schema.retry(), Retry::Permanent);
        assert!(!bad_schema.is_retryable());
        let arrow = LakeError::Arrow(arrow::error::ArrowError::ComputeError("x".into()));
        assert_eq!(arrow.retry(), Retry::Permanent);
        let plan = LakeError::Query(datafusion::error::DataFusionError::Plan("x".into()));
        assert_eq!(plan.retry(), Retry::Permanent);
        let store = LakeError::Query(datafusion::error::DataFusionError::ObjectStore(Box::new(
            object_store::Error::Generic {
                store: "s3",
                source: "connection reset".into(),
            },
        )));
        assert_eq!(store.retry(), Retry::Transient);
        let lost = LakeError::Common(smelter_common::Error::StoreUnavailable {
            message: "etcd down".into(),
        });
        assert_eq!(lost.retry(), Retry::Transient);
        let refused = LakeError::Unsupported {
            location: "s3://b/".into(),
            message: "no put-if-absent".into(),
        };
        assert_eq!(refused.retry(), Retry::Permanent);
    }
}
