//! The one error type of the SDK.

/// What can go wrong talking to Smelter.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The server rejected the request (bad SQL, unknown table, limits, not the leader).
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
}

impl From<tonic::Status> for SdkError {
    fn from(status: tonic::Status) -> Self {
        SdkError::Rejected(status)
    }
}

impl SdkError {
    /// Whether the request was refused as invalid (bad SQL, bad spec, bad arguments).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, SdkError::Rejected(status) if status.code() == tonic::Code::InvalidArgument)
    }

    /// When a coordinator replica that does not lead answered: the leader it named (empty
    /// while an election is under way).
    pub fn leader_hint(&self) -> Option<String> {
        match self {
            SdkError::Rejected(status) => smelter_proto::leader_hint(status),
            _ => None,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = SdkError> = std::result::Result<T, E>;
