//! Produce-to-gold latency and commit shapes, from the tables' own logs.
//!
//! Every commit carries txn versions: bronze's say which source offsets it holds, silver's
//! which bronze version it consumed, gold's which silver version it was computed from. So
//! for each bronze version the log tells when the last gold table caught up with it, and
//! every event that bronze version brought in became visible in gold at that moment. Its
//! latency is that moment minus the event's produce time. No polling: the commit
//! timestamps are the writers' own clocks (the same machine's).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use smelter_common::spec::{Layer, PipelineSpec};
use smelter_lake::history::{self, Commit};
use smelter_lake::{AppId, TableStore};

use crate::Result;

/// When each event was produced.
pub enum ProduceTimes {
    /// A paced generator: offset `o` of every partition was due at `start_ms + o / rate`,
    /// `rate` per partition per millisecond.
    Paced {
        /// When the pipeline was applied (the reader opens a little later: conservative).
        start_ms: f64,
        /// Events per partition per millisecond.
        per_partition_per_ms: f64,
    },
    /// Recorded per (partition, offset), in milliseconds since the epoch (Kafka's
    /// CreateTime as bronze kept it).
    Recorded(HashMap<i32, Vec<(i64, i64)>>),
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Events with a latency (visible in every gold table).
    pub events: u64,
    /// Events bronze holds that some gold table never caught up with.
    pub not_visible: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Worst.
    pub max_ms: f64,
    /// Where the time goes: the same events' latency until their bronze commit, and until
    /// the first silver commit that consumed it (gold is the figures above).
    pub stages: BTreeMap<String, Percentiles>,
}

/// Median and 99th percentile of one stage, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// The `q` quantile of sorted `samples` (nearest rank), 0 when there are none.
fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}

/// How one table was committed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CommitShape {
    /// Commits that added data.
    pub commits: u64,
    /// Data files per such commit.
    pub files_per_commit: f64,
    /// Bytes per such commit.
    pub bytes_per_commit: f64,
    /// All data bytes added.
    pub bytes: u64,
}

/// Files and bytes per data commit.
pub fn shape(commits: &[Commit]) -> CommitShape {
    let data: Vec<&Commit> = commits.iter().filter(|c| c.files_added > 0).collect();
    let files: usize = data.iter().map(|c| c.files_added).sum();
    let bytes: u64 = data.iter().map(|c| c.bytes_added).sum();
    let n = data.len().max(1) as f64;
    CommitShape {
        commits: data.len() as u64,
        files_per_commit: files as f64 / n,
        bytes_per_commit: bytes as f64 / n,
        bytes,
    }
}

/// The logs of every table of a pipeline.
pub struct Histories {
    /// Table name -> its commits.
    pub tables: BTreeMap<String, Vec<Commit>>,
}

impl Histories {
    /// Reads the log of every table of `spec` that exists.
    pub async fn read(tables: &TableStore, spec: &PipelineSpec) -> Result<Self> {
        let mut out = BTreeMap::new();
        for name in tables.list().await {
            if spec.tables.contains_key(&name) || name.ends_with("_quarantine") {
                let table = tables.open(&name).await?;
                out.insert(name.clone(), history::commits(&table, &name).await?);
            }
        }
        Ok(Self { tables: out })
    }

    /// Commit shapes per table.
    pub fn shapes(&self) -> BTreeMap<String, CommitShape> {
        self.tables
            .iter()
            .map(|(name, commits)| (name.clone(), shape(commits)))
            .collect()
    }
}

/// A commit that advanced a txn appId: the upstream version it reached, its own version
/// and its time.
#[derive(Debug, Clone, Copy)]
struct Step {
    reached: i64,
    version: i64,
    at_ms: i64,
}

/// The commits that carried txn `app_id`, in order (txn versions only grow).
fn steps(commits: &[Commit], app_id: &AppId) -> Vec<Step> {
    let app_id = app_id.to_string();
    commits
        .iter()
        .filter_map(|c| {
            let (_, reached) = c.txns.iter().find(|(app, _)| *app == app_id)?;
            Some(Step {
                reached: *reached,
                version: c.version,
                at_ms: c.timestamp_ms?,
            })
        })
        .collect()
}

/// The first step that reached upstream version `upstream`.
fn first_covering(steps: &[Step], upstream: i64) -> Option<Step> {
    let i = steps.partition_point(|s| s.reached < upstream);
    steps.get(i).copied()
}

/// Produce-to-gold latency of every event bronze holds.
pub fn latency(histories: &Histories, spec: &PipelineSpec, produced: &ProduceTimes) -> Latency {
    let mut samples: Vec<f64> = Vec::new();
    let mut in_bronze: Vec<f64> = Vec::new();
    let mut in_silver: Vec<f64> = Vec::new();
    let mut not_visible = 0u64;
    for (bronze_name, _) in spec.tables_in(Layer::Bronze) {
        let Some(bronze) = histories.tables.get(bronze_name) else {
            continue;
        };
        // The silver tables reading this bronze table, and the gold tables reading them.
        let app = AppId::upstream;
        let chains: Vec<(Vec<Step>, Vec<Vec<Step>>)> = spec
            .tables
            .iter()
            .filter(|(_, t)| t.from == *bronze_name)
            .filter_map(|(silver_name, _)| {
                let silver = steps(
                    histories.tables.get(silver_name)?,
                    &app(silver_name, bronze_name),
                );
                let golds = spec
                    .tables
                    .iter()
                    .filter(|(_, t)| t.from == *silver_name)
                    .map(|(gold_name, _)| {
                        histories
                            .tables
                            .get(gold_name)
                            .map_or(Vec::new(), |g| steps(g, &app(gold_name, silver_name)))
                    })
                    .collect();
                Some((silver, golds))
            })
            .collect();
        // When the last silver table consumed bronze version `v` (the first silver commit
        // that did), and when the last gold table caught up with it: per gold table, the
        // first refresh from that silver version or a later one.
        let visible_at = |v: i64| -> Option<(i64, i64)> {
            let mut latest: Option<(i64, i64)> = None;
            for (silver, golds) in &chains {
                let consumed = first_covering(silver, v)?;
                for gold in golds {
                    let at = first_covering(gold, consumed.version)?.at_ms;
                    latest = Some(latest.map_or((consumed.at_ms, at), |(s, g)| {
                        (s.max(consumed.at_ms), g.max(at))
                    }));
                }
            }
            latest
        };
        let mut covered: HashMap<i32, i64> = HashMap::new();
        for commit in bronze {
            let mut fresh: Vec<(i32, i64, i64)> = Vec::new();
            for (app, offset) in &commit.txns {
                let Some(AppId::Source {
                    pipeline,
                    partition,
                    ..
                }) = AppId::parse(app)
                else {
                    continue;
                };
                if pipeline != spec.pipeline {
                    continue;
                }
                let previous = covered.insert(partition, *offset).unwrap_or(-1);
                if *offset > previous {
                    fresh.push((partition, previous + 1, *offset));
                }
            }
            if fresh.is_empty() {
                continue;
            }
            let seen = visible_at(commit.version);
            for (partition, first, last) in fresh {
                for offset in first..=last {
                    match (
                        seen,
                        produce_ms(produced, partition, offset),
                        commit.timestamp_ms,
                    ) {
                        (Some((silver, gold)), Some(at), Some(bronze)) => {
                            let since = |t: i64| (t as f64 - at).max(0.0);
                            in_bronze.push(since(bronze));
                            in_silver.push(since(silver));
                            samples.push(since(gold));
                        }
                        _ => not_visible += 1,
                    }
                }
            }
        }
    }
    let mut stages = BTreeMap::new();
    for (stage, mut times) in [("bronze", in_bronze), ("silver", in_silver)] {
        times.sort_by(f64::total_cmp);
        let figures = Percentiles {
            p50_ms: quantile(&times, 0.50),
            p99_ms: quantile(&times, 0.99),
        };
        stages.insert(stage.to_string(), figures);
    }
    samples.sort_by(f64::total_cmp);
    Latency {
        events: samples.len() as u64,
        not_visible,
        p50_ms: quantile(&samples, 0.50),
        p99_ms: quantile(&samples, 0.99),
        max_ms: samples.last().copied().unwrap_or(0.0),
        stages,
    }
}

fn produce_ms(produced: &ProduceTimes, partition: i32, offset: i64) -> Option<f64> {
    match produced {
        ProduceTimes::Paced {
            start_ms,
            per_partition_per_ms,
        } => Some(start_ms + offset as f64 / per_partition_per_ms),
        ProduceTimes::Recorded(times) => {
            let list = times.get(&partition)?;
            let i = list.partition_point(|(o, _)| *o < offset);
            list.get(i)
                .filter(|(o, _)| *o == offset)
                .map(|(_, t)| *t as f64)
        }
    }
}
