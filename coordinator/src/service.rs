//! Thin gRPC handlers: validate the request, forward it to the actor, relay the answer.
//! On a follower replica there is no actor: every call answers `UNAVAILABLE` naming the
//! leader, and clients move on to the next endpoint they know.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

use smelter_proto::{
    ApplyPipelineRequest, ApplyPipelineResponse, AssignmentUpdate, ClusterStatus,
    ClusterStatusRequest, Control, DeregisterRequest, DeregisterResponse, HeartbeatRequest,
    HeartbeatResponse, RegisterWorkerRequest, RegisterWorkerResponse, TaskStatusAck,
    TaskStatusReport, WatchAssignmentsRequest,
};

use smelter_common::security::Role as Access;
use smelter_common::security::auth::principal;

use crate::CoordinatorError;
use crate::actor::Command;
use crate::election::LeaderRecord;

/// What this replica is right now.
#[derive(Clone)]
pub enum Role {
    /// Leading: commands go to the actor.
    Leader(mpsc::Sender<Command>),
    /// Following `leader` (if known).
    Follower {
        /// The current leader.
        leader: Option<LeaderRecord>,
    },
}

/// The `Control` service, backed by the leader actor's command channel.
pub struct ControlService {
    role: watch::Receiver<Role>,
}

impl ControlService {
    /// Handlers that forward to the actor while this replica leads.
    pub fn new(role: watch::Receiver<Role>) -> Self {
        Self { role }
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
        let commands = match &*self.role.borrow() {
            Role::Leader(commands) => commands.clone(),
            Role::Follower { leader } => {
                return Err(CoordinatorError::NotLeader {
                    leader: leader
                        .as_ref()
                        .map(|l| l.endpoint.clone())
                        .unwrap_or_default(),
                }
                .into());
            }
        };
        let (reply, answer) = oneshot::channel();
        commands
            .send(make(reply))
            .await
            .map_err(|_| Status::from(CoordinatorError::ShuttingDown))?;
        answer
            .await
            .map_err(|_| Status::from(CoordinatorError::ShuttingDown))
    }
}

/// `PERMISSION_DENIED` unless the caller has `role` (the interceptor admitted it already).
fn allow<T>(request: &Request<T>, role: Access, action: &str) -> Result<(), Status> {
    principal(request)?.require(role, action)
}

fn require(field: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        Err(Status::invalid_argument(format!("`{field}` is required")))
    } else {
        Ok(())
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerResponse>, Status> {
        allow(&request, Access::Admin, "registering a worker")?;
        let request = request.into_inner();
        require("flight_endpoint", &request.flight_endpoint)?;
        let answer = self
            .call(|reply| Command::Register {
                flight_endpoint: request.flight_endpoint,
                hostname: request.hostname,
                resume_id: request.worker_id,
                running_task_ids: request.running_task_ids,
                reply,
            })
            .await?;
        Ok(Response::new(answer?))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        allow(&request, Access::Admin, "a worker heartbeat")?;
        let request = request.into_inner();
        require("worker_id", &request.worker_id)?;
        Ok(Response::new(
            self.call(|reply| Command::Heartbeat {
                worker_id: request.worker_id,
                commits_fenced: request.commits_fenced,
                timings: request.timings,
                reads: request.reads,
                reply,
            })
            .await??,
        ))
    }

    type WatchAssignmentsStream =
        Pin<Box<dyn Stream<Item = Result<AssignmentUpdate, Status>> + Send + 'static>>;

    /// The worker's latest assignment, then each newer one. The stream reads the value the
    /// actor replaces (level-triggered): a worker that reads slowly skips to the latest
    /// assignment, and one that does not read at all holds up nothing. The stream ends
    /// when the actor forgets the worker or stops leading.
    async fn watch_assignments(
        &self,
        request: Request<WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        allow(&request, Access::Admin, "watching assignments")?;
        let worker_id = request.into_inner().worker_id;
        require("worker_id", &worker_id)?;
        let assignment = self
            .call(|reply| Command::Watch { worker_id, reply })
            .await??;
        Ok(Response::new(Box::pin(
            WatchStream::new(assignment).map(Ok),
        )))
    }

    async fn report_task_status(
        &self,
        request: Request<TaskStatusReport>,
    ) -> Result<Response<TaskStatusAck>, Status> {
        allow(&request, Access::Admin, "reporting task status")?;
        let report = request.into_inner();
        if report.context.is_none() {
            return Err(Status::invalid_argument(
                "`context` (worker id and generation) is required",
            ));
        }
        self.call(|reply| Command::Report { report, reply })
            .await??;
        Ok(Response::new(TaskStatusAck {}))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        allow(&request, Access::Admin, "deregistering a worker")?;
        let worker_id = request.into_inner().worker_id;
        require("worker_id", &worker_id)?;
        self.call(|reply| Command::Deregister { worker_id, reply })
            .await??;
        Ok(Response::new(DeregisterResponse {}))
    }

    async fn apply_pipeline(
        &self,
        request: Request<ApplyPipelineRequest>,
    ) -> Result<Response<ApplyPipelineResponse>, Status> {
        allow(&request, Access::Operator, "applying a pipeline")?;
        let request = request.into_inner();
        require("spec_yaml", &request.spec_yaml)?;
        let origin = if request.origin.is_empty() {
            "pipeline".to_string()
        } else {
            request.origin
        };
        Ok(Response::new(
            self.call(|reply| Command::Apply {
                spec_yaml: request.spec_yaml,
                origin,
                reply,
            })
            .await??,
        ))
    }

    async fn set_pipeline_paused(
        &self,
        request: Request<smelter_proto::SetPipelinePausedRequest>,
    ) -> Result<Response<smelter_proto::SetPipelinePausedResponse>, Status> {
        allow(&request, Access::Operator, "pausing or resuming a pipeline")?;
        let request = request.into_inner();
        require("pipeline", &request.pipeline)?;
        Ok(Response::new(
            self.call(|reply| Command::SetPaused {
                pipeline: request.pipeline,
                paused: request.paused,
                reply,
            })
            .await??,
        ))
    }

    async fn get_cluster_status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        allow(&request, Access::Reader, "reading the cluster status")?;
        Ok(Response::new(
            self.call(|reply| Command::Status { reply }).await?,
        ))
    }
}
