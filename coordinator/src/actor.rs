//! The coordinator's single owner of state. gRPC handlers send [`Command`]s over a channel;
//! the actor applies them one at a time, so membership, placement and generations never
//! race. Every change of placement bumps the generation and pushes each worker its full
//! assignment (level-triggered: a worker that missed an update still converges).
//!
//! Liveness is the store's business: a worker's registry key is bound to its lease, and a
//! key that vanished means the worker is gone; its tasks are reassigned at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smelter_common::config::CoordinatorConfig;
use smelter_common::spec::{Layer, PipelineSpec};
use smelter_common::store::{CoordinationStore, LeaseId, keys};
use smelter_proto::{
    ApplyPipelineResponse, AssignmentUpdate, ClusterStatus, HeartbeatResponse, PipelineDefinition,
    RegisterWorkerResponse, TaskAssignment, TaskKind, TaskStatus, TaskStatusReport, WorkerStatus,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::assign::assign;
use crate::{CoordinatorError, Result};

/// Stream of assignment updates to one worker.
pub type AssignmentSender = mpsc::Sender<Result<AssignmentUpdate, tonic::Status>>;

/// Requests the actor serves. Each carries the channel its answer goes back on.
#[allow(missing_docs)] // fields are the request's arguments and its reply channel
pub enum Command {
    /// A worker joins.
    Register {
        flight_endpoint: String,
        hostname: String,
        reply: oneshot::Sender<Result<RegisterWorkerResponse>>,
    },
    /// A worker renews its lease.
    Heartbeat {
        worker_id: String,
        reply: oneshot::Sender<Result<HeartbeatResponse>>,
    },
    /// A worker opens its assignment stream.
    Watch {
        worker_id: String,
        sender: AssignmentSender,
        reply: oneshot::Sender<Result<()>>,
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
    /// Everything, for `smelter status`.
    Status {
        reply: oneshot::Sender<ClusterStatus>,
    },
}

#[derive(Serialize, Deserialize)]
struct StoredPipeline {
    name: String,
    spec_yaml: String,
    origin: String,
    revision: u64,
}

struct WorkerEntry {
    lease: LeaseId,
    flight_endpoint: String,
    hostname: String,
    last_heartbeat: Instant,
    watchers: Vec<AssignmentSender>,
}

/// The coordinator state machine.
pub struct Actor {
    id: String,
    store: Arc<dyn CoordinationStore>,
    config: CoordinatorConfig,
    workers: BTreeMap<String, WorkerEntry>,
    pipelines: BTreeMap<String, PipelineDefinition>,
    tasks: BTreeMap<String, TaskAssignment>,
    owners: BTreeMap<String, String>,
    reports: BTreeMap<String, TaskStatusReport>,
    generation: u64,
}

/// The tasks a pipeline needs: one ingest task per source partition, one refine task per
/// silver table, one aggregate task per gold table.
pub fn pipeline_tasks(spec: &PipelineSpec) -> Vec<TaskAssignment> {
    let mut tasks = Vec::new();
    for (name, table) in spec.tables_in(Layer::Bronze) {
        let partitions = spec.sources.get(&table.from).map_or(0, |s| s.partitions());
        for partition in 0..partitions as i32 {
            tasks.push(task(
                TaskKind::Ingest,
                &spec.pipeline,
                name,
                &table.from,
                partition,
            ));
        }
    }
    for (name, _) in spec.tables_in(Layer::Silver) {
        tasks.push(task(TaskKind::Refine, &spec.pipeline, name, "", 0));
    }
    for (name, _) in spec.tables_in(Layer::Gold) {
        tasks.push(task(TaskKind::Aggregate, &spec.pipeline, name, "", 0));
    }
    tasks
}

fn task(
    kind: TaskKind,
    pipeline: &str,
    table: &str,
    source: &str,
    partition: i32,
) -> TaskAssignment {
    TaskAssignment {
        task_id: TaskAssignment::make_id(kind, pipeline, table, source, partition),
        kind: kind as i32,
        pipeline: pipeline.to_string(),
        table: table.to_string(),
        source: source.to_string(),
        partition,
    }
}

impl Actor {
    /// A coordinator over `store`, loading the pipelines stored there.
    pub async fn new(store: Arc<dyn CoordinationStore>, config: CoordinatorConfig) -> Result<Self> {
        let mut actor = Self {
            id: uuid::Uuid::new_v4().to_string(),
            store,
            config,
            workers: BTreeMap::new(),
            pipelines: BTreeMap::new(),
            tasks: BTreeMap::new(),
            owners: BTreeMap::new(),
            reports: BTreeMap::new(),
            generation: 0,
        };
        for kv in actor.store.list(&keys::pipelines_prefix()).await? {
            match serde_json::from_slice::<StoredPipeline>(&kv.value) {
                Ok(stored) => {
                    let definition = PipelineDefinition {
                        name: stored.name,
                        spec_yaml: stored.spec_yaml,
                        origin: stored.origin,
                        revision: stored.revision,
                    };
                    if let Err(error) = actor.install(definition) {
                        tracing::error!(key = %kv.key, %error, "stored pipeline no longer parses; skipped");
                    }
                }
                Err(error) => {
                    tracing::error!(key = %kv.key, %error, "unreadable stored pipeline; skipped")
                }
            }
        }
        Ok(actor)
    }

    /// Serves commands until `shutdown`.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tracing::info!(coordinator_id = %self.id, "coordinator leading");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.expire_workers().await,
                command = commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
            }
        }
        tracing::info!("coordinator stopped");
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Register {
                flight_endpoint,
                hostname,
                reply,
            } => {
                let _ = reply.send(self.register(flight_endpoint, hostname).await);
            }
            Command::Heartbeat { worker_id, reply } => {
                let _ = reply.send(self.heartbeat(&worker_id).await);
            }
            Command::Watch {
                worker_id,
                sender,
                reply,
            } => {
                let _ = reply.send(self.watch(&worker_id, sender).await);
            }
            Command::Report { report, reply } => {
                let _ = reply.send(self.report(report));
            }
            Command::Deregister { worker_id, reply } => {
                let _ = reply.send(self.deregister(&worker_id).await);
            }
            Command::Apply {
                spec_yaml,
                origin,
                reply,
            } => {
                let _ = reply.send(self.apply(spec_yaml, origin).await);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
        }
    }

    async fn register(
        &mut self,
        flight_endpoint: String,
        hostname: String,
    ) -> Result<RegisterWorkerResponse> {
        let worker_id = uuid::Uuid::new_v4().to_string();
        let lease = self.store.grant_lease(self.config.lease_ttl()).await?;
        let record =
            serde_json::json!({ "flight_endpoint": flight_endpoint, "hostname": hostname })
                .to_string();
        self.store
            .put(&keys::worker(&worker_id), record.into_bytes(), Some(lease))
            .await?;
        tracing::info!(worker_id = %worker_id, flight = %flight_endpoint, "worker registered");
        self.workers.insert(
            worker_id.clone(),
            WorkerEntry {
                lease,
                flight_endpoint,
                hostname,
                last_heartbeat: Instant::now(),
                watchers: Vec::new(),
            },
        );
        self.rebalance().await;
        Ok(RegisterWorkerResponse {
            worker_id,
            lease_ttl_ms: self.config.lease_ttl_ms,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
        })
    }

    async fn heartbeat(&mut self, worker_id: &str) -> Result<HeartbeatResponse> {
        let entry =
            self.workers
                .get_mut(worker_id)
                .ok_or_else(|| CoordinatorError::UnknownWorker {
                    worker_id: worker_id.to_string(),
                })?;
        match self.store.keep_alive(entry.lease).await {
            Ok(()) => {
                entry.last_heartbeat = Instant::now();
                Ok(HeartbeatResponse {
                    generation: self.generation,
                })
            }
            Err(smelter_common::Error::LeaseNotFound { .. }) => {
                self.remove_worker(worker_id, "lease expired").await;
                Err(CoordinatorError::UnknownWorker {
                    worker_id: worker_id.to_string(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn watch(&mut self, worker_id: &str, sender: AssignmentSender) -> Result<()> {
        let update = self.update_for(worker_id);
        let entry =
            self.workers
                .get_mut(worker_id)
                .ok_or_else(|| CoordinatorError::UnknownWorker {
                    worker_id: worker_id.to_string(),
                })?;
        if sender.send(Ok(update)).await.is_ok() {
            entry.watchers.push(sender);
        }
        Ok(())
    }

    fn report(&mut self, report: TaskStatusReport) -> Result<()> {
        let context = report.context.clone().unwrap_or_default();
        let owner = self.owners.get(&report.task_id);
        if owner != Some(&context.worker_id) || !self.workers.contains_key(&context.worker_id) {
            return Err(CoordinatorError::NotOwner {
                task_id: report.task_id,
                worker_id: context.worker_id,
                generation: context.generation,
            });
        }
        self.reports.insert(report.task_id.clone(), report);
        Ok(())
    }

    async fn deregister(&mut self, worker_id: &str) -> Result<()> {
        if let Some(entry) = self.workers.get(worker_id) {
            self.store.revoke_lease(entry.lease).await?;
        }
        self.remove_worker(worker_id, "deregistered").await;
        Ok(())
    }

    fn install(&mut self, definition: PipelineDefinition) -> Result<usize> {
        let spec = PipelineSpec::parse(&definition.spec_yaml, &definition.origin)?;
        self.tasks.retain(|_, t| t.pipeline != spec.pipeline);
        let tasks = pipeline_tasks(&spec);
        let count = tasks.len();
        for task in tasks {
            self.tasks.insert(task.task_id.clone(), task);
        }
        self.pipelines.insert(spec.pipeline.clone(), definition);
        Ok(count)
    }

    async fn apply(&mut self, spec_yaml: String, origin: String) -> Result<ApplyPipelineResponse> {
        let spec = PipelineSpec::parse(&spec_yaml, &origin)?;
        let revision = self
            .pipelines
            .get(&spec.pipeline)
            .map_or(1, |p| p.revision + 1);
        let definition = PipelineDefinition {
            name: spec.pipeline.clone(),
            spec_yaml: spec_yaml.clone(),
            origin: origin.clone(),
            revision,
        };
        let stored = StoredPipeline {
            name: spec.pipeline.clone(),
            spec_yaml,
            origin,
            revision,
        };
        let value =
            serde_json::to_vec(&stored).map_err(|e| smelter_common::Error::StoreUnavailable {
                message: e.to_string(),
            })?;
        self.store
            .put(&keys::pipeline(&spec.pipeline), value, None)
            .await?;
        let tasks = self.install(definition)?;
        tracing::info!(pipeline = %spec.pipeline, revision, tasks, "pipeline applied");
        // A changed spec restarts the pipeline's tasks so they pick it up: bump the generation
        // even if placement is unchanged.
        self.rebalance().await;
        self.generation += 1;
        self.push_all().await;
        Ok(ApplyPipelineResponse {
            pipeline: spec.pipeline,
            revision,
            tasks: tasks as u32,
        })
    }

    async fn expire_workers(&mut self) {
        let alive: BTreeSet<String> = match self.store.list(&keys::workers_prefix()).await {
            Ok(kvs) => kvs
                .iter()
                .map(|kv| keys::leaf(&kv.key).to_string())
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot list workers; keeping current membership");
                return;
            }
        };
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|w| !alive.contains(*w))
            .cloned()
            .collect();
        for worker_id in gone {
            self.remove_worker(&worker_id, "lease expired").await;
        }
    }

    async fn remove_worker(&mut self, worker_id: &str, reason: &str) {
        if self.workers.remove(worker_id).is_some() {
            if reason == "deregistered" {
                tracing::info!(worker_id, reason, "worker left; reassigning its tasks");
            } else {
                tracing::warn!(worker_id, reason, "worker lost; reassigning its tasks");
            }
            let _ = self.store.delete(&keys::assignment(worker_id)).await;
            self.rebalance().await;
        }
    }

    async fn rebalance(&mut self) {
        let tasks: Vec<(String, String)> = self
            .tasks
            .values()
            .map(|t| (t.task_id.clone(), t.kind().label().to_string()))
            .collect();
        let task_ids: Vec<&String> = tasks.iter().map(|(t, _)| t).collect();
        let workers: BTreeSet<String> = self.workers.keys().cloned().collect();
        let owners = assign(&tasks, &self.owners, &workers);
        if owners == self.owners {
            return;
        }
        let moved = task_ids
            .iter()
            .filter(|t| self.owners.get(t.as_str()) != owners.get(t.as_str()))
            .count();
        self.owners = owners;
        self.reports.retain(|task, _| self.tasks.contains_key(task));
        self.generation += 1;
        tracing::info!(
            generation = self.generation,
            moved,
            workers = workers.len(),
            "assignment changed"
        );
        self.push_all().await;
    }

    fn update_for(&self, worker_id: &str) -> AssignmentUpdate {
        let tasks: Vec<TaskAssignment> = self
            .owners
            .iter()
            .filter(|(_, w)| w.as_str() == worker_id)
            .filter_map(|(t, _)| self.tasks.get(t).cloned())
            .collect();
        let names: BTreeSet<&str> = tasks.iter().map(|t| t.pipeline.as_str()).collect();
        let pipelines = names
            .iter()
            .filter_map(|n| self.pipelines.get(*n).cloned())
            .collect();
        AssignmentUpdate {
            generation: self.generation,
            tasks,
            pipelines,
        }
    }

    async fn push_all(&mut self) {
        let worker_ids: Vec<String> = self.workers.keys().cloned().collect();
        for worker_id in worker_ids {
            let update = self.update_for(&worker_id);
            let record = serde_json::json!({
                "generation": update.generation,
                "tasks": update.tasks.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(),
            });
            if let Err(error) = self
                .store
                .put(
                    &keys::assignment(&worker_id),
                    record.to_string().into_bytes(),
                    None,
                )
                .await
            {
                tracing::warn!(worker_id, %error, "cannot persist assignment");
            }
            if let Some(entry) = self.workers.get_mut(&worker_id) {
                let mut open = Vec::with_capacity(entry.watchers.len());
                for watcher in entry.watchers.drain(..) {
                    if watcher.send(Ok(update.clone())).await.is_ok() {
                        open.push(watcher);
                    }
                }
                entry.watchers = open;
            }
        }
    }

    fn status(&self) -> ClusterStatus {
        let ttl = self.config.lease_ttl_ms as i64;
        let workers = self
            .workers
            .iter()
            .map(|(id, w)| WorkerStatus {
                worker_id: id.clone(),
                flight_endpoint: w.flight_endpoint.clone(),
                tasks: self.owners.values().filter(|o| *o == id).count() as u32,
                lease_expires_in_ms: ttl - w.last_heartbeat.elapsed().as_millis() as i64,
                hostname: w.hostname.clone(),
            })
            .collect();
        let tasks = self
            .tasks
            .values()
            .map(|t| TaskStatus {
                task: Some(t.clone()),
                worker_id: self.owners.get(&t.task_id).cloned().unwrap_or_default(),
                generation: self.generation,
                report: self.reports.get(&t.task_id).cloned(),
            })
            .collect();
        ClusterStatus {
            leader: self.id.clone(),
            generation: self.generation,
            workers,
            tasks,
            pipelines: self.pipelines.values().cloned().collect(),
        }
    }
}
