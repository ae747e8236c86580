//! The worker's running units: which assigned tasks run together ([`UnitKey`]: every
//! partition of one source is one ingest unit), starting and stopping them to match each
//! assignment ([`reconcile`]), and the thread each one runs on.
//!
//! Each unit is driven on a blocking-pool thread of its own (`Handle::block_on`), not on
//! the runtime's few worker threads: a refine pass decoding a backlog or a gold refresh
//! runs for long stretches without an `.await`, and on the worker threads it would delay
//! other tasks' starts (a failover then exceeds its bound), the status reports, and the
//! heartbeats and lock-lease renewals that keep this worker's claims alive. The OS shares
//! the cores among the task threads; the control plane stays responsive.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use smelter_common::config::SmelterConfig;
use smelter_common::spec::PipelineSpec;
use smelter_lake::{CommitEnv, TableStore};
use smelter_proto::{AssignmentUpdate, TaskKind};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::supervise::supervise;
use crate::tasks::aggregate::AggregateTask;
use crate::tasks::ingest::IngestTask;
use crate::tasks::maintain::MaintainTask;
use crate::tasks::refine::RefineTask;
use crate::tasks::{Progress, TaskEnv};

/// What one running unit of work is, as the worker groups assignments: all partitions of
/// one source form a single ingest task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum UnitKey {
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
    Maintain {
        pipeline: String,
    },
}

impl UnitKey {
    pub(super) fn pipeline(&self) -> &str {
        match self {
            UnitKey::Ingest { pipeline, .. }
            | UnitKey::Refine { pipeline, .. }
            | UnitKey::Aggregate { pipeline, .. }
            | UnitKey::Maintain { pipeline } => pipeline,
        }
    }
}

/// One running unit: its supervisor on a thread of its own, and what the worker reports
/// of it.
pub(super) struct Unit {
    pub(super) kind: TaskKind,
    partitions: Vec<i32>,
    /// Revision of the pipeline spec the unit was started with; a new one restarts it.
    revision: u64,
    /// (partition, task id) of every assigned task the unit runs.
    pub(super) task_ids: Vec<(i32, String)>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
    pub(super) progress: Progress,
}

/// Makes the running units match `update`: stops (drains) what is gone or changed, starts
/// what is new. Returns the ids of tasks no longer assigned, now drained.
pub(super) async fn reconcile(
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
    let paused: std::collections::HashSet<&str> = update
        .pipelines
        .iter()
        .filter(|p| p.paused)
        .map(|p| p.name.as_str())
        .collect();
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
            TaskKind::Maintain => UnitKey::Maintain {
                pipeline: task.pipeline.clone(),
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
        let task = run_unit(
            key.clone(),
            partitions.clone(),
            env,
            progress.clone(),
            cancel.clone(),
            paused.contains(key.pipeline()),
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
            UnitKey::Maintain { .. } => TaskKind::Maintain,
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

/// Stops every unit (each commits its in-flight batch) and waits for them.
pub(super) async fn stop_all(units: &mut BTreeMap<UnitKey, Unit>) {
    for unit in units.values() {
        unit.cancel.cancel();
    }
    for (key, unit) in std::mem::take(units) {
        if let Err(error) = unit.handle.await {
            tracing::error!(?key, %error, "unit thread ended abnormally while draining");
        }
    }
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

/// The supervised task of unit `key` (see [`supervise`]). A unit of a paused pipeline
/// runs nothing: it holds its tasks and reports them paused until it is stopped (the unit
/// it replaced has drained by then: [`reconcile`] waits for stale units first).
async fn run_unit(
    key: UnitKey,
    partitions: Vec<i32>,
    env: TaskEnv,
    progress: Progress,
    cancel: CancellationToken,
    paused: bool,
) {
    if paused {
        progress.set_state(smelter_proto::TaskState::Paused);
        cancel.cancelled().await;
        return;
    }
    let what = format!("{key:?}");
    let start = || {
        let (env, progress, cancel) = (env.clone(), progress.clone(), cancel.clone());
        let (key, partitions) = (key.clone(), partitions.clone());
        async move {
            match key {
                UnitKey::Ingest { source, table, .. } => {
                    IngestTask {
                        source,
                        partitions,
                        table,
                    }
                    .run(env, progress, cancel)
                    .await
                }
                UnitKey::Refine { table, .. } => {
                    RefineTask { table }.run(env, progress, cancel).await
                }
                UnitKey::Aggregate { table, .. } => {
                    AggregateTask { table }.run(env, progress, cancel).await
                }
                UnitKey::Maintain { .. } => MaintainTask.run(env, progress, cancel).await,
            }
        }
    };
    supervise(&what, start, progress.clone(), cancel.clone()).await;
}
