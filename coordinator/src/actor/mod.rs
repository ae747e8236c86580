//! The coordinator's single owner of state. gRPC handlers send [`Command`]s over a channel;
//! the actor applies them one at a time, so membership, placement and generations never
//! race. Every change of placement bumps the generation and publishes each worker its full
//! assignment (level-triggered: each assignment stream follows the latest one, so a worker
//! that missed an update still converges).
//!
//! The actor never waits on a worker: publishing replaces the value a worker's streams
//! read ([`AssignmentWatch`]), so a worker that stops reading its stream delays nobody —
//! another worker's lease expiry included. Every call it makes to the coordination store
//! has a deadline (half a lease TTL): a store that hangs fails the call, it does not hang
//! the actor.
//!
//! The actor exists only on the elected leader, and every store write it makes is guarded
//! by the leadership key ([`Guard`]); a `GuardLost` answer ends its reign at once. Its state
//! is rebuilt from the store on take-over ([`persist`]), so a failover moves no task.
//!
//! Where things are: [`command`] (the protocol), [`persist`] (records and take-over),
//! [`tasks`] (spec to tasks), [`placement`] (pure placement and hand-off planning),
//! [`membership`], [`pipelines`] and [`handoff`] (the handlers), [`status`] (the view).

mod command;
mod handoff;
mod membership;
mod persist;
mod pipelines;
pub mod placement;
mod status;
mod tasks;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use smelter_common::config::CoordinatorConfig;
use smelter_common::store::{CoordinationStore, Guard, LeaseId, keys};
use smelter_proto::{AssignmentUpdate, PipelineDefinition, TaskAssignment, TaskStatusReport};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::election::LeaderRecord;
use crate::{CoordinatorError, Result};
pub use command::{AssignmentWatch, Command};
use persist::{AssignmentRecord, encode};
use placement::{Current, Release};
pub use tasks::pipeline_tasks;

/// One registered worker.
struct WorkerEntry {
    lease: LeaseId,
    flight_endpoint: String,
    hostname: String,
    last_heartbeat: Instant,
    /// The worker's fenced commit attempts, as of its last heartbeat.
    commits_fenced: u64,
    /// Its commit histograms per table, as of its last heartbeat.
    timings: Vec<smelter_proto::TableTimings>,
    /// Where its reads of data files found their rows, as of its last heartbeat.
    reads: Option<smelter_proto::FileReads>,
    /// Its latest assignment; its streams follow it. Dropped with the entry, which ends
    /// them.
    assignment: watch::Sender<AssignmentUpdate>,
    /// Tasks of the last assignment published while the worker had a stream open: only
    /// those need a hand-off when they move (a task it never heard of has nothing in
    /// flight).
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
    /// The last discovery error of each Kafka source that has one (pipeline, source).
    discovery_errors: BTreeMap<(String, String), String>,
    tasks: BTreeMap<String, TaskAssignment>,
    /// What placement needs of each task (its kind, the tables it reads and writes).
    placing: BTreeMap<String, placement::Task>,
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
        let deadline = config.lease_ttl();
        let stored = tokio::time::timeout(deadline, persist::load(store.as_ref()))
            .await
            .map_err(|_| smelter_common::Error::StoreUnavailable {
                message: format!("reading the leader's state took over {deadline:?}"),
            })??;
        let mut actor = Self {
            me,
            guard,
            store,
            config,
            workers: BTreeMap::new(),
            pipelines: BTreeMap::new(),
            partitions: stored.partitions,
            discovery_errors: BTreeMap::new(),
            tasks: BTreeMap::new(),
            placing: BTreeMap::new(),
            owners: BTreeMap::new(),
            releasing: BTreeMap::new(),
            reports: BTreeMap::new(),
            generation: stored.generation,
            deposed: CancellationToken::new(),
            discover: Arc::new(Notify::new()),
        };
        for (key, definition) in stored.pipelines {
            if let Err(error) = actor.install(definition) {
                tracing::error!(%key, %error, "stored pipeline no longer parses; skipped");
            }
        }
        for (worker_id, worker) in stored.workers {
            let mut delivered = BTreeSet::new();
            for task in worker.tasks {
                if actor.tasks.contains_key(&task) {
                    actor.owners.insert(task.clone(), worker_id.clone());
                    delivered.insert(task);
                }
            }
            let (assignment, _) = watch::channel(AssignmentUpdate::default());
            actor.workers.insert(
                worker_id,
                WorkerEntry {
                    lease: worker.lease,
                    flight_endpoint: worker.record.flight_endpoint,
                    hostname: worker.record.hostname,
                    last_heartbeat: Instant::now(),
                    commits_fenced: 0,
                    timings: Vec::new(),
                    reads: None,
                    assignment,
                    delivered,
                },
            );
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
        self.workers.clear();
        tracing::info!("coordinator stopped leading");
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
            Command::Heartbeat {
                worker_id,
                commits_fenced,
                timings,
                reads,
                reply,
            } => {
                let _ = reply.send(
                    self.heartbeat(&worker_id, commits_fenced, timings, reads)
                        .await,
                );
            }
            Command::Watch { worker_id, reply } => {
                let _ = reply.send(self.watch(&worker_id));
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
            Command::SetPaused {
                pipeline,
                paused,
                reply,
            } => {
                let _ = reply.send(self.set_paused(pipeline, paused).await);
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
            } => {
                self.discovery_errors
                    .remove(&(pipeline.clone(), source.clone()));
                self.partitions_found(pipeline, source, count).await
            }
            Command::DiscoveryFailed {
                pipeline,
                source,
                error,
            } => {
                self.discovery_errors.insert((pipeline, source), error);
            }
        }
    }

    /// How long any one store call may take.
    fn store_deadline(&self) -> Duration {
        self.config.lease_ttl() / 2
    }

    /// `call` to the store, failing with `StoreUnavailable` past the deadline.
    async fn within<T>(
        &self,
        what: &str,
        call: impl Future<Output = smelter_common::Result<T>>,
    ) -> Result<T> {
        let deadline = self.store_deadline();
        match tokio::time::timeout(deadline, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(smelter_common::Error::StoreUnavailable {
                message: format!("{what}: no answer within {deadline:?}"),
            }
            .into()),
        }
    }

    /// A guarded write; `GuardLost` means another replica leads, and ends this actor.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64> {
        let result = self
            .within(
                "write",
                self.store.put_guarded(&self.guard, key, value, lease),
            )
            .await;
        self.check_deposed(result)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let result = self
            .within("delete", self.store.delete_guarded(&self.guard, key))
            .await;
        self.check_deposed(result)
    }

    fn check_deposed<T>(&self, result: Result<T>) -> Result<T> {
        match result {
            Err(CoordinatorError::Common(smelter_common::Error::GuardLost { .. })) => {
                tracing::error!("a guarded write was refused: another coordinator leads now");
                self.deposed.cancel();
                Err(CoordinatorError::NotLeader {
                    leader: String::new(),
                })
            }
            other => other,
        }
    }

    /// Starts a new generation and publishes every worker its assignment.
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
        self.publish().await;
    }

    /// Recomputes placement ([`placement::plan`]); publishes a new generation and returns
    /// true if it changed.
    async fn rebalance(&mut self) -> bool {
        let tasks: Vec<placement::Task> = self.placing.values().cloned().collect();
        let workers = self.delivered();
        let current = Current {
            tasks: &tasks,
            owners: &self.owners,
            workers: &workers,
            releasing: &self.releasing,
        };
        let Some(plan) = placement::plan(&current, Instant::now()) else {
            return false;
        };
        // A moved task's last report speaks of its previous owner.
        self.reports
            .retain(|task, _| plan.owners.get(task) == self.owners.get(task));
        self.owners = plan.owners;
        self.releasing = plan.releasing;
        self.reports.retain(|task, _| self.tasks.contains_key(task));
        tracing::info!(
            generation = self.generation + 1,
            moved = plan.moved,
            handing_off = self.releasing.len(),
            workers = workers.len(),
            "assignment changed"
        );
        self.bump().await;
        true
    }

    /// The assignment of `worker_id` now: its tasks, less those still being handed off to
    /// it, with the specs of their pipelines.
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

    /// Stores and publishes every worker's assignment. Publishing never waits for a worker.
    async fn publish(&mut self) {
        let worker_ids: Vec<String> = self.workers.keys().cloned().collect();
        for worker_id in worker_ids {
            let update = self.update_for(&worker_id);
            let record = AssignmentRecord {
                generation: update.generation,
                tasks: update.tasks.iter().map(|t| t.task_id.clone()).collect(),
            };
            let stored = match encode(&record) {
                Ok(value) => self.put(&keys::assignment(&worker_id), value, None).await,
                Err(error) => Err(error),
            };
            if let Err(error) = stored {
                tracing::warn!(worker_id, %error, "cannot persist assignment");
            }
            if let Some(entry) = self.workers.get_mut(&worker_id) {
                if entry.assignment.receiver_count() > 0 {
                    entry.delivered = update.tasks.iter().map(|t| t.task_id.clone()).collect();
                }
                entry.assignment.send_replace(update);
            }
        }
    }
}
