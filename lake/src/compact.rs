//! Compaction: small files bin-packed into larger ones in a maintenance commit.
//!
//! A compaction is a [`rewrite`](crate::commit::rewrite) with `dataChange = false`: the
//! same rows in fewer files, which readers of new data (refine, incremental gold) skip. It
//! takes the commit lock like every other commit, so it never races a streaming writer's
//! log write and works on arbitrated stores too; appends that land while it reads and
//! writes are untouched (it removes only the files it read). If another rewrite took one
//! of its files meanwhile (a delete), it writes nothing and plans again.

use std::collections::BTreeMap;

use deltalake::DeltaTable;
use deltalake::protocol::DeltaOperation;

use crate::changes::{self, DataFile};
use crate::commit::{CommitEnv, Rewrite, RewriteOutcome, rewrite};
use crate::log::{arrow_schema, refresh};
use crate::{LakeError, Result};

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Compaction {
    /// The table version of the compaction commit, if one was made.
    pub version: Option<i64>,
    /// Small files replaced.
    pub files_removed: u64,
    /// Files written in their place.
    pub files_added: u64,
}

/// When and how to compact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactOptions {
    /// Files smaller than this are small; bins are filled up to it.
    pub target_file_bytes: u64,
    /// Compact only when the table has at least this many small files (at least 2).
    pub min_small_files: usize,
    /// Write each bin's rows in Z-order over these columns (see [`crate::zorder`]).
    pub zorder_by: Vec<String>,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            target_file_bytes: 128 * 1024 * 1024,
            min_small_files: 2,
            zorder_by: Vec::new(),
        }
    }
}

/// How many times a compaction plans again after another rewrite took its files.
const PLANS: usize = 3;

/// Small files of one table, grouped into bins of one partition each (see [`plan`]).
#[derive(Debug, Default)]
pub struct Plan {
    /// Each bin becomes one file.
    pub bins: Vec<Vec<DataFile>>,
    /// Small files in the table (compacted or not).
    pub small_files: usize,
}

/// Rewrites the table's small files into larger ones in one commit (see the module docs),
/// when it has at least `options.min_small_files` of them, in Z-order over
/// `options.zorder_by` if given.
pub async fn compact(
    table: &mut DeltaTable,
    name: &str,
    options: CompactOptions,
    env: &CommitEnv,
) -> Result<Compaction> {
    for _ in 0..PLANS {
        refresh(table, name).await?;
        let plan = plan(table, name, &options, env).await?;
        if plan.bins.is_empty() {
            return Ok(Compaction::default());
        }
        let schema = arrow_schema(table, name)?;
        let mut groups = Vec::with_capacity(plan.bins.len());
        let mut removes = Vec::new();
        for bin in &plan.bins {
            let mut rows = Vec::new();
            for file in bin {
                for batch in changes::read(table, name, file, None, &env.recent).await? {
                    rows.push(changes::conform(&batch, file, &schema)?);
                }
                removes.push(file.path.clone());
            }
            if options.zorder_by.is_empty() {
                groups.push(rows);
            } else {
                groups.push(vec![crate::zorder::sort(&rows, &options.zorder_by, name)?]);
            }
        }
        let operation = DeltaOperation::Optimize {
            predicate: None,
            target_size: options.target_file_bytes as i64,
        };
        let files_removed = removes.len() as u64;
        let outcome = rewrite(
            table,
            name,
            Rewrite {
                removes,
                groups,
                readds: Vec::new(),
                changes: Vec::new(),
                operation,
                data_change: false,
                txns: Vec::new(),
                metadata: Default::default(),
                table_metadata: None,
            },
            env,
        )
        .await?;
        match outcome {
            RewriteOutcome::Committed {
                version,
                files_added,
            } => {
                tracing::info!(
                    table = name,
                    version,
                    files_removed,
                    files_added,
                    "compacted"
                );
                return Ok(Compaction {
                    version: Some(version),
                    files_removed,
                    files_added: files_added as u64,
                });
            }
            RewriteOutcome::Superseded { path } => {
                tracing::info!(table = name, %path, "compaction superseded by another rewrite; planning again");
            }
            RewriteOutcome::AlreadyCommitted => unreachable!("a compaction moves no txn"),
        }
    }
    Err(LakeError::CommitConflict {
        table: name.to_string(),
        message: format!("other rewrites took the files of {PLANS} compaction plans in a row"),
    })
}

/// The bins a compaction of `table` (as its head stands) would write: files smaller than
/// the target, without deletion vectors, grouped by partition and packed in path order
/// (oldest first for the writers' names) until a bin reaches the target. Bins of one file
/// are left alone.
pub async fn plan(
    table: &mut DeltaTable,
    name: &str,
    options: &CompactOptions,
    env: &CommitEnv,
) -> Result<Plan> {
    let head = env.heads.head(table, name).await?;
    let mut partitions: BTreeMap<Vec<(String, Option<String>)>, Vec<DataFile>> = BTreeMap::new();
    let mut small_files = 0;
    let mut sizes = std::collections::HashMap::new();
    for file in head.files() {
        if file.size() as u64 >= options.target_file_bytes || file.has_deletion_vector() {
            continue;
        }
        small_files += 1;
        let mut key: Vec<_> = file
            .partition_values()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        key.sort();
        sizes.insert(file.path().to_string(), file.size() as u64);
        partitions.entry(key).or_default().push(DataFile {
            path: file.path().to_string(),
            partition_values: file.partition_values().clone(),
            rows: file.rows(),
            offer: None,
        });
    }
    let mut plan = Plan {
        bins: Vec::new(),
        small_files,
    };
    if small_files < options.min_small_files.max(2) {
        return Ok(plan);
    }
    for (_, mut files) in partitions {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut bin: Vec<DataFile> = Vec::new();
        let mut bytes = 0;
        for file in files {
            let size = sizes[&file.path];
            if !bin.is_empty() && bytes + size > options.target_file_bytes {
                if bin.len() > 1 {
                    plan.bins.push(std::mem::take(&mut bin));
                }
                bin.clear();
                bytes = 0;
            }
            bytes += size;
            bin.push(file);
        }
        if bin.len() > 1 {
            plan.bins.push(bin);
        }
    }
    Ok(plan)
}
