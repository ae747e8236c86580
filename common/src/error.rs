//! The one error type of the shared runtime crate.

use std::path::PathBuf;

/// Errors raised by configuration, spec parsing and the coordination store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A pipeline spec is malformed or inconsistent. `field` is the dotted path of the
    /// offending field, `line` its 1-based line in the file when known.
    #[error("{origin}{}: {field}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Spec {
        /// File name (or other origin) of the spec.
        origin: String,
        /// 1-based line number, when it could be located.
        line: Option<usize>,
        /// Dotted path of the field, e.g. `tables.silver.events.dedupe.keys`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A configuration file or value is invalid.
    #[error("invalid configuration {source_name}: {message}")]
    Config {
        /// Where the bad value came from (file path, env var, flag).
        source_name: String,
        /// What is wrong with it.
        message: String,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A lease does not exist (never granted, revoked or expired).
    #[error("lease {lease} not found (expired or revoked)")]
    LeaseNotFound {
        /// The lease id.
        lease: i64,
    },
    /// A guarded write found its guard gone: the writer is no longer the leader (or lock
    /// holder) it was when it took the guard. Nothing was written.
    #[error("guard {key} (created at revision {revision}) no longer held; write refused")]
    GuardLost {
        /// The guard key (leadership or lock key).
        key: String,
        /// Create revision the writer held it at.
        revision: i64,
    },
    /// A Kafka broker could not be reached or refused a request; retried with backoff.
    #[error("kafka brokers {brokers}: {message}")]
    Broker {
        /// The bootstrap servers asked.
        brokers: String,
        /// What went wrong.
        message: String,
    },
    /// A value could not be encoded or decoded (a stored record, a message); retrying the
    /// same value cannot help.
    #[error("cannot encode {what}: {message}")]
    Encoding {
        /// What was being encoded.
        what: String,
        /// The serializer's message.
        message: String,
    },
    /// The coordination store could not be reached or failed; the operation may be retried.
    #[error("coordination store unavailable: {message}")]
    StoreUnavailable {
        /// Details from the store client.
        message: String,
    },
}

impl Error {
    /// Whether retrying the same operation later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::StoreUnavailable { .. } | Error::Broker { .. })
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
