//! The one error type of the coordinator crate.

/// Errors raised by the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// Shared runtime error (spec, store, config).
    #[error(transparent)]
    Common(#[from] smelter_common::Error),
    /// The worker is not registered (never was, deregistered, or its lease expired).
    #[error("unknown worker {worker_id}: register again")]
    UnknownWorker {
        /// The worker id.
        worker_id: String,
    },
    /// A report came from a worker that no longer owns the task (stale generation).
    #[error("task {task_id} is not owned by worker {worker_id} at generation {generation}")]
    NotOwner {
        /// The task.
        task_id: String,
        /// The reporting worker.
        worker_id: String,
        /// The generation it reported under.
        generation: u64,
    },
    /// This replica does not lead; `leader` is the leader's URL when known.
    #[error("this coordinator is not the leader{}", if leader.is_empty() { String::new() } else { format!("; the leader is {leader}") })]
    NotLeader {
        /// The leader's control-plane URL, or empty while an election is on.
        leader: String,
    },
    /// A request names something that does not exist (a pipeline never applied).
    #[error("{0}")]
    NotFound(String),
    /// A bug: a task of the coordinator panicked.
    #[error("internal error: {0}")]
    Internal(String),
    /// The coordinator is shutting down.
    #[error("coordinator is shutting down")]
    ShuttingDown,
    /// Serving gRPC failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<CoordinatorError> for tonic::Status {
    fn from(error: CoordinatorError) -> Self {
        let message = error.to_string();
        match &error {
            CoordinatorError::Common(
                smelter_common::Error::Spec { .. } | smelter_common::Error::Config { .. },
            ) => tonic::Status::invalid_argument(message),
            CoordinatorError::Common(e) if e.is_retryable() => tonic::Status::unavailable(message),
            CoordinatorError::NotLeader { leader } => {
                smelter_proto::not_leader_status(&message, leader)
            }
            CoordinatorError::Common(_)
            | CoordinatorError::Transport(_)
            | CoordinatorError::Internal(_) => tonic::Status::internal(message),
            CoordinatorError::UnknownWorker { .. } | CoordinatorError::NotFound(_) => {
                tonic::Status::not_found(message)
            }
            CoordinatorError::NotOwner { .. } => tonic::Status::failed_precondition(message),
            CoordinatorError::ShuttingDown => tonic::Status::unavailable(message),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;
