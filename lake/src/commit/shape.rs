//! A commit's rows shaped as its table, or the table's schema evolving with them
//! ([`crate::evolve`]): what [`super::commit_write`] writes.
//!
//! Rows shaped as the table (the usual case) cost one schema comparison. Otherwise the
//! table is brought up to its latest metadata first — an evolution is planned from the
//! schema the table has now, not the one this writer loaded — and the commit carries the
//! new metadata with the rows; if the evolution widens a type, it also carries every live
//! file rewritten in the wider type (`dataChange = false`) and the removal of the old ones.
//! The lean commit path writes the metadata only after the metadata it was derived from,
//! or fails with [`crate::LakeError::Superseded`] and the caller plans again.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow as _;
use deltalake::kernel::{Metadata, MetadataExt as _, StructType};

use super::{CommitEnv, WriteMode};
use crate::changes::{self, DataFile};
use crate::evolve::{self, Evolution, Plan};
use crate::log::{arrow_schema, refresh};
use crate::{LakeError, Result};

/// A commit's rows as the table takes them.
pub(super) struct Shaped {
    /// The rows, shaped as the table (or its evolved schema).
    pub(super) batches: Vec<RecordBatch>,
    /// The schema files are encoded with when it is not the table's (an evolution).
    pub(super) schema: Option<SchemaRef>,
    /// The table's new metadata (an evolution).
    pub(super) table_metadata: Option<Metadata>,
    /// The rows of each file the table holds, in the widened types (an evolution that
    /// widens): written as new files in the same commit.
    pub(super) rewritten: Vec<Vec<RecordBatch>>,
    /// The files `rewritten` replaces.
    pub(super) removes: Vec<String>,
    /// What the evolution did, for the commit's metadata and the logs.
    pub(super) summary: Option<String>,
}

impl Shaped {
    fn rows(batches: Vec<RecordBatch>) -> Self {
        Shaped {
            batches,
            schema: None,
            table_metadata: None,
            rewritten: Vec::new(),
            removes: Vec::new(),
            summary: None,
        }
    }
}

/// Shapes `batches` for `table` (see the module docs).
pub(super) async fn shape(
    table: &mut DeltaTable,
    name: &str,
    batches: &[RecordBatch],
    mode: WriteMode,
    env: &CommitEnv,
) -> Result<Shaped> {
    let Some(first) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Shaped::rows(batches.to_vec()));
    };
    let rows_schema = first.schema();
    let mut table_schema = arrow_schema(table, name)?;
    if rows_schema == table_schema {
        return Ok(Shaped::rows(batches.to_vec()));
    }
    let mut planned = evolve::plan(&table_schema, &rows_schema).map_err(|e| e.into_error(name))?;
    if matches!(planned, Plan::Evolve(_)) {
        // Planned again from the table's latest metadata: another writer (this task's
        // previous run, a describe) may have changed it since this snapshot was loaded.
        refresh(table, name).await?;
        table_schema = arrow_schema(table, name)?;
        planned = evolve::plan(&table_schema, &rows_schema).map_err(|e| e.into_error(name))?;
    }
    if let Plan::Evolve(evolution) = &planned {
        evolve::check_timestamp_ntz(&table_schema, &evolution.target, name)?;
    }
    match planned {
        Plan::Same => Ok(Shaped::rows(batches.to_vec())),
        Plan::Conform(schema) => Ok(Shaped::rows(conform_all(batches, &schema)?)),
        Plan::Evolve(evolution) => evolving(table, name, batches, evolution, mode, env).await,
    }
}

fn conform_all(batches: &[RecordBatch], schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    batches
        .iter()
        .map(|batch| evolve::conform(batch, schema))
        .collect()
}

async fn evolving(
    table: &mut DeltaTable,
    name: &str,
    batches: &[RecordBatch],
    evolution: Evolution,
    mode: WriteMode,
    env: &CommitEnv,
) -> Result<Shaped> {
    let schema = StructType::try_from_arrow(evolution.target.as_ref()).map_err(|e| {
        LakeError::generic(
            name,
            format!("evolved schema not representable in Delta: {e}"),
        )
    })?;
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
    let metadata = snapshot
        .metadata()
        .clone()
        .with_schema(&schema)
        .map_err(|e| LakeError::generic(name, format!("evolved metadata: {e}")))?;
    let mut shaped = Shaped {
        batches: conform_all(batches, &evolution.target)?,
        schema: Some(evolution.target.clone()),
        table_metadata: Some(metadata),
        rewritten: Vec::new(),
        removes: Vec::new(),
        summary: Some(evolution.summary()),
    };
    // An overwrite replaces every file anyway.
    if evolution.rewrites() && mode == WriteMode::Append {
        let head = env.heads.head(table, name).await?;
        let files: Vec<DataFile> = head.files().map(data_file).collect();
        for file in files {
            let mut rows = Vec::new();
            for batch in changes::read(table, name, &file, None, &env.recent).await? {
                let filled = changes::conform(&batch, &file, &evolution.target)?;
                rows.push(filled);
            }
            shaped.removes.push(file.path.clone());
            shaped.rewritten.push(rows);
        }
        tracing::info!(
            table = name,
            files = shaped.removes.len(),
            "a widened type rewrites the table's files in the evolving commit"
        );
    }
    Ok(shaped)
}

/// A live file as [`changes::read`] takes it.
fn data_file(file: &crate::heads::LiveFile) -> DataFile {
    DataFile {
        path: file.path().to_string(),
        partition_values: file.partition_values().clone(),
        rows: file.rows(),
        offer: None,
    }
}
