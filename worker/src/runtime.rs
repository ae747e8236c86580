//! The worker process: registers with the coordinator, keeps its lease alive, follows its
//! assignment stream and runs exactly the tasks assigned under the latest generation.
//!
//! ```text
//!   register ──► heartbeat loop ──────────► (lease lost / leader gone: next endpoint, re-register
//!       │                                     with the same id; tasks keep running meanwhile)
//!       └──► WatchAssignments ──► reconcile: stop (drain) removed tasks, report them RELEASED,
//!                                     │        start new ones
//!                                     └──► status reports every second and on each change of
//!                                          a task's state, tagged (worker, generation)
//! ```
//!
//! Each task is driven on a blocking-pool thread of its own (`Handle::block_on`), not on
//! the runtime's few worker threads: a refine pass decoding a backlog or a gold refresh
//! runs for long stretches without an `.await`, and on the worker threads it would delay
//! other tasks' starts (a failover then exceeds its bound), the status reports, and the
//! heartbeats and lock-lease renewals that keep this worker's claims alive. The OS shares
//! the cores among the task threads; the control plane stays responsive.
//!
//! Stopping a task cancels its token; the task commits its in-flight batch and returns.
//! Tasks outlive control-plane sessions, so a coordinator failover does not pause data;
//! only after [`ORPHAN_TTLS`] lease TTLs without any coordinator does the worker stop them
//! (they have surely been given to others by then). Nothing here is needed for
//! correctness after a crash — that is the commit protocol's job.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use smelter_common::config::SmelterConfig;
use smelter_common::spec::PipelineSpec;
use smelter_common::store::CoordinationStore;
use smelter_proto::{
    AssignmentUpdate, ControlClient, DeregisterRequest, HeartbeatRequest, RegisterWorkerRequest,
    TaskKind, TaskState, TaskStatusReport, WatchAssignmentsRequest, WorkerContext,
};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};

use crate::failpoint::Failpoints;
use crate::lock::CommitArbiter;
use crate::query::QueryEngine;
use crate::recent_files::RecentFiles;
use crate::serve::flight::FlightSqlServer;
use crate::tables::{CommitEnv, TableStore};
use crate::tasks::aggregate::AggregateTask;
use crate::tasks::ingest::IngestTask;
use crate::tasks::refine::RefineTask;
use crate::tasks::{Progress, TaskEnv};
use crate::{Result, WorkerError};

/// What one running unit of work is, as the worker groups assignments: all partitions of
/// one source form a single ingest task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum UnitKey {
    Ingest {
        pipeline: String,
        source: String,
        table: String,
    },
    Refine {
        pipeline: String,
        table: String,
    },
    Aggregate {
        pipeline: String,
        table: String,
    },
}

impl UnitKey {
    fn pipeline(&self) -> &str {
        match self {
            UnitKey::Ingest { pipeline, .. }
            | UnitKey::Refine { pipeline, .. }
            | UnitKey::Aggregate { pipeline, .. } => pipeline,
        }
    }
}

struct Unit {
    kind: TaskKind,
    partitions: Vec<i32>,
    /// Revision of the pipeline spec the unit was started with; a new one restarts it.
    revision: u64,
    /// (partition, task id) of every assigned task the unit runs.
    task_ids: Vec<(i32, String)>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
    progress: Progress,
}

/// Lease TTLs without any coordinator after which a worker stops its tasks.
pub const ORPHAN_TTLS: u32 = 3;

/// What outlives one control-plane session.
struct WorkerState {
    /// Empty until the first registration; kept across re-registrations.
    worker_id: String,
    generation: u64,
    lease_ttl: Duration,
    last_contact: Instant,
    units: BTreeMap<UnitKey, Unit>,
    /// Woken by any task's change of state: reported at once, not at the next tick.
    changed: Arc<Notify>,
}

impl WorkerState {
    fn task_ids(&self) -> Vec<String> {
        self.units
            .values()
            .flat_map(|u| u.task_ids.iter().map(|(_, id)| id.clone()))
            .collect()
    }
}

/// Runs a worker until `shutdown` is cancelled. The Flight SQL service is served on
/// `flight_listener` (bind it first; port 0 is fine).
/// `store` is the coordination store shared with every other writer of the tables (etcd
/// in cluster mode, the in-process store under `smelter up`): commits then go through the
/// table commit locks. Without one, commits rely on the txn compare-and-set alone.
/// `recent` keeps the rows of the files the worker commits for the tasks downstream
/// ([`RecentFiles::from_config`]); workers in one process share one.
pub async fn run(
    config: SmelterConfig,
    flight_listener: TcpListener,
    store: Option<Arc<dyn CoordinationStore>>,
    recent: RecentFiles,
    shutdown: CancellationToken,
) -> Result<()> {
    let tables = TableStore::from_config(&config.storage)?;
    // Design §5.6: never run on a store that cannot put-if-absent (unless arbitrated).
    tables.check_commit_safety(store.is_some()).await?;
    let flight_addr = flight_listener
        .local_addr()
        .map_err(|source| WorkerError::Io {
            context: "flight listener".into(),
            source,
        })?;
    let advertised = config
        .worker
        .advertise_flight
        .clone()
        .unwrap_or_else(|| flight_addr.to_string());
    let engine = QueryEngine::new(tables.clone(), config.query.clone());
    let flight = FlightSqlServer::new(engine)?.into_service();
    let flight_shutdown = shutdown.clone();
    let flight_task = tokio::spawn(async move {
        // Small responses must not wait for Nagle's algorithm (40 ms per round trip).
        let incoming = TcpIncoming::from(flight_listener).with_nodelay(Some(true));
        if let Err(error) = Server::builder()
            .add_service(flight)
            .serve_with_incoming_shutdown(incoming, flight_shutdown.cancelled_owned())
            .await
        {
            tracing::error!(%error, "flight server stopped");
        }
    });
    tracing::info!(flight = %advertised, "worker serving Flight SQL");
    let arbiter = store.map(|store| {
        let holder = format!(
            "{} pid {} flight {advertised}",
            std::env::var("HOSTNAME").unwrap_or_default(),
            std::process::id()
        );
        CommitArbiter::new(
            store,
            Duration::from_millis(config.worker.commit_lock_ttl_ms),
            holder,
        )
    });
    let commits = Arc::new(CommitEnv {
        arbiter,
        failpoints: Failpoints::parse(config.worker.failpoint.as_deref())?,
        heads: Default::default(),
        recent,
    });

    let endpoints = config.coordinator.endpoint_list();
    if endpoints.is_empty() {
        return Err(WorkerError::Control(tonic::Status::invalid_argument(
            "no coordinator endpoint configured (coordinator.endpoint)",
        )));
    }
    let mut state = WorkerState {
        worker_id: String::new(),
        generation: 0,
        lease_ttl: config.coordinator.lease_ttl(),
        last_contact: Instant::now(),
        units: BTreeMap::new(),
        changed: Arc::default(),
    };
    let mut backoff = Duration::from_millis(100);
    let mut turn = 0usize;
    while !shutdown.is_cancelled() {
        let endpoint = &endpoints[turn % endpoints.len()];
        let began = Instant::now();
        match session(
            &config,
            &tables,
            &commits,
            &advertised,
            &shutdown,
            endpoint,
            &mut state,
        )
        .await
        {
            Ok(()) => break,
            Err(error) => {
                // Another replica may lead now: try the next endpoint first.
                turn += 1;
                if began.elapsed() > state.lease_ttl {
                    backoff = Duration::from_millis(100);
                }
                if !state.units.is_empty()
                    && state.last_contact.elapsed() > state.lease_ttl * ORPHAN_TTLS
                {
                    tracing::warn!(
                        silent_ms = state.last_contact.elapsed().as_millis() as u64,
                        "no coordinator for too long; stopping tasks (they belong to others by now)"
                    );
                    stop_all(&mut state.units).await;
                }
                tracing::warn!(%error, endpoint = %endpoint, retry_in_ms = backoff.as_millis() as u64, "control-plane session ended; re-registering");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    stop_all(&mut state.units).await;
    let _ = flight_task.await;
    tracing::info!("worker stopped");
    Ok(())
}

async fn connect(endpoint: &str) -> Result<ControlClient<Channel>> {
    let channel = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| {
            WorkerError::Control(tonic::Status::invalid_argument(format!(
                "bad coordinator endpoint {endpoint}: {e}"
            )))
        })?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await?;
    Ok(ControlClient::new(channel))
}

/// One registration: lasts until shutdown (Ok) or until the lease, the stream or the
/// leader is lost (Err). Tasks survive an Err; they are drained on Ok.
async fn session(
    config: &SmelterConfig,
    tables: &TableStore,
    commits: &Arc<CommitEnv>,
    advertised: &str,
    shutdown: &CancellationToken,
    endpoint: &str,
    state: &mut WorkerState,
) -> Result<()> {
    let mut client = connect(endpoint).await?;
    let hostname = std::env::var("HOSTNAME").unwrap_or_default();
    let registered = client
        .register_worker(RegisterWorkerRequest {
            flight_endpoint: advertised.to_string(),
            hostname,
            worker_id: state.worker_id.clone(),
            running_task_ids: state.task_ids(),
        })
        .await?
        .into_inner();
    state.worker_id = registered.worker_id.clone();
    state.lease_ttl = Duration::from_millis(registered.lease_ttl_ms.max(1));
    state.last_contact = Instant::now();
    let worker_id = state.worker_id.clone();
    let span = tracing::info_span!("worker", worker_id = %worker_id);
    let _enter = span.enter();
    tracing::info!(
        lease_ttl_ms = registered.lease_ttl_ms,
        coordinator = endpoint,
        "registered"
    );
    let mut stream = client
        .watch_assignments(WatchAssignmentsRequest {
            worker_id: worker_id.clone(),
        })
        .await?
        .into_inner();
    // Heartbeats run on their own task: stopping a task (which commits its in-flight batch,
    // possibly waiting for a slow store or a commit lock) must never starve the lease.
    let (contact_tx, contact) = tokio::sync::watch::channel(Instant::now());
    let mut heartbeats = tokio::spawn(keep_alive(
        client.clone(),
        worker_id.clone(),
        Duration::from_millis(registered.heartbeat_interval_ms.max(100)),
        contact_tx,
    ));
    let mut report = tokio::time::interval(Duration::from_secs(1));
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            ended = &mut heartbeats => {
                break Err(match ended {
                    Ok(status) => WorkerError::Control(status),
                    Err(join) => WorkerError::Control(tonic::Status::internal(join.to_string())),
                });
            }
            _ = report.tick() => report_status(&mut client, &worker_id, state.generation, &state.units).await,
            _ = state.changed.notified() => report_status(&mut client, &worker_id, state.generation, &state.units).await,
            update = stream.message() => match update {
                Ok(Some(update)) => {
                    state.generation = update.generation;
                    state.last_contact = Instant::now();
                    let released = reconcile(&mut state.units, &state.changed, update, config, tables, commits).await;
                    report_released(&mut client, &worker_id, state.generation, released).await;
                }
                Ok(None) => break Err(WorkerError::Control(tonic::Status::unavailable("assignment stream closed"))),
                Err(status) => break Err(WorkerError::Control(status)),
            },
        }
    };
    state.last_contact = state.last_contact.max(*contact.borrow());
    if result.is_ok() {
        // Drain: every task commits its in-flight batch before we let go of the lease.
        let released = state.task_ids();
        stop_all(&mut state.units).await;
        report_released(&mut client, &worker_id, state.generation, released).await;
        let _ = client
            .deregister(DeregisterRequest {
                worker_id: worker_id.clone(),
            })
            .await;
        tracing::info!("drained and deregistered");
    }
    heartbeats.abort();
    result
}

/// Sends a heartbeat every `every` until one fails; publishes each success in `contact`
/// and returns the failure.
async fn keep_alive(
    mut client: ControlClient<Channel>,
    worker_id: String,
    every: Duration,
    contact: tokio::sync::watch::Sender<Instant>,
) -> tonic::Status {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let request = HeartbeatRequest {
            worker_id: worker_id.clone(),
        };
        match client.heartbeat(request).await {
            Ok(_) => {
                let _ = contact.send(Instant::now());
            }
            Err(status) => return status,
        }
    }
}

/// Acknowledges drained tasks, so their new owners can start (hand-off).
async fn report_released(
    client: &mut ControlClient<Channel>,
    worker_id: &str,
    generation: u64,
    task_ids: Vec<String>,
) {
    for task_id in task_ids {
        let report = TaskStatusReport {
            context: Some(WorkerContext {
                worker_id: worker_id.to_string(),
                generation,
            }),
            task_id,
            state: TaskState::Released as i32,
            ..Default::default()
        };
        if let Err(status) = client.report_task_status(report).await {
            tracing::warn!(%status, "hand-off acknowledgement not delivered; the coordinator times it out");
        }
    }
}

async fn stop_all(units: &mut BTreeMap<UnitKey, Unit>) {
    for unit in units.values() {
        unit.cancel.cancel();
    }
    for (key, unit) in std::mem::take(units) {
        if let Err(error) = unit.handle.await {
            tracing::error!(?key, %error, "task panicked while draining");
        }
    }
}

async fn report_status(
    client: &mut ControlClient<Channel>,
    worker_id: &str,
    generation: u64,
    units: &BTreeMap<UnitKey, Unit>,
) {
    for unit in units.values() {
        let per_partition = matches!(unit.kind, TaskKind::Ingest);
        for (partition, task_id) in &unit.task_ids {
            let mut report = unit.progress.snapshot(per_partition.then_some(*partition));
            report.context = Some(WorkerContext {
                worker_id: worker_id.to_string(),
                generation,
            });
            report.task_id = task_id.clone();
            if let Err(status) = client.report_task_status(report).await {
                tracing::debug!(%status, task_id, "status report rejected");
            }
        }
    }
}

/// Makes the running units match `update`: stops (drains) what is gone or changed, starts
/// what is new. Returns the ids of tasks no longer assigned, now drained.
async fn reconcile(
    units: &mut BTreeMap<UnitKey, Unit>,
    changed: &Arc<Notify>,
    update: AssignmentUpdate,
    config: &SmelterConfig,
    tables: &TableStore,
    commits: &Arc<CommitEnv>,
) -> Vec<String> {
    let revisions: HashMap<String, u64> = update
        .pipelines
        .iter()
        .map(|p| (p.name.clone(), p.revision))
        .collect();
    let mut pipelines: HashMap<String, Arc<PipelineSpec>> = HashMap::new();
    for definition in &update.pipelines {
        match PipelineSpec::parse(&definition.spec_yaml, &definition.origin) {
            Ok(spec) => {
                pipelines.insert(definition.name.clone(), Arc::new(spec));
            }
            Err(error) => {
                tracing::error!(pipeline = %definition.name, %error, "assigned pipeline does not parse; its tasks are skipped")
            }
        }
    }
    // Per unit: (partition, task id) of each assigned task.
    let mut wanted: BTreeMap<UnitKey, Vec<(i32, String)>> = BTreeMap::new();
    for task in &update.tasks {
        let key = match task.kind() {
            TaskKind::Ingest => UnitKey::Ingest {
                pipeline: task.pipeline.clone(),
                source: task.source.clone(),
                table: task.table.clone(),
            },
            TaskKind::Refine => UnitKey::Refine {
                pipeline: task.pipeline.clone(),
                table: task.table.clone(),
            },
            TaskKind::Aggregate => UnitKey::Aggregate {
                pipeline: task.pipeline.clone(),
                table: task.table.clone(),
            },
            TaskKind::Unspecified => continue,
        };
        wanted
            .entry(key)
            .or_default()
            .push((task.partition, task.task_id.clone()));
    }
    for tasks in wanted.values_mut() {
        tasks.sort_unstable();
    }
    let stale: Vec<UnitKey> = units
        .iter()
        .filter(|(k, u)| {
            let changed_spec = revisions
                .get(k.pipeline())
                .is_some_and(|r| *r != u.revision);
            changed_spec
                || wanted.get(*k).is_none_or(|tasks| {
                    tasks
                        .iter()
                        .map(|(p, _)| *p)
                        .ne(u.partitions.iter().copied())
                })
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in &stale {
        if let Some(unit) = units.get(key) {
            unit.cancel.cancel();
        }
    }
    let assigned: std::collections::HashSet<&str> =
        update.tasks.iter().map(|t| t.task_id.as_str()).collect();
    let mut released = Vec::new();
    for key in stale {
        if let Some(unit) = units.remove(&key) {
            let _ = unit.handle.await;
            tracing::info!(?key, "task stopped");
            released.extend(
                unit.task_ids
                    .into_iter()
                    .map(|(_, id)| id)
                    .filter(|id| !assigned.contains(id.as_str())),
            );
        }
    }
    for (key, task_ids) in wanted {
        let partitions: Vec<i32> = task_ids.iter().map(|(p, _)| *p).collect();
        if units.contains_key(&key) {
            continue;
        }
        let Some(pipeline) = pipelines.get(key.pipeline()) else {
            continue;
        };
        let env = TaskEnv {
            tables: tables.clone(),
            config: config.worker.clone(),
            pipeline: Arc::clone(pipeline),
            commits: commits.clone(),
        };
        let progress = Progress::notifying(Arc::clone(changed));
        let cancel = CancellationToken::new();
        // Each task runs on a thread of its own (see the module docs): its CPU-heavy
        // stretches cannot hold up another task's start, the heartbeats, the reports or
        // the lock lease renewals, which run on the runtime's worker threads.
        let task = supervise(
            key.clone(),
            partitions.clone(),
            env,
            progress.clone(),
            cancel.clone(),
        );
        let handle = spawn_on_own_thread(task);
        tracing::info!(
            ?key,
            ?partitions,
            generation = update.generation,
            "task started"
        );
        let revision = revisions.get(key.pipeline()).copied().unwrap_or_default();
        let kind = match &key {
            UnitKey::Ingest { .. } => TaskKind::Ingest,
            UnitKey::Refine { .. } => TaskKind::Refine,
            UnitKey::Aggregate { .. } => TaskKind::Aggregate,
        };
        units.insert(
            key,
            Unit {
                kind,
                partitions,
                revision,
                task_ids,
                cancel,
                handle,
                progress,
            },
        );
    }
    released
}

/// Drives `task` on a blocking-pool thread of its own (see the module docs). Like a spawned
/// task, it is dropped when the runtime shuts down: a task on the runtime holds `keep`,
/// and shutdown drops the runtime's tasks before it stops the timers and I/O the future
/// uses. (A task in the middle of a poll at that moment can still meet a stopped timer and
/// panic on its own thread; the worker itself always drains its tasks before it returns.)
fn spawn_on_own_thread(task: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
    let runtime = tokio::runtime::Handle::current();
    let (keep, shutdown) = tokio::sync::oneshot::channel::<()>();
    let alive = tokio::spawn(async move {
        let _keep = keep;
        std::future::pending::<()>().await
    });
    tokio::task::spawn_blocking(move || {
        runtime.block_on(async move {
            tokio::select! {
                biased;
                _ = shutdown => {}
                _ = task => {}
            }
        });
        alive.abort();
    })
}

/// Runs a task, restarting it with backoff after retryable errors.
async fn supervise(
    key: UnitKey,
    partitions: Vec<i32>,
    env: TaskEnv,
    progress: Progress,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        progress.set_state(TaskState::Starting);
        let result = match &key {
            UnitKey::Ingest { source, table, .. } => {
                IngestTask {
                    source: source.clone(),
                    partitions: partitions.clone(),
                    table: table.clone(),
                }
                .run(env.clone(), progress.clone(), cancel.clone())
                .await
            }
            UnitKey::Refine { table, .. } => {
                RefineTask {
                    table: table.clone(),
                }
                .run(env.clone(), progress.clone(), cancel.clone())
                .await
            }
            UnitKey::Aggregate { table, .. } => {
                AggregateTask {
                    table: table.clone(),
                }
                .run(env.clone(), progress.clone(), cancel.clone())
                .await
            }
        };
        match result {
            Ok(()) => {
                progress.set_state(TaskState::Stopped);
                return;
            }
            Err(error) if error.is_retryable() && !cancel.is_cancelled() => {
                tracing::warn!(?key, %error, retry_in_ms = backoff.as_millis() as u64, "task failed; retrying");
                progress.update(|r| {
                    r.state = TaskState::Backoff as i32;
                    r.error = error.to_string();
                });
                tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(error) => {
                tracing::error!(?key, %error, "task failed");
                progress.update(|r| {
                    r.state = TaskState::Failed as i32;
                    r.error = error.to_string();
                });
                return;
            }
        }
    }
}
