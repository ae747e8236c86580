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
        }
    }
}
