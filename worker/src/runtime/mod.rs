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
//! [`units`] groups the assigned tasks into running units, each on a thread of its own;
//! [`supervise`] restarts a unit's task after failures and panics and reports why.
//!
//! Stopping a task cancels its token; the task commits its in-flight batch and returns.
//! Tasks outlive control-plane sessions, so a coordinator failover does not pause data;
//! only after [`ORPHAN_TTLS`] lease TTLs without any coordinator does the worker stop them
//! (they have surely been given to others by then). Nothing here is needed for
//! correctness after a crash — that is the commit protocol's job.

mod supervise;
mod units;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use smelter_common::config::SmelterConfig;
use smelter_common::security::auth::Bearer;
use smelter_common::security::{Authenticator, tls};
use smelter_common::store::CoordinationStore;
use smelter_lake::failpoint::Failpoints;
use smelter_lake::lock::CommitArbiter;
use smelter_lake::recent_files::RecentFiles;
use smelter_lake::signals::CommitSignals;
use smelter_lake::{CommitEnv, TableStore};
use smelter_proto::{
    ControlClient, DeregisterRequest, HeartbeatRequest, RegisterWorkerRequest, TaskKind, TaskState,
    TaskStatusReport, WatchAssignmentsRequest, WorkerContext,
};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tracing::Instrument;

use crate::serve::exchange::FlightFetch;
use crate::serve::flight::FlightSqlServer;
use crate::serve::query::QueryEngine;
use crate::{Result, WorkerError};
use units::{Unit, UnitKey, reconcile, stop_all};

/// The control-plane client: every call carries this worker's bearer token.
type Control = ControlClient<InterceptedService<Channel, Bearer>>;

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

/// What the workers of one process share (one worker per process in a cluster; every
/// worker of `smelter up`): one budget of recently committed files, so that refine reads
/// what any of them ingested from memory, and one set of commit announcements, so that a
/// task wakes when any of them commits its upstream.
#[derive(Debug, Clone, Default)]
pub struct ProcessShared {
    /// Rows of the files committed lately.
    pub recent: RecentFiles,
    /// Announcements of committed versions.
    pub signals: CommitSignals,
}

impl ProcessShared {
    /// The budget `worker.recent_files_mb` sets, and no announcement yet.
    pub fn from_config(config: &smelter_common::config::WorkerConfig) -> Self {
        Self {
            recent: RecentFiles::from_config(config),
            signals: CommitSignals::default(),
        }
    }
}

/// Runs a worker until `shutdown` is cancelled. The Flight SQL service is served on
/// `flight_listener` (bind it first; port 0 is fine).
/// `store` is the coordination store shared with every other writer of the tables (etcd
/// in cluster mode, the in-process store under `smelter up`): commits then go through the
/// table commit locks. Without one, commits rely on the txn compare-and-set alone.
/// `shared` is what the workers of one process share: the rows of the files they commit
/// lately, for the tasks downstream ([`RecentFiles::from_config`]), and word of their
/// commits ([`CommitSignals`]).
pub async fn run(
    config: SmelterConfig,
    flight_listener: TcpListener,
    store: Option<Arc<dyn CoordinationStore>>,
    shared: ProcessShared,
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
    let engine = QueryEngine::for_clients(tables.clone(), config.query.clone());
    let auth = Authenticator::from_config(&config.security)?;
    // The exchange: this worker offers the rows it keeps at its Flight endpoint, and
    // takes what the others offer (see `crate::serve::exchange`).
    // Its own counts of where reads found their rows (the files are the process's).
    let recent = shared.recent.for_worker();
    let recent = match FlightFetch::exchange(&config, &advertised)? {
        Some(exchange) => recent.with_exchange(exchange),
        None => recent,
    };
    let mut flight = FlightSqlServer::new(engine)?;
    if recent.exchange().is_some() {
        flight = flight.with_exchange(recent.clone(), config.worker.exchange_forge);
    }
    let flight = flight.into_service(&auth);
    let mut server = Server::builder();
    if let Some(tls) = tls::server(&config.security, config.security.flight_client_certs)? {
        server = server.tls_config(tls)?;
    }
    let flight_shutdown = shutdown.clone();
    let flight_task = AbortOnDropHandle::new(tokio::spawn(async move {
        // Small responses must not wait for Nagle's algorithm (40 ms per round trip).
        let incoming = TcpIncoming::from(flight_listener).with_nodelay(Some(true));
        if let Err(error) = server
            .add_service(flight)
            .serve_with_incoming_shutdown(incoming, flight_shutdown.cancelled_owned())
            .await
        {
            tracing::error!(%error, "flight server stopped");
        }
    }));
    tracing::info!(
        flight = %advertised,
        tls = config.security.serves_tls(),
        tokens = auth.requires_tokens(),
        "worker serving Flight SQL"
    );
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
        signals: shared.signals,
        log: tables.log_kind(),
        timings: Default::default(),
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

/// A client of the coordinator at `endpoint`, over TLS with this worker's certificate when
/// configured, presenting its token.
async fn connect(endpoint: &str, config: &SmelterConfig) -> Result<Control> {
    let channel = tls::endpoint(endpoint, &config.security)?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await?;
    Ok(ControlClient::with_interceptor(
        channel,
        Bearer::from_config(&config.security)?,
    ))
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
    let mut client = connect(endpoint, config).await?;
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
    follow(
        config, tables, commits, shutdown, endpoint, state, client, registered,
    )
    .instrument(span)
    .await
}

/// The registered part of a session: heartbeats, the assignment stream, status reports.
#[allow(clippy::too_many_arguments)]
async fn follow(
    config: &SmelterConfig,
    tables: &TableStore,
    commits: &Arc<CommitEnv>,
    shutdown: &CancellationToken,
    endpoint: &str,
    state: &mut WorkerState,
    mut client: Control,
    registered: smelter_proto::RegisterWorkerResponse,
) -> Result<()> {
    let worker_id = state.worker_id.clone();
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
    let mut heartbeats = AbortOnDropHandle::new(tokio::spawn(keep_alive(
        client.clone(),
        worker_id.clone(),
        Duration::from_millis(registered.heartbeat_interval_ms.max(100)),
        state.lease_ttl,
        commits.clone(),
        contact_tx,
    )));
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
    result
}

/// Where this worker's reads of data files found their rows, for its heartbeat.
fn file_reads(recent: &RecentFiles) -> smelter_proto::FileReads {
    let reads = recent.reads();
    smelter_proto::FileReads {
        memory: reads.memory,
        exchanged: reads.exchanged,
        exchanged_bytes: reads.exchanged_bytes,
        rejected: reads.rejected,
        failed: reads.failed,
        storage: reads.storage,
        storage_bytes: reads.storage_bytes,
        decode_ms: reads.decode_ms,
        served: reads.served,
    }
}

/// Sends a heartbeat every `every` until one fails or goes unanswered for a lease TTL;
/// publishes each success in `contact` and returns the failure. Each heartbeat carries the
/// worker's count of fenced commit attempts, for `smelter status`.
async fn keep_alive(
    mut client: Control,
    worker_id: String,
    every: Duration,
    ttl: Duration,
    commits: Arc<CommitEnv>,
    contact: tokio::sync::watch::Sender<Instant>,
) -> tonic::Status {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let mut request = tonic::Request::new(HeartbeatRequest {
            worker_id: worker_id.clone(),
            commits_fenced: commits.arbiter.as_ref().map_or(0, |a| a.fenced()),
            timings: crate::timings::table_timings(&commits.timings),
            reads: Some(file_reads(&commits.recent)),
        });
        request.set_timeout(ttl);
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
    client: &mut Control,
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

async fn report_status(
    client: &mut Control,
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
