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
    /// What each stage's part of the latency was spent on (`bronze`: produce to the
    /// bronze commit; `silver`: from there to the silver commit; `gold`: from there to the
    /// last gold table's commit), from the stage timings every commit records.
    pub breakdown: BTreeMap<String, Breakdown>,
    /// The same produce-to-gold percentiles per second of production (the events produced
    /// in the run's first second, its second, …): where in the run the tail sits — a slow
    /// start (tasks still being placed and opened) or a steady one.
    pub by_second: Vec<Second>,
}

/// The latency of the events produced in one second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    /// Produce to gold: median.
    pub p50_ms: f64,
    /// Produce to gold: 99th percentile.
    pub p99_ms: f64,
    /// Produce to the bronze commit: 99th percentile.
    pub bronze_p99_ms: f64,
    /// Produce to the silver commit: 99th percentile.
    pub silver_p99_ms: f64,
}

/// Where one stage's latency went, over every event.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Breakdown {
    /// The stage's mean latency per event.
    pub mean_ms: f64,
    /// Each part's share of it (0 to 1, summing to 1): what the commits recorded
    /// (`write`: data files; `lock`: the commit lock; `read`: reading upstream; `refine`:
    /// decoding, validating, deduplicating; `quarantine`: the quarantine commit;
    /// `refresh`: computing gold) and the rest, which no commit accounts for (`batch`: in
    /// the source and waiting for the bronze batch to close; `wait`: until the task saw
    /// the upstream version — polling, throttling, a pass still running, the upstream log
    /// write).
    pub shares: BTreeMap<String, f64>,
}

/// Sums of one stage's parts over events, for a [`Breakdown`].
#[derive(Default)]
struct StageSums {
    events: f64,
    total_ms: f64,
    parts: BTreeMap<&'static str, f64>,
}

impl StageSums {
    /// Adds `events` events that spent `total_ms` in the stage, of which the commit that
    /// ended it recorded `stages`: its `recorded` parts count as recorded (scaled down if
    /// they exceed the total: clocks of two writers), the rest goes to `rest`.
    fn add(
        &mut self,
        events: f64,
        total_ms: f64,
        stages: &BTreeMap<String, f64>,
        recorded: &[(&'static str, &str)],
        rest: &'static str,
    ) {
        let total_ms = total_ms.max(0.0);
        let known: Vec<(&'static str, f64)> = recorded
            .iter()
            .map(|(part, stage)| (*part, stages.get(*stage).copied().unwrap_or(0.0).max(0.0)))
            .collect();
        let sum: f64 = known.iter().map(|(_, ms)| ms).sum();
        let scale = if sum > total_ms && sum > 0.0 {
            total_ms / sum
        } else {
            1.0
        };
        for (part, ms) in known {
            *self.parts.entry(part).or_default() += events * ms * scale;
        }
        *self.parts.entry(rest).or_default() += events * (total_ms - sum * scale).max(0.0);
        self.events += events;
        self.total_ms += events * total_ms;
    }

    fn breakdown(&self) -> Breakdown {
        let total = self.total_ms.max(f64::MIN_POSITIVE);
        Breakdown {
            mean_ms: self.total_ms / self.events.max(1.0),
            shares: self
                .parts
                .iter()
                .map(|(part, ms)| (part.to_string(), ms / total))
                .collect(),
        }
    }
}

/// The parts each stage's commits record, as (part, stage timing).
const BRONZE_PARTS: [(&str, &str); 2] = [("write", "write"), ("lock", "lockWait")];
const SILVER_PARTS: [(&str, &str); 5] = [
    ("read", "read"),
    ("refine", "refine"),
    ("quarantine", "quarantine"),
    ("write", "write"),
    ("lock", "lockWait"),
];
const GOLD_PARTS: [(&str, &str); 3] = [
    ("refresh", "refresh"),
    ("write", "write"),
    ("lock", "lockWait"),
];

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
    /// Compactions (commits that rewrote files without changing data).
    pub compactions: u64,
    /// Files the table held at its latest version.
    pub files_at_end: u64,
    /// The most files the table held at any version: what compaction kept it to.
    pub most_files: u64,
}

/// Files and bytes per data commit, and how many files the table held.
pub fn shape(commits: &[Commit]) -> CommitShape {
    let data: Vec<&Commit> = commits.iter().filter(|c| c.files_added > 0).collect();
    let files: usize = data.iter().map(|c| c.files_added).sum();
    let bytes: u64 = data.iter().map(|c| c.bytes_added).sum();
    let n = data.len().max(1) as f64;
    let (mut live, mut most) = (0i64, 0i64);
    for commit in commits {
        live += (commit.files_added + commit.files_rewritten) as i64 - commit.files_removed as i64;
        most = most.max(live);
    }
    CommitShape {
        commits: data.len() as u64,
        files_per_commit: files as f64 / n,
        bytes_per_commit: bytes as f64 / n,
        bytes,
        compactions: commits
            .iter()
            .filter(|c| c.files_rewritten > 0 && c.files_added == 0)
            .count() as u64,
        files_at_end: live.max(0) as u64,
        most_files: most.max(0) as u64,
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

/// A commit that advanced a txn appId: the upstream version it reached, its own version,
/// its time and its stage timings.
#[derive(Debug, Clone, Copy)]
struct Step<'a> {
    reached: i64,
    version: i64,
    at_ms: i64,
    stages: &'a BTreeMap<String, f64>,
}

/// The commits that carried txn `app_id`, in order (txn versions only grow).
fn steps<'a>(commits: &'a [Commit], app_id: &AppId) -> Vec<Step<'a>> {
    let app_id = app_id.to_string();
    commits
        .iter()
        .filter_map(|c| {
            let (_, reached) = c.txns.iter().find(|(app, _)| *app == app_id)?;
            Some(Step {
                reached: *reached,
                version: c.version,
                at_ms: c.timestamp_ms?,
                stages: &c.stages,
            })
        })
        .collect()
}

/// The first step that reached upstream version `upstream`.
fn first_covering<'a>(steps: &[Step<'a>], upstream: i64) -> Option<Step<'a>> {
    let i = steps.partition_point(|s| s.reached < upstream);
    steps.get(i).copied()
}

/// Produce-to-gold latency of every event bronze holds.
pub fn latency(histories: &Histories, spec: &PipelineSpec, produced: &ProduceTimes) -> Latency {
    let mut samples: Vec<f64> = Vec::new();
    let mut in_bronze: Vec<f64> = Vec::new();
    let mut in_silver: Vec<f64> = Vec::new();
    let mut not_visible = 0u64;
    let mut timeline: Vec<(f64, [f64; 3])> = Vec::new();
    let mut sums: [StageSums; 3] = Default::default();
    for (bronze_name, _) in spec.tables_in(Layer::Bronze) {
        let Some(bronze) = histories.tables.get(bronze_name) else {
            continue;
        };
        // The silver tables reading this bronze table, and the gold tables reading them.
        let app = AppId::upstream;
        let chains: Vec<(Vec<Step<'_>>, Vec<Vec<Step<'_>>>)> = spec
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
        // first refresh from that silver version or a later one. The commits themselves
        // come along for their stage timings.
        let visible_at = |v: i64| -> Option<(Step<'_>, Step<'_>)> {
            let mut latest: Option<(Step<'_>, Step<'_>)> = None;
            for (silver, golds) in &chains {
                let consumed = first_covering(silver, v)?;
                for gold in golds {
                    let refreshed = first_covering(gold, consumed.version)?;
                    latest = Some(match latest {
                        None => (consumed, refreshed),
                        Some((s, g)) => (
                            if consumed.at_ms > s.at_ms {
                                consumed
                            } else {
                                s
                            },
                            if refreshed.at_ms > g.at_ms {
                                refreshed
                            } else {
                                g
                            },
                        ),
                    });
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
                            let (b, s, g) = (since(bronze), since(silver.at_ms), since(gold.at_ms));
                            in_bronze.push(b);
                            in_silver.push(s);
                            samples.push(g);
                            timeline.push((at, [b, s, g]));
                            sums[0].add(1.0, b, &commit.stages, &BRONZE_PARTS, "batch");
                            sums[1].add(1.0, s - b, silver.stages, &SILVER_PARTS, "wait");
                            sums[2].add(1.0, g - s, gold.stages, &GOLD_PARTS, "wait");
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
    let breakdown = ["bronze", "silver", "gold"]
        .into_iter()
        .zip(&sums)
        .map(|(stage, sums)| (stage.to_string(), sums.breakdown()))
        .collect();
    samples.sort_by(f64::total_cmp);
    let by_second = per_second(&timeline);
    Latency {
        events: samples.len() as u64,
        not_visible,
        p50_ms: quantile(&samples, 0.50),
        p99_ms: quantile(&samples, 0.99),
        max_ms: samples.last().copied().unwrap_or(0.0),
        stages,
        breakdown,
        by_second,
    }
}

/// The latencies in `timeline` ((produced at, [to bronze, silver, gold]) in ms) per second
/// of production, counted from the first event.
fn per_second(timeline: &[(f64, [f64; 3])]) -> Vec<Second> {
    let Some(first) = timeline.iter().map(|(at, _)| *at).min_by(f64::total_cmp) else {
        return Vec::new();
    };
    let mut seconds: Vec<[Vec<f64>; 3]> = Vec::new();
    for &(at, stages) in timeline {
        let second = ((at - first) / 1000.0) as usize;
        if seconds.len() <= second {
            seconds.resize_with(second + 1, Default::default);
        }
        for (times, latency) in seconds[second].iter_mut().zip(stages) {
            times.push(latency);
        }
    }
    seconds
        .into_iter()
        .map(|mut stages| {
            for times in &mut stages {
                times.sort_by(f64::total_cmp);
            }
            let [bronze, silver, gold] = &stages;
            Second {
                p50_ms: quantile(gold, 0.50),
                p99_ms: quantile(gold, 0.99),
                bronze_p99_ms: quantile(bronze, 0.99),
                silver_p99_ms: quantile(silver, 0.99),
            }
        })
        .collect()
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
