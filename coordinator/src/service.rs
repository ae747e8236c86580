//! Thin gRPC handlers: validate the request, forward it to the actor, relay the answer.

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use smelter_proto::{
    ApplyPipelineRequest, ApplyPipelineResponse, AssignmentUpdate, ClusterStatus,
    ClusterStatusRequest, Control, DeregisterRequest, DeregisterResponse, HeartbeatRequest,
    HeartbeatResponse, RegisterWorkerRequest, RegisterWorkerResponse, TaskStatusAck,
    TaskStatusReport, WatchAssignmentsRequest,
};

use crate::CoordinatorError;
use crate::actor::Command;

/// The `Control` service, backed by the actor's command channel.
pub struct ControlService {
    commands: mpsc::Sender<Command>,
}

impl ControlService {
    /// Handlers that forward to `commands`.
    pub fn new(commands: mpsc::Sender<Command>) -> Self {
        Self { commands }
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| Status::from(CoordinatorError::ShuttingDown))?;
        answer
            .await
            .map_err(|_| Status::from(CoordinatorError::ShuttingDown))
    }
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
        let request = request.into_inner();
        require("flight_endpoint", &request.flight_endpoint)?;
        let answer = self
            .call(|reply| Command::Register {
                flight_endpoint: request.flight_endpoint,
                hostname: request.hostname,
                reply,
            })
            .await?;
        Ok(Response::new(answer?))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let worker_id = request.into_inner().worker_id;
        require("worker_id", &worker_id)?;
        Ok(Response::new(
            self.call(|reply| Command::Heartbeat { worker_id, reply })
                .await??,
        ))
    }

    type WatchAssignmentsStream = ReceiverStream<Result<AssignmentUpdate, Status>>;

    async fn watch_assignments(
        &self,
        request: Request<WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        let worker_id = request.into_inner().worker_id;
        require("worker_id", &worker_id)?;
        let (sender, receiver) = mpsc::channel(16);
        self.call(|reply| Command::Watch {
            worker_id,
            sender,
            reply,
        })
        .await??;
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn report_task_status(
        &self,
        request: Request<TaskStatusReport>,
    ) -> Result<Response<TaskStatusAck>, Status> {
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

    async fn get_cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        Ok(Response::new(
            self.call(|reply| Command::Status { reply }).await?,
        ))
    }
}
