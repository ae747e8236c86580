//! Wire types of Smelter: the control-plane gRPC service, its messages, and the
//! messages carried inside Arrow Flight tickets.
//!
//! Generated code lives in `OUT_DIR`; this crate adds only small helpers on top of it
//! (stable task ids, enum <-> display conversions). Domain logic stays in the crates
//! that use these types.

#[allow(missing_docs, clippy::all)]
mod generated {
    tonic::include_proto!("smelter.v1");
}

pub use generated::*;

/// Client for the coordinator's control-plane service.
pub use generated::control_client::ControlClient;
/// Server side of the coordinator's control-plane service.
pub use generated::control_server::{Control, ControlServer};

impl TaskAssignment {
    /// Builds the stable id of a task; identical assignments always get identical ids,
    /// which is what lets assignment be sticky across coordinator restarts.
    pub fn make_id(
        kind: TaskKind,
        pipeline: &str,
        table: &str,
        source: &str,
        partition: i32,
    ) -> String {
        match kind {
            TaskKind::Ingest => format!("{pipeline}/ingest/{source}/{partition}"),
            TaskKind::Refine => format!("{pipeline}/refine/{table}"),
            TaskKind::Aggregate => format!("{pipeline}/aggregate/{table}"),
            TaskKind::Maintain => format!("{pipeline}/maintain"),
            TaskKind::Unspecified => format!("{pipeline}/unspecified/{table}"),
        }
    }
}

impl TaskState {
    /// Lower-case name for status output.
    pub fn label(self) -> &'static str {
        match self {
            TaskState::Unspecified => "unknown",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Idle => "idle",
            TaskState::Backoff => "backoff",
            TaskState::Failed => "failed",
            TaskState::Stopped => "stopped",
            TaskState::Released => "released",
            TaskState::Paused => "paused",
        }
    }
}

impl TaskKind {
    /// Lower-case name for status output.
    pub fn label(self) -> &'static str {
        match self {
            TaskKind::Unspecified => "unknown",
            TaskKind::Ingest => "ingest",
            TaskKind::Refine => "refine",
            TaskKind::Aggregate => "aggregate",
            TaskKind::Maintain => "maintain",
        }
    }
}

/// gRPC metadata a coordinator replica that does not lead puts on its `UNAVAILABLE`
/// answers: the leader's control-plane URL, or empty while an election is under way.
/// Clients branch on its presence, never on the message text.
pub const NOT_LEADER_METADATA: &str = "smelter-not-leader";

/// The `UNAVAILABLE` status of a replica that does not lead, naming `leader` (a URL, or
/// empty while an election is under way) in [`NOT_LEADER_METADATA`].
pub fn not_leader_status(message: &str, leader: &str) -> tonic::Status {
    let mut status = tonic::Status::unavailable(message);
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(leader) {
        status.metadata_mut().insert(NOT_LEADER_METADATA, value);
    }
    status
}

/// What a status says about leadership: `Some(leader)` when it came from a replica that
/// does not lead (`leader` empty while an election is under way), `None` otherwise.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    let value = status.metadata().get(NOT_LEADER_METADATA)?;
    Some(value.to_str().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_hint_travels_in_metadata() {
        let status = not_leader_status("not the leader", "http://coord-1:7070");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(leader_hint(&status).as_deref(), Some("http://coord-1:7070"));
        let electing = not_leader_status("no leader yet", "");
        assert_eq!(leader_hint(&electing).as_deref(), Some(""));
        // Any other unavailability is not a leadership answer, whatever its text says.
        let other = tonic::Status::unavailable("this coordinator is not the leader");
        assert_eq!(leader_hint(&other), None);
    }
}
