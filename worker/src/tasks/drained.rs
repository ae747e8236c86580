//! "Has the pipeline processed everything its sources will ever produce?" — answered from
//! the tables' txn versions alone, so tests and `smelter up --exit-when-done` never rely
//! on timing or on what a worker claims.

use smelter_common::spec::{Layer, PipelineSpec, SourceSpec};

use super::downstream_app_id;
use super::ingest::app_id;
use crate::Result;
use crate::source::generator::Clickstream;
use crate::tables::{self, TableStore};

/// True when every bounded source is fully in bronze and every silver and gold table has
/// consumed the latest version of its upstream. Unbounded generators are never drained.
pub async fn pipeline_drained(tables: &TableStore, spec: &PipelineSpec) -> Result<bool> {
    for (name, table) in spec.tables_in(Layer::Bronze) {
        if !tables.exists(name).await {
            return Ok(false);
        }
        let bronze = tables.open(name).await?;
        let Some(source) = spec.sources.get(&table.from) else {
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
            SourceSpec::Files(f) => files_expected(&f.path, &f.suffix)?,
            // Unbounded: callers that know what was produced check bronze themselves.
            SourceSpec::Kafka(_) => return Ok(false),
        };
        for (topic, partition, last) in expected {
            if tables::txn_version(&bronze, &app_id(&spec.pipeline, &topic, partition)).await?
                != Some(last)
            {
                return Ok(false);
            }
        }
    }
    downstream_caught_up(tables, spec).await
}

/// True when every silver and gold table has consumed the latest version of its upstream.
pub async fn downstream_caught_up(tables: &TableStore, spec: &PipelineSpec) -> Result<bool> {
    for (name, table) in spec.tables.iter().filter(|(n, _)| {
        matches!(
            smelter_common::spec::table_layer(n),
            Some(Layer::Silver | Layer::Gold)
        )
    }) {
        if !tables.exists(name).await || !tables.exists(&table.from).await {
            return Ok(false);
        }
        let upstream = tables.open(&table.from).await?;
        let target = tables.open(name).await?;
        if tables::txn_version(&target, &downstream_app_id(name, &table.from)).await?
            != Some(tables::version(&upstream)).filter(|v| *v >= 0)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// (file, 0, last non-blank line index) of every complete file in a files-source directory.
fn files_expected(dir: &str, suffix: &str) -> Result<Vec<(String, i32, i64)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(suffix) || name.starts_with('.') {
            continue;
        }
        let bytes = std::fs::read(entry.path()).map_err(|source| crate::WorkerError::Io {
            context: format!("read {name}"),
            source,
        })?;
        let last = bytes
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
            .map(|(i, _)| i as i64)
            .last();
        if let Some(last) = last {
            out.push((name, 0, last));
        }
    }
    Ok(out)
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
                    tables::txn_version(table, &app_id(&spec.pipeline, topic, partition)).await?
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
