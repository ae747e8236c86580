//! The coordinator's single owner of state. gRPC handlers send [`Command`]s over a channel;
//! the actor applies them one at a time, so membership, placement and generations never
//! race. Every change of placement bumps the generation and pushes each worker its full
//! assignment (level-triggered: a worker that missed an update still converges).
//!
//! Liveness is the store's business: a worker's registry key is bound to its lease, and a
//! key that vanished means the worker is gone; its tasks are reassigned at once.
//!
//! The actor exists only on the elected leader, and every store write it makes is guarded
//! by the leadership key ([`Guard`]); a `GuardLost` answer ends its reign at once. Its state
//! is rebuilt from the store on take-over (pipelines, workers with their leases, current
//! assignments, the generation, discovered partition counts), so a failover moves no task.
//!
//! Moving a task between two live workers is a hand-off: the task leaves the old owner's
//! assignment first, and joins the new owner's only once the old one reports it
//! `RELEASED` (in-flight batch committed), its lease ends, or `handoff_timeout` passes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smelter_common::config::CoordinatorConfig;
use smelter_common::spec::SourceSpec;
use smelter_common::spec::{Layer, PipelineSpec};
use smelter_common::store::{CoordinationStore, Guard, LeaseId, keys};
use smelter_proto::{
    ApplyPipelineResponse, AssignmentUpdate, ClusterStatus, HeartbeatResponse, PipelineDefinition,
    RegisterWorkerResponse, TaskAssignment, TaskKind, TaskState, TaskStatus, TaskStatusReport,
    WorkerStatus,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::assign::assign;
use crate::discovery::KafkaSource;
use crate::election::LeaderRecord;
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
        resume_id: String,
        running_task_ids: Vec<String>,
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
}

#[derive(Serialize, Deserialize)]
struct WorkerRecord {
    flight_endpoint: String,
    hostname: String,
}

#[derive(Serialize, Deserialize)]
struct AssignmentRecord {
    generation: u64,
    tasks: Vec<String>,
}

/// A task on its way from one live worker to another.
struct Release {
    from: String,
    since: Instant,
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
    /// Tasks of the last assignment the worker was sent: only those need a hand-off
    /// when they move (a task it never heard of has nothing in flight).
    delivered: BTreeSet<String>,
}

/// The coordinator state machine.
pub struct Actor {
    me: LeaderRecord,
    guard: Guard,
    store: Arc<dyn CoordinationStore>,
    config: CoordinatorConfig,
    workers: BTreeMap<String, WorkerEntry>,
    pipelines: BTreeMap<String, PipelineDefinition>,
    /// Discovered partition counts of Kafka sources, by (pipeline, source).
    partitions: BTreeMap<(String, String), u32>,
    tasks: BTreeMap<String, TaskAssignment>,
    /// Target owner of each task.
    owners: BTreeMap<String, String>,
    /// Tasks whose previous owner still drains them.
    releasing: BTreeMap<String, Release>,
    reports: BTreeMap<String, TaskStatusReport>,
    generation: u64,
    /// Set once a guarded write was refused: another replica leads now.
    deposed: CancellationToken,
    discover: Arc<Notify>,
}

/// The tasks a pipeline needs: one ingest task per source partition, one refine task per
/// silver table, one aggregate task per gold table. `kafka_partitions` gives the discovered
/// partition count of each Kafka source (none yet: no ingest tasks for it yet).
pub fn pipeline_tasks(
    spec: &PipelineSpec,
    kafka_partitions: &BTreeMap<String, u32>,
) -> Vec<TaskAssignment> {
    let mut tasks = Vec::new();
    for (name, table) in spec.tables_in(Layer::Bronze) {
        let partitions = spec.sources.get(&table.from).map_or(0, |s| {
            s.partitions()
                .unwrap_or_else(|| kafka_partitions.get(&table.from).copied().unwrap_or(0))
        });
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
    /// Takes over as leader: rebuilds the state from the store (pipelines, partition
    /// counts, live workers with their leases, current assignments, generation) and
    /// continues from it. Every later write is guarded by `guard`.
    pub async fn take_over(
        store: Arc<dyn CoordinationStore>,
        config: CoordinatorConfig,
        me: LeaderRecord,
        guard: Guard,
    ) -> Result<Self> {
        let mut actor = Self {
            me,
            guard,
            store,
            config,
            workers: BTreeMap::new(),
            pipelines: BTreeMap::new(),
            partitions: BTreeMap::new(),
            tasks: BTreeMap::new(),
            owners: BTreeMap::new(),
            releasing: BTreeMap::new(),
            reports: BTreeMap::new(),
            generation: 0,
            deposed: CancellationToken::new(),
            discover: Arc::new(Notify::new()),
        };
        for kv in actor.store.list(&keys::partitions_prefix()).await? {
            let (pipeline, source) = keys::partitions_of(&kv.key);
            if let Ok(count) = String::from_utf8_lossy(&kv.value).parse::<u32>() {
                actor
                    .partitions
                    .insert((pipeline.to_string(), source.to_string()), count);
            }
        }
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
        for kv in actor.store.list(&keys::workers_prefix()).await? {
            let (Ok(record), Some(lease)) =
                (serde_json::from_slice::<WorkerRecord>(&kv.value), kv.lease)
            else {
                continue;
            };
            actor.workers.insert(
                keys::leaf(&kv.key).to_string(),
                WorkerEntry {
                    lease,
                    flight_endpoint: record.flight_endpoint,
                    hostname: record.hostname,
                    last_heartbeat: Instant::now(),
                    watchers: Vec::new(),
                    delivered: BTreeSet::new(),
                },
            );
        }
        for kv in actor.store.list(&keys::assignments_prefix()).await? {
            let worker_id = keys::leaf(&kv.key).to_string();
            let Ok(record) = serde_json::from_slice::<AssignmentRecord>(&kv.value) else {
                continue;
            };
            actor.generation = actor.generation.max(record.generation);
            if let Some(entry) = actor.workers.get_mut(&worker_id) {
                for task in record.tasks {
                    if actor.tasks.contains_key(&task) {
                        actor.owners.insert(task.clone(), worker_id.clone());
                        entry.delivered.insert(task);
                    }
                }
            }
        }
        if let Some(kv) = actor.store.get(&keys::generation()).await?
            && let Ok(stored) = String::from_utf8_lossy(&kv.value).parse::<u64>()
        {
            actor.generation = actor.generation.max(stored);
        }
        tracing::info!(
            workers = actor.workers.len(),
            pipelines = actor.pipelines.len(),
            tasks = actor.tasks.len(),
            generation = actor.generation,
            "took over as leader"
        );
        Ok(actor)
    }

    /// Wakes partition discovery (a Kafka pipeline was applied).
    pub fn discovery_trigger(&self) -> Arc<Notify> {
        self.discover.clone()
    }

    /// Serves commands until `shutdown`.
    /// Serves commands until `shutdown` (or until deposed, which cancels `shutdown` too).
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tracing::info!(coordinator_id = %self.me.id, "coordinator leading");
        // Continue where the previous leader stopped, under a new generation.
        self.rebalance().await;
        self.bump().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.deposed.cancelled() => {
                    shutdown.cancel();
                    break;
                }
                _ = tick.tick() => {
                    self.expire_workers().await;
                    self.expire_releases().await;
                }
                command = commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
            }
        }
        // Close every assignment stream: workers move on to the next leader.
        for entry in self.workers.values_mut() {
            entry.watchers.clear();
        }
        tracing::info!("coordinator stopped leading");
    }

    /// A guarded write; `GuardLost` means another replica leads, and ends this actor.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64> {
        let result = self.store.put_guarded(&self.guard, key, value, lease).await;
        self.check_deposed(result)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let result = self.store.delete_guarded(&self.guard, key).await;
        self.check_deposed(result)
    }

    fn check_deposed<T>(&self, result: smelter_common::Result<T>) -> Result<T> {
        match result {
            Err(smelter_common::Error::GuardLost { .. }) => {
                tracing::error!("a guarded write was refused: another coordinator leads now");
                self.deposed.cancel();
                Err(CoordinatorError::NotLeader {
                    leader: String::new(),
                })
            }
            other => Ok(other?),
        }
    }

    /// Starts a new generation and pushes every worker its assignment.
    async fn bump(&mut self) {
        self.generation += 1;
        if let Err(error) = self
            .put(
                &keys::generation(),
                self.generation.to_string().into_bytes(),
                None,
            )
            .await
        {
            tracing::warn!(%error, "cannot persist the generation");
        }
        self.push_all().await;
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Register {
                flight_endpoint,
                hostname,
                resume_id,
                running_task_ids,
                reply,
            } => {
                let answer = self
                    .register(flight_endpoint, hostname, resume_id, running_task_ids)
                    .await;
                let _ = reply.send(answer);
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
                let _ = reply.send(self.report(report).await);
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
            Command::KafkaSources { reply } => {
                let _ = reply.send(self.kafka_sources());
            }
            Command::Partitions {
                pipeline,
                source,
                count,
            } => self.partitions_found(pipeline, source, count).await,
        }
    }

    /// Registers a worker. A returning worker (`resume_id`: it lost its coordinator or its
    /// lease) keeps its id, and the tasks it still runs stay with it unless they were
    /// given to a live worker meanwhile.
    async fn register(
        &mut self,
        flight_endpoint: String,
        hostname: String,
        resume_id: String,
        running_task_ids: Vec<String>,
    ) -> Result<RegisterWorkerResponse> {
        let worker_id = if resume_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            resume_id
        };
        if let Some(previous) = self.workers.get(&worker_id) {
            let _ = self.store.revoke_lease(previous.lease).await;
        }
        let lease = self.store.grant_lease(self.config.lease_ttl()).await?;
        let record = serde_json::to_vec(&WorkerRecord {
            flight_endpoint: flight_endpoint.clone(),
            hostname: hostname.clone(),
        })
        .unwrap_or_default();
        self.put(&keys::worker(&worker_id), record, Some(lease))
            .await?;
        // What it still runs and nobody else was given: it keeps, and must hand off later.
        let mut running = BTreeSet::new();
        for task in running_task_ids {
            let free = self
                .owners
                .get(&task)
                .is_none_or(|owner| owner == &worker_id || !self.workers.contains_key(owner));
            if free && self.tasks.contains_key(&task) {
                self.owners.insert(task.clone(), worker_id.clone());
                running.insert(task);
            }
        }
        let kept = running.len();
        tracing::info!(worker_id = %worker_id, flight = %flight_endpoint, kept_tasks = kept, "worker registered");
        self.workers.insert(
            worker_id.clone(),
            WorkerEntry {
                lease,
                flight_endpoint,
                hostname,
                last_heartbeat: Instant::now(),
                watchers: Vec::new(),
                delivered: running,
            },
        );
        if !self.rebalance().await {
            self.bump().await;
        }
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
        let tasks = update.tasks.iter().map(|t| t.task_id.clone()).collect();
        if sender.send(Ok(update)).await.is_ok() {
            entry.watchers.push(sender);
            entry.delivered = tasks;
        }
        Ok(())
    }

    async fn report(&mut self, report: TaskStatusReport) -> Result<()> {
        let context = report.context.clone().unwrap_or_default();
        if report.state() == TaskState::Released {
            let from = self.releasing.get(&report.task_id).map(|r| r.from.as_str());
            if from == Some(context.worker_id.as_str()) {
                self.releasing.remove(&report.task_id);
                tracing::info!(task_id = %report.task_id, from = %context.worker_id, to = ?self.owners.get(&report.task_id), "hand-off acknowledged");
                self.bump().await;
            }
            return Ok(());
        }
        let owner = self.owners.get(&report.task_id);
        if owner != Some(&context.worker_id)
            || self.releasing.contains_key(&report.task_id)
            || !self.workers.contains_key(&context.worker_id)
        {
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
        let kafka: BTreeMap<String, u32> = self
            .partitions
            .iter()
            .filter(|((p, _), _)| *p == spec.pipeline)
            .map(|((_, source), count)| (source.clone(), *count))
            .collect();
        let tasks = pipeline_tasks(&spec, &kafka);
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
        self.put(&keys::pipeline(&spec.pipeline), value, None)
            .await?;
        let tasks = self.install(definition)?;
        tracing::info!(pipeline = %spec.pipeline, revision, tasks, "pipeline applied");
        if spec
            .sources
            .values()
            .any(|s| matches!(s, SourceSpec::Kafka(_)))
        {
            self.discover.notify_one();
        }
        // A changed spec restarts the pipeline's tasks so they pick it up: bump the generation
        // even if placement is unchanged.
        self.rebalance().await;
        self.bump().await;
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
            let _ = self.delete(&keys::assignment(worker_id)).await;
            // Whatever it was still draining starts on its new owner now.
            let released = self.releasing.len();
            self.releasing.retain(|_, r| r.from != worker_id);
            if !self.rebalance().await && released != self.releasing.len() {
                self.bump().await;
            }
        }
    }

    /// Hand-offs whose old owner did not acknowledge in time start on the new owner
    /// anyway; the commit protocol fences the old owner if it still writes.
    async fn expire_releases(&mut self) {
        let timeout = self.config.handoff_timeout();
        let late: Vec<String> = self
            .releasing
            .iter()
            .filter(|(_, r)| r.since.elapsed() >= timeout)
            .map(|(t, _)| t.clone())
            .collect();
        if late.is_empty() {
            return;
        }
        for task in &late {
            if let Some(release) = self.releasing.remove(task) {
                tracing::warn!(task_id = %task, from = %release.from, "hand-off not acknowledged in time; starting the task on its new owner");
            }
        }
        self.bump().await;
    }

    fn kafka_sources(&self) -> Vec<KafkaSource> {
        let mut out = Vec::new();
        for definition in self.pipelines.values() {
            let Ok(spec) = PipelineSpec::parse(&definition.spec_yaml, &definition.origin) else {
                continue;
            };
            for (name, source) in &spec.sources {
                if let SourceSpec::Kafka(kafka) = source {
                    out.push((spec.pipeline.clone(), name.clone(), kafka.clone()));
                }
            }
        }
        out
    }

    async fn partitions_found(&mut self, pipeline: String, source: String, count: u32) {
        let key = (pipeline.clone(), source.clone());
        let known = self.partitions.get(&key).copied().unwrap_or(0);
        // Kafka partitions are only ever added; a smaller answer is a broker's hiccup.
        if count <= known {
            return;
        }
        tracing::info!(%pipeline, %source, from = known, to = count, "kafka partitions discovered");
        if let Err(error) = self
            .put(
                &keys::partitions(&pipeline, &source),
                count.to_string().into_bytes(),
                None,
            )
            .await
        {
            tracing::warn!(%error, "cannot persist partition count; retrying next round");
            return;
        }
        self.partitions.insert(key, count);
        if let Some(definition) = self.pipelines.get(&pipeline).cloned()
            && let Err(error) = self.install(definition)
        {
            tracing::error!(%pipeline, %error, "cannot reinstall pipeline");
        }
        self.rebalance().await;
    }

    /// Recomputes placement; pushes a new generation and returns true if it changed.
    async fn rebalance(&mut self) -> bool {
        let tasks: Vec<(String, String)> = self
            .tasks
            .values()
            .map(|t| (t.task_id.clone(), t.kind().label().to_string()))
            .collect();
        let task_ids: Vec<&String> = tasks.iter().map(|(t, _)| t).collect();
        let workers: BTreeSet<String> = self.workers.keys().cloned().collect();
        let owners = assign(&tasks, &self.owners, &workers);
        if owners == self.owners {
            return false;
        }
        let moved = task_ids
            .iter()
            .filter(|t| self.owners.get(t.as_str()) != owners.get(t.as_str()))
            .count();
        // A task leaving a live worker is handed off: it reaches its new owner once the
        // old one has drained it.
        for (task, new_owner) in &owners {
            match self.owners.get(task) {
                Some(old)
                    if old != new_owner
                        && self
                            .workers
                            .get(old)
                            .is_some_and(|w| w.delivered.contains(task)) =>
                {
                    self.releasing.entry(task.clone()).or_insert(Release {
                        from: old.clone(),
                        since: Instant::now(),
                    });
                }
                _ => {}
            }
            if self
                .releasing
                .get(task)
                .is_some_and(|r| &r.from == new_owner)
            {
                self.releasing.remove(task);
            }
        }
        self.releasing.retain(|task, _| owners.contains_key(task));
        // A moved task's last report speaks of its previous owner.
        self.reports
            .retain(|task, _| owners.get(task) == self.owners.get(task));
        self.owners = owners;
        self.reports.retain(|task, _| self.tasks.contains_key(task));
        tracing::info!(
            generation = self.generation + 1,
            moved,
            handing_off = self.releasing.len(),
            workers = workers.len(),
            "assignment changed"
        );
        self.bump().await;
        true
    }

    fn update_for(&self, worker_id: &str) -> AssignmentUpdate {
        let tasks: Vec<TaskAssignment> = self
            .owners
            .iter()
            .filter(|(t, w)| w.as_str() == worker_id && !self.releasing.contains_key(*t))
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
            let record = AssignmentRecord {
                generation: update.generation,
                tasks: update.tasks.iter().map(|t| t.task_id.clone()).collect(),
            };
            if let Err(error) = self
                .put(
                    &keys::assignment(&worker_id),
                    serde_json::to_vec(&record).unwrap_or_default(),
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
                if !open.is_empty() {
                    entry.delivered = update.tasks.iter().map(|t| t.task_id.clone()).collect();
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
                releasing_from: self
                    .releasing
                    .get(&t.task_id)
                    .map(|r| r.from.clone())
                    .unwrap_or_default(),
            })
            .collect();
        ClusterStatus {
            leader: self.me.id.clone(),
            leader_endpoint: self.me.endpoint.clone(),
            generation: self.generation,
            workers,
            tasks,
            pipelines: self.pipelines.values().cloned().collect(),
        }
    }
}
