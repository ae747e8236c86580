//! From a pipeline spec to the tasks it needs: one ingest task per source partition, one
//! refine task per silver table, one aggregate task per gold table, and one maintenance task
//! for the pipeline's tables (compaction and vacuum, per each table's `maintenance`).

use std::collections::BTreeMap;

use smelter_common::spec::{Layer, PipelineSpec, TableSpec};
use smelter_proto::{TaskAssignment, TaskKind};

use super::placement;

/// The tasks `spec` needs. `kafka_partitions` gives the discovered partition count of each
/// Kafka source (none yet: no ingest tasks for it yet).
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
    if spec.tables.values().any(|t| t.maintenance.enabled) {
        tasks.push(task(TaskKind::Maintain, &spec.pipeline, "", "", 0));
    }
    tasks
}

/// What placement needs of `task` (one of `spec`'s): its kind's stage, and the tables it
/// writes and reads, qualified by pipeline, so it can go where its neighbours are.
pub fn placement_task(spec: &PipelineSpec, task: &TaskAssignment) -> placement::Task {
    let qualified = |table: &str| format!("{}/{table}", spec.pipeline);
    let table = spec.tables.get(&task.table);
    let reads = match task.kind() {
        TaskKind::Refine | TaskKind::Aggregate => table
            .map(|t| {
                t.upstreams()
                    .filter(|u| spec.tables.contains_key(*u))
                    .map(|u| qualified(u))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let writes = match task.kind() {
        TaskKind::Ingest | TaskKind::Aggregate => vec![qualified(&task.table)],
        TaskKind::Refine => vec![
            qualified(&task.table),
            qualified(&TableSpec::quarantine_name(&task.table)),
        ],
        TaskKind::Maintain | TaskKind::Unspecified => Vec::new(),
    };
    placement::Task {
        id: task.task_id.clone(),
        stage: task.kind,
        writes,
        reads,
    }
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
