//! "Has the pipeline processed everything its sources will ever produce?" — answered from
//! the tables' txn versions alone, so tests and `smelter up --exit-when-done` never rely
//! on timing or on what a worker claims.
//!
//! A caller that asks again and again (a benchmark waiting for the end, `--exit-when-done`)
//! keeps a [`DrainWatch`]: it loads each table once and afterwards probes it with one
//! `HEAD` per check, answering from its last answer while no table moved, and follows the
//! txn versions from the new commit entries ([`LogHeads`]), never updating a snapshot.
//! Loading every table on every check cost the measured process more than some of its
//! layers, and updating the snapshots of the tables that moved still cost a tenth of a core.

use std::collections::HashMap;

use deltalake::DeltaTable;
use smelter_common::spec::{Layer, PipelineSpec, SourceSpec};

use crate::Result;
use crate::source::generator::Clickstream;
use crate::source::landing::Landing;
use smelter_lake::heads::LogHeads;
use smelter_lake::{AppId, TableStore, log};

/// True when every bounded source is fully in bronze and every silver and gold table has
/// consumed the latest version of its upstream. Unbounded generators are never drained.
pub async fn pipeline_drained(tables: &TableStore, spec: &PipelineSpec) -> Result<bool> {
    DrainWatch::new(tables.clone(), spec.clone())
        .drained()
        .await
}

/// Answers [`pipeline_drained`] repeatedly for one pipeline, keeping its tables loaded.
pub struct DrainWatch {
    tables: TableStore,
    spec: PipelineSpec,
    loaded: HashMap<String, DeltaTable>,
    heads: LogHeads,
    /// The table versions at the last evaluation (`None`: the table did not exist), and
    /// its answer.
    last: Option<(Vec<Option<i64>>, bool)>,
}

impl DrainWatch {
    /// A watch over `spec`'s tables in `tables`; nothing is loaded until the first check.
    pub fn new(tables: TableStore, spec: PipelineSpec) -> Self {
        Self {
            tables,
            spec,
            loaded: HashMap::new(),
            heads: LogHeads::default(),
            last: None,
        }
    }

    /// Whether the pipeline is drained now (see [`pipeline_drained`]).
    pub async fn drained(&mut self) -> Result<bool> {
        let names: Vec<String> = self.spec.tables.keys().cloned().collect();
        let mut versions = Vec::with_capacity(names.len());
        for name in &names {
            versions.push(self.bring_forward(name).await?);
        }
        // A files source can grow without any table moving; generators cannot.
        let static_sources = !self
            .spec
            .sources
            .values()
            .any(|s| matches!(s, SourceSpec::Files(_)));
        if let Some((seen, answer)) = &self.last
            && static_sources
            && *seen == versions
        {
            return Ok(*answer);
        }
        let answer = self.evaluate().await?;
        self.last = Some((versions, answer));
        Ok(answer)
    }

    /// The table's latest version, loading it the first time it exists.
    async fn bring_forward(&mut self, name: &str) -> Result<Option<i64>> {
        if !self.loaded.contains_key(name) {
            if !self.tables.exists(name).await {
                return Ok(None);
            }
            let table = self.tables.open(name).await?;
            self.loaded.insert(name.to_string(), table);
        }
        let table = self.loaded.get_mut(name).expect("loaded above");
        Ok(Some(self.heads.head(table, name).await?.version()))
    }

    /// The answer now. Tables keep moving while it is computed, so each downstream table's
    /// txn is read before its upstream's version, silver before gold: both only grow, so
    /// when they are equal the table had consumed its upstream's latest version at the
    /// moment its txn was read, and upstream of it everything had already been checked.
    /// (Comparing against versions read at the start of the check answered "drained" when
    /// silver moved after its version was read but before its txns were: gold was then
    /// compared with the older silver version.)
    async fn evaluate(&mut self) -> Result<bool> {
        for (name, table) in self.spec.tables_in(Layer::Bronze) {
            let Some(bronze) = self.loaded.get_mut(name) else {
                return Ok(false);
            };
            let Some(source) = self.spec.sources.get(&table.from) else {
                return Ok(false);
            };
            let expected: Vec<(String, i32, i64)> = match source {
                SourceSpec::Generator(g) => {
                    let events = Clickstream::new(g)?;
                    let topic = events.topic(&table.from);
                    let mut out = Vec::new();
                    for partition in 0..g.partitions as i32 {
                        match events.partition_count(partition) {
                            None => return Ok(false),
                            Some(0) => {}
                            Some(n) => out.push((topic.clone(), partition, n - 1)),
                        }
                    }
                    out
                }
                SourceSpec::Files(f) => {
                    let done = files_done(
                        &self.tables,
                        &self.heads,
                        bronze,
                        name,
                        &self.spec.pipeline,
                        &table.from,
                        f,
                    )
                    .await?;
                    if !done {
                        return Ok(false);
                    }
                    Vec::new()
                }
                // Unbounded: callers that know what was produced check bronze themselves.
                SourceSpec::Kafka(_) => return Ok(false),
            };
            let app_ids: Vec<AppId> = expected
                .iter()
                .map(|(topic, partition, _)| AppId::source(&self.spec.pipeline, topic, *partition))
                .collect();
            let (_, at) = self.heads.txns(bronze, name, &app_ids).await?;
            if expected
                .iter()
                .zip(at)
                .any(|((_, _, last), at)| at != Some(*last))
            {
                return Ok(false);
            }
        }
        for (name, table) in downstream(&self.spec) {
            for from in table.upstreams() {
                let Some(target) = self.loaded.get_mut(name) else {
                    return Ok(false);
                };
                let app_id = AppId::upstream(name, from);
                let (_, at) = self.heads.txns(target, name, &[app_id]).await?;
                let Some(upstream) = self.loaded.get_mut(from) else {
                    return Ok(false);
                };
                let upstream = self.heads.head(upstream, from).await?.version();
                if at[0] != Some(upstream).filter(|v| *v >= 0) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// The silver and gold tables of `spec`, every silver table before any gold table.
fn downstream(
    spec: &PipelineSpec,
) -> impl Iterator<Item = (&String, &smelter_common::spec::TableSpec)> {
    spec.tables_in(Layer::Silver)
        .chain(spec.tables_in(Layer::Gold))
}

/// Whether `target` (named `name`) has consumed `upstream` (named `from`) as loaded.
async fn consumed_latest(
    target: &DeltaTable,
    name: &str,
    from: &str,
    upstream: &DeltaTable,
) -> Result<bool> {
    Ok(
        log::txn_version(target, &AppId::upstream(name, from)).await?
            == Some(log::version(upstream)).filter(|v| *v >= 0),
    )
}

/// True when every silver and gold table has consumed the latest version of its upstream.
pub async fn downstream_caught_up(tables: &TableStore, spec: &PipelineSpec) -> Result<bool> {
    for (name, table) in downstream(spec) {
        for from in table.upstreams() {
            if !tables.exists(name).await || !tables.exists(from).await {
                return Ok(false);
            }
            // The target first: see `DrainWatch::evaluate` for why the order matters.
            let target = tables.open(name).await?;
            let upstream = tables.open(from).await?;
            if !consumed_latest(&target, name, from, &upstream).await? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Whether bronze holds every record of every file of a files source: each file is
/// recorded as read to its end ([`AppId::SourceEnd`]), or holds no record, or (a file read
/// before ends were recorded) its position is its last record. Only files without an end
/// are opened, and the answer is "no" at the first one that is behind: a check while
/// thousands of files wait reads one of them.
async fn files_done(
    tables: &TableStore,
    heads: &LogHeads,
    bronze: &mut DeltaTable,
    bronze_name: &str,
    pipeline: &str,
    source: &str,
    spec: &smelter_common::spec::FilesSpec,
) -> Result<bool> {
    use crate::source::file_records::{file_records, last_offset};
    let Some(landing) = Landing::open(source, &spec.path, &tables.storage_options())? else {
        return Ok(true);
    };
    let selector = spec
        .selector()
        .map_err(|message| crate::WorkerError::SourceInvalid {
            source_name: source.to_string(),
            message,
        })?;
    let names: Vec<String> = landing
        .list(None)
        .await?
        .into_iter()
        .filter(|n| selector.selects(n))
        .collect();
    let ends: Vec<AppId> = names
        .iter()
        .map(|n| AppId::source_end(pipeline, n))
        .collect();
    let (_, ended) = heads.txns(bronze, bronze_name, &ends).await?;
    for (name, end) in names.into_iter().zip(ended) {
        if end.is_some_and(|last| last >= 0) {
            continue;
        }
        let bytes = landing.read(&name).await?;
        let Some(last) = last_offset(&file_records(&name, bytes, spec)) else {
            continue; // nothing in it
        };
        let app_id = AppId::source(pipeline, &name, 0);
        let (_, at) = heads.txns(bronze, bronze_name, &[app_id]).await?;
        if at[0] != Some(last) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// For an unbounded source whose producer knows what it wrote: the partitions of `topic`
/// that some bronze table does not hold up to `last[partition]` yet, as
/// `"<partition>: <txn version> of <last>"`. Empty when bronze has all of it. A table
/// that does not exist yet holds nothing.
pub async fn bronze_behind(
    tables: &TableStore,
    spec: &PipelineSpec,
    topic: &str,
    last: &std::collections::BTreeMap<i32, i64>,
) -> Result<Vec<String>> {
    let mut behind = Vec::new();
    for (name, _) in spec.tables_in(Layer::Bronze) {
        let bronze = if tables.exists(name).await {
            Some(tables.open(name).await?)
        } else {
            None
        };
        for (&partition, &offset) in last.iter().filter(|(_, o)| **o >= 0) {
            let at = match &bronze {
                Some(table) => {
                    log::txn_version(table, &AppId::source(&spec.pipeline, topic, partition))
                        .await?
                }
                None => None,
            };
            if at.is_none_or(|v| v < offset) {
                behind.push(format!("{partition}: {at:?} of {offset}"));
            }
        }
    }
    Ok(behind)
}
