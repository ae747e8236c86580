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
    /// The connection failed under a call: refused certificates, a reset, a closed port.
    /// The message carries the chain of causes (the TLS alert, the I/O error).
    #[error("transport: {0}")]
    Transport(String),
    /// A wait ran out of time; the message says for what.
    #[error("{0}")]
    Timeout(String),
    /// A Flight stream failed mid-way.
    #[error("flight: {0}")]
    Flight(#[from] arrow_flight::error::FlightError),
}

impl From<tonic::Status> for SdkError {
    /// A status the server sent is a rejection; one tonic made from a failed connection
    /// (code `UNKNOWN` or `CANCELLED` with a transport error under it) is a
    /// [`SdkError::Transport`] that says why.
    fn from(status: tonic::Status) -> Self {
        let transport = matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled);
        let Some(source) = std::error::Error::source(&status).filter(|_| transport) else {
            return SdkError::Rejected(status);
        };
        let mut message = status.message().to_string();
        let mut cause = Some(source);
        while let Some(error) = cause {
            message = format!("{message}: {error}");
            cause = error.source();
        }
        SdkError::Transport(message)
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
