//! The catalog the HTTP surface serves (`/tables`, `/catalog`, `/catalog/lineage/...`),
//! built from what the leader knows: the applied pipeline specs (tables, their upstreams,
//! owners, tags, descriptions) and the tasks' latest reports (version, rows, last commit,
//! lag, quality counters). Nothing here reads the Delta logs: the coordinator has no Delta
//! dependency by design, so figures are those the writing tasks reported (counters since
//! the task started).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use smelter_common::spec::{Layer, PipelineSpec, SourceSpec, TableSpec};
use smelter_proto::ClusterStatus;

/// One table as `/tables` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TableEntry {
    /// `layer.name`.
    pub name: String,
    /// `bronze`, `silver` or `gold`.
    pub layer: String,
    /// The pipeline that writes it.
    pub pipeline: String,
    /// What it is made from: a source (bronze) or tables.
    pub from: Vec<String>,
    /// How: `ingest`, `refine`, `quarantine` or `aggregate`.
    pub operation: String,
    /// Catalog fields of the spec.
    pub owner: Option<String>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// What it holds.
    pub description: Option<String>,
    /// What each column holds.
    pub column_descriptions: std::collections::BTreeMap<String, String>,
    /// The columns that identify a row (gold).
    pub keys: Vec<String>,
    /// Partition columns.
    pub partition_by: Vec<String>,
    /// The tasks that write it, and the workers running them.
    pub tasks: Vec<TaskRef>,
    /// Latest version a writing task committed or saw.
    pub version: Option<i64>,
    /// Rows at that version, as reported.
    pub rows: Option<u64>,
    /// Unix millis of the last commit a writing task reported.
    pub last_commit_unix_ms: Option<i64>,
    /// Work not yet done by its writers (source records, upstream versions).
    pub lag: i64,
    /// Quality counters of its writers since they started.
    pub quality: Quality,
    /// Table checks its writer's last pass failed (`check: detail`).
    pub failed_checks: Vec<String>,
    /// Time since the last commit a writing task reported, when one did.
    pub freshness_ms: Option<i64>,
    /// The spec's `checks.freshness_sla`.
    pub freshness_sla_ms: Option<u64>,
    /// Whether the table is past its freshness SLA (`None`: no SLA, or no commit reported
    /// yet to measure from).
    pub stale: Option<bool>,
}

/// A writing task.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskRef {
    /// Task id.
    pub task_id: String,
    /// The worker running it (empty while unassigned).
    pub worker_id: String,
    /// Its state.
    pub state: String,
}

/// Rows that did not reach the table as they came.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Quality {
    /// Sent to quarantine.
    pub quarantined: u64,
    /// Dropped by expectations.
    pub dropped: u64,
    /// Removed as duplicates.
    pub deduplicated: u64,
}

/// One edge of the lineage graph.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    /// Upstream (a source name or a table).
    pub from: String,
    /// Downstream table.
    pub to: String,
    /// `ingest`, `refine`, `quarantine` or `aggregate`.
    pub operation: String,
}

/// The catalog of every applied pipeline.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Tables by name.
    pub tables: BTreeMap<String, TableEntry>,
    /// Pipelines: name, revision, sources (name -> kind), tables.
    pub pipelines: Vec<serde_json::Value>,
    /// Workers holding a live lease: id, hostname, Flight endpoint, tasks.
    pub workers: Vec<serde_json::Value>,
}

/// The layer of a table name (`silver.events` -> silver).
fn layer_of(name: &str) -> Option<Layer> {
    name.split_once('.')
        .and_then(|(layer, _)| Layer::parse(layer))
}

fn source_kind(source: &SourceSpec) -> &'static str {
    match source {
        SourceSpec::Generator(_) => "generator",
        SourceSpec::Files(_) => "files",
        SourceSpec::Kafka(_) => "kafka",
    }
}

fn entry(pipeline: &str, name: &str, spec: &TableSpec, operation: &str) -> TableEntry {
    TableEntry {
        name: name.to_string(),
        layer: layer_of(name).map_or("", Layer::as_str).to_string(),
        pipeline: pipeline.to_string(),
        from: spec.upstreams().cloned().collect(),
        operation: operation.to_string(),
        owner: spec.owner.clone(),
        tags: spec.tags.clone(),
        description: spec.description.clone(),
        column_descriptions: spec.column_descriptions.clone(),
        keys: spec.keys.clone(),
        partition_by: spec.partition_by.clone(),
        tasks: Vec::new(),
        version: None,
        rows: None,
        last_commit_unix_ms: None,
        lag: 0,
        quality: Quality::default(),
        failed_checks: Vec::new(),
        freshness_ms: None,
        freshness_sla_ms: spec.checks.freshness_sla.map(|sla| sla.as_millis() as u64),
        stale: None,
    }
}

impl Catalog {
    /// The catalog of `status`'s pipelines, with its tasks' reports; freshness measured at
    /// `now_ms` (Unix millis).
    pub fn build(status: &ClusterStatus, now_ms: i64) -> Catalog {
        let mut catalog = Catalog::default();
        for definition in &status.pipelines {
            let Ok(spec) = PipelineSpec::parse(&definition.spec_yaml, &definition.origin) else {
                continue;
            };
            for (name, table) in &spec.tables {
                let operation = match layer_of(name) {
                    Some(Layer::Bronze) => "ingest",
                    Some(Layer::Silver) => "refine",
                    _ => "aggregate",
                };
                catalog
                    .tables
                    .insert(name.clone(), entry(&spec.pipeline, name, table, operation));
                if operation == "refine" {
                    let quarantine = TableSpec::quarantine_name(name);
                    let mut side = entry(&spec.pipeline, &quarantine, table, "quarantine");
                    side.description = Some(TableSpec::quarantine_description(&table.from));
                    side.column_descriptions.clear();
                    side.keys.clear();
                    catalog.tables.insert(quarantine, side);
                    if table.merge.is_some() {
                        let tombstones = TableSpec::tombstones_name(name);
                        let mut side = entry(&spec.pipeline, &tombstones, table, "merge");
                        side.description = Some(TableSpec::tombstones_description(name));
                        side.column_descriptions.clear();
                        side.keys.clear();
                        catalog.tables.insert(tombstones, side);
                    }
                }
            }
            catalog.pipelines.push(serde_json::json!({
                "name": spec.pipeline,
                "revision": definition.revision,
                "paused": definition.paused,
                "origin": definition.origin,
                "sources": spec.sources.iter()
                    .map(|(n, s)| (n.clone(), serde_json::Value::from(source_kind(s))))
                    .collect::<serde_json::Map<_, _>>(),
                "tables": spec.tables.keys().collect::<Vec<_>>(),
            }));
        }
        for task in &status.tasks {
            let assignment = task.task.clone().unwrap_or_default();
            let report = task.report.clone().unwrap_or_default();
            let mut written = vec![assignment.table.clone()];
            if layer_of(&assignment.table) == Some(Layer::Silver) {
                written.push(TableSpec::quarantine_name(&assignment.table));
            }
            for (i, name) in written.iter().enumerate() {
                let Some(entry) = catalog.tables.get_mut(name) else {
                    continue;
                };
                entry.tasks.push(TaskRef {
                    task_id: assignment.task_id.clone(),
                    worker_id: task.worker_id.clone(),
                    state: report.state().label().to_string(),
                });
                if i > 0 {
                    // The quarantine side: the refine task reports its main table.
                    continue;
                }
                // Version 0 is also the report's default: only a commit makes it certain.
                if report.table_version > 0 || report.last_commit_unix_ms > 0 {
                    entry.version = entry.version.max(Some(report.table_version));
                    entry.rows = entry.rows.max(Some(report.table_rows));
                }
                if report.last_commit_unix_ms > 0 {
                    entry.last_commit_unix_ms = entry
                        .last_commit_unix_ms
                        .max(Some(report.last_commit_unix_ms));
                }
                entry.lag += report.lag.max(0);
                entry
                    .failed_checks
                    .extend(report.failed_checks.iter().cloned());
                entry.quality.quarantined += report.rows_quarantined;
                entry.quality.dropped += report.rows_dropped;
                entry.quality.deduplicated += report.rows_deduplicated;
            }
        }
        for entry in catalog.tables.values_mut() {
            entry.freshness_ms = entry.last_commit_unix_ms.map(|at| (now_ms - at).max(0));
            entry.stale = entry
                .freshness_sla_ms
                .zip(entry.freshness_ms)
                .map(|(sla, age)| age as u64 > sla);
        }
        catalog.workers = status
            .workers
            .iter()
            .map(|w| {
                serde_json::json!({
                    "worker_id": w.worker_id,
                    "hostname": w.hostname,
                    "flight_endpoint": w.flight_endpoint,
                    "tasks": w.tasks,
                    "lease_expires_in_ms": w.lease_expires_in_ms,
                })
            })
            .collect();
        catalog
    }

    /// Every edge between sources and tables.
    pub fn edges(&self) -> Vec<Edge> {
        let mut edges: Vec<Edge> = self
            .tables
            .values()
            .flat_map(|t| {
                t.from.iter().map(|from| Edge {
                    from: from.clone(),
                    to: t.name.clone(),
                    operation: t.operation.clone(),
                })
            })
            .collect();
        edges.sort();
        edges
    }

    /// The edges upstream of `table` (down to its sources) and downstream of it.
    pub fn lineage(&self, table: &str) -> (Vec<Edge>, Vec<Edge>) {
        let edges = self.edges();
        let closure = |start: &str, up: bool| {
            let mut seen = BTreeSet::from([start.to_string()]);
            let mut frontier = vec![start.to_string()];
            let mut out = Vec::new();
            while let Some(node) = frontier.pop() {
                for edge in &edges {
                    let (here, next) = if up {
                        (&edge.to, &edge.from)
                    } else {
                        (&edge.from, &edge.to)
                    };
                    if *here == node {
                        out.push(edge.clone());
                        if seen.insert(next.clone()) {
                            frontier.push(next.clone());
                        }
                    }
                }
            }
            out.sort();
            out.dedup();
            out
        };
        (closure(table, true), closure(table, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo pipeline, as applied.
    fn demo_pipeline() -> smelter_proto::PipelineDefinition {
        smelter_proto::PipelineDefinition {
            name: "clickstream".into(),
            spec_yaml: include_str!("../../examples/clickstream.yaml").into(),
            origin: "clickstream.yaml".into(),
            revision: 1,
            paused: false,
        }
    }

    #[test]
    fn lineage_follows_the_specs_both_ways() {
        let status = ClusterStatus {
            pipelines: vec![demo_pipeline()],
            ..Default::default()
        };
        let catalog = Catalog::build(&status, 0);
        assert!(catalog.tables.contains_key("silver.events_quarantine"));
        let hourly = &catalog.tables["gold.hourly_metrics"];
        assert_eq!(hourly.owner.as_deref(), Some("analytics"));
        let (up, down) = catalog.lineage("silver.events");
        let names = |edges: &[Edge]| -> Vec<String> {
            edges
                .iter()
                .map(|e| format!("{}->{} {}", e.from, e.to, e.operation))
                .collect()
        };
        assert_eq!(
            names(&up),
            vec![
                "bronze.events->silver.events refine",
                "events->bronze.events ingest"
            ]
        );
        assert!(names(&down).contains(&"silver.events->gold.hourly_metrics aggregate".into()));
    }

    #[test]
    fn failing_checks_and_freshness_come_from_the_writers_reports() {
        let task = |table: &str, last_commit: i64, failed: &[&str]| smelter_proto::TaskStatus {
            task: Some(smelter_proto::TaskAssignment {
                task_id: format!("clickstream/x/{table}"),
                table: table.into(),
                ..Default::default()
            }),
            worker_id: "w1".into(),
            report: Some(smelter_proto::TaskStatusReport {
                last_commit_unix_ms: last_commit,
                table_version: 3,
                failed_checks: failed.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = ClusterStatus {
            pipelines: vec![demo_pipeline()],
            tasks: vec![
                task(
                    "silver.events",
                    1_000,
                    &["range(quantity): 2 values outside [1, 100]"],
                ),
                task("gold.hourly_metrics", 1_000, &[]),
            ],
            ..Default::default()
        };
        // The demo gives silver a 5-minute SLA; gold has none.
        let fresh = Catalog::build(&status, 1_000 + 299_000);
        let silver = &fresh.tables["silver.events"];
        assert_eq!(
            silver.failed_checks,
            ["range(quantity): 2 values outside [1, 100]"]
        );
        assert_eq!(
            (silver.freshness_sla_ms, silver.freshness_ms, silver.stale),
            (Some(300_000), Some(299_000), Some(false))
        );
        assert!(
            fresh.tables["silver.events_quarantine"]
                .failed_checks
                .is_empty()
        );
        let gold = &fresh.tables["gold.hourly_metrics"];
        assert_eq!((gold.freshness_ms, gold.stale), (Some(299_000), None));
        let late = Catalog::build(&status, 1_000 + 300_001);
        assert_eq!(late.tables["silver.events"].stale, Some(true));
        // No commit reported yet: nothing to measure from.
        assert_eq!(late.tables["bronze.events"].stale, None);
    }
}
