//! The actor's protocol: what the gRPC handlers (and partition discovery) ask of it. Each
//! request carries the channel its answer goes back on.

use smelter_proto::{
    ApplyPipelineResponse, AssignmentUpdate, ClusterStatus, HeartbeatResponse,
    RegisterWorkerResponse, TaskStatusReport,
};
use tokio::sync::{oneshot, watch};

use crate::Result;
use crate::discovery::KafkaSource;

/// A worker's view of its assignment: always the latest one (level-triggered). The actor
/// replaces the value and never waits for the worker to read it.
pub type AssignmentWatch = watch::Receiver<AssignmentUpdate>;

/// Requests the actor serves.
#[allow(missing_docs)] // fields are the request's arguments and its reply channel
pub enum Command {
    /// A worker joins.
    Register {
        flight_endpoint: String,
        hostname: String,
        resume_id: String,
        running_task_ids: Vec<String>,
        reply: oneshot::Sender<Result<RegisterWorkerResponse>>,
    },
    /// A worker renews its lease.
    Heartbeat {
        worker_id: String,
        commits_fenced: u64,
        /// Its commit histograms per table.
        timings: Vec<smelter_proto::TableTimings>,
        /// Where its reads of data files found their rows.
        reads: Option<smelter_proto::FileReads>,
        reply: oneshot::Sender<Result<HeartbeatResponse>>,
    },
    /// A worker opens its assignment stream: the answer follows its latest assignment.
    Watch {
        worker_id: String,
        reply: oneshot::Sender<Result<AssignmentWatch>>,
    },
    /// A worker reports task progress.
    Report {
        report: TaskStatusReport,
        reply: oneshot::Sender<Result<()>>,
    },
    /// A worker leaves.
    Deregister {
        worker_id: String,
        reply: oneshot::Sender<Result<()>>,
    },
    /// A pipeline is declared or changed.
    Apply {
        spec_yaml: String,
        origin: String,
        reply: oneshot::Sender<Result<ApplyPipelineResponse>>,
    },
    /// A pipeline is paused or resumed.
    SetPaused {
        pipeline: String,
        paused: bool,
        reply: oneshot::Sender<Result<smelter_proto::SetPipelinePausedResponse>>,
    },
    /// Everything, for `smelter status`.
    Status {
        reply: oneshot::Sender<ClusterStatus>,
    },
    /// The Kafka sources of every pipeline, for partition discovery.
    KafkaSources {
        reply: oneshot::Sender<Vec<KafkaSource>>,
    },
    /// Discovery found `count` partitions in a Kafka source's topic.
    Partitions {
        pipeline: String,
        source: String,
        count: u32,
    },
    /// Discovery could not ask a Kafka source's brokers (shown in the status until it can).
    DiscoveryFailed {
        pipeline: String,
        source: String,
        error: String,
    },
}
