//! The silver commit of a merged table (`merge:` in the spec): a refine pass's rows are
//! changes, applied by key with [`smelter_lake::merge`] in one `MERGE` commit that carries
//! the pass's txn, as an append would.
//!
//! Order of commits per pass: quarantine, then tombstones (`<table>_tombstones`, with its
//! own txn on the same bronze range), then silver. A crash between two of them replays the
//! range: the commits already made are skipped by their txns, and the merge — planned from
//! the table as it stands — gives the same rows (see the invariants of
//! [`smelter_lake::merge`]).

use std::collections::HashMap;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::concat_batches;
use deltalake::DeltaTable;
use deltalake::protocol::DeltaOperation;
use smelter_common::spec::{MergeSpec, PayloadFormat, TableSpec};
use smelter_lake::changes::DataFile;
use smelter_lake::commit::{Rewrite, RewriteOutcome};
use smelter_lake::delete::{RowSelector, SqlPredicate};
use smelter_lake::merge::{KeyIndex, MergeColumns, MergeCounts};
use smelter_lake::{AppId, CommitEnv, CommitOutcome, TxnUpdate, WriteMode, log};

use crate::Result;

/// How often a merge is planned again when a file it rewrites went away meanwhile (a
/// compaction or a delete under it).
const PLANS: usize = 5;

/// What a refine task keeps to merge into one silver table.
pub struct Merger {
    table: String,
    index: KeyIndex,
    deletes: Option<SqlPredicate>,
    tombstones: DeltaTable,
    tombstones_name: String,
    tombstones_app_id: AppId,
    /// The bronze version the tombstones table has consumed.
    pub tombstoned_to: Option<i64>,
    change_data_feed: bool,
    /// Keep every version of a key (SCD type 2) rather than the current one.
    history: bool,
}

/// One pass's merge, as the caller commits it.
pub struct MergePass<'a> {
    /// The pass's silver rows (the changes, in delivery order).
    pub rows: Vec<RecordBatch>,
    /// The silver txn: app id, the version it held, and the bronze version of this pass.
    pub txn: TxnUpdate,
    /// The commit's `commitInfo` entries (the pass's quality figures).
    pub metadata: &'a HashMap<String, serde_json::Value>,
}

impl Merger {
    /// The schema of the tombstones of a table of `silver_schema` merged by `merge`.
    pub fn tombstone_schema(
        merge: &MergeSpec,
        silver_schema: &arrow::datatypes::SchemaRef,
    ) -> Result<arrow::datatypes::SchemaRef> {
        Ok(KeyIndex::new(silver_schema, columns(merge))?.tombstone_schema(silver_schema)?)
    }

    /// Reads what silver and its `tombstones` table (opened by the caller, with
    /// [`Self::tombstone_schema`]) hold per key.
    pub async fn open(
        commits: &CommitEnv,
        tombstones: DeltaTable,
        (table, spec, merge): (&str, &TableSpec, &MergeSpec),
        silver: &mut DeltaTable,
        silver_schema: &arrow::datatypes::SchemaRef,
    ) -> Result<Self> {
        let mut index = KeyIndex::new(silver_schema, columns(merge))?;
        if merge.scd == 2 {
            index = index.with_versions();
        }
        let tombstones_name = TableSpec::tombstones_name(table);
        let format = spec
            .parse
            .as_ref()
            .map_or(PayloadFormat::Json, |p| p.format);
        let deletes = merge
            .delete_predicate(format)
            .map(|sql| SqlPredicate::new(&sql, silver_schema, table))
            .transpose()?;
        let tombstones_app_id = AppId::upstream(&tombstones_name, &spec.from);
        let change_data_feed =
            log::table_property(silver, smelter_lake::describe::CHANGE_DATA_FEED_PROPERTY)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if spec.change_data_feed && !change_data_feed {
            tracing::warn!(
                table,
                "change_data_feed is on in the spec, but the table was created without it; its merges record no change data"
            );
        }
        let mut merger = Self {
            table: table.to_string(),
            index,
            deletes,
            tombstones,
            tombstones_name,
            tombstones_app_id,
            tombstoned_to: None,
            change_data_feed,
            history: merge.scd == 2,
        };
        merger.reload(commits, silver).await?;
        Ok(merger)
    }

    /// Reads everything again from the tables (after a commit showed this task behind).
    pub async fn reload(&mut self, commits: &CommitEnv, silver: &mut DeltaTable) -> Result<()> {
        let heads = &commits.heads;
        let (head, at) = heads
            .txns(
                &mut self.tombstones,
                &self.tombstones_name,
                std::slice::from_ref(&self.tombstones_app_id),
            )
            .await?;
        self.tombstoned_to = at[0];
        let silver_schema = log::arrow_schema(silver, &self.table)?;
        let schema = self.index.tombstone_schema(&silver_schema)?;
        let mut fresh = KeyIndex::new(&silver_schema, self.columns())?;
        if self.history {
            fresh = fresh.with_versions();
        }
        for file in head.files() {
            let file = data_file(file);
            for batch in smelter_lake::changes::read(
                &self.tombstones,
                &self.tombstones_name,
                &file,
                None,
                &commits.recent,
            )
            .await?
            {
                fresh.add_tombstones(&smelter_lake::changes::conform(&batch, &file, &schema)?)?;
            }
        }
        self.index = fresh;
        let live = live_files(commits, silver, &self.table).await?;
        self.index
            .sync(silver, &self.table, &live, &commits.recent)
            .await?;
        tracing::info!(table = %self.table, keys = self.index.len(), tombstones = self.index.tombstones(), "merge index loaded");
        Ok(())
    }

    fn columns(&self) -> MergeColumns {
        self.index.columns().clone()
    }

    /// Merges one pass into silver: tombstones first, then the `MERGE` commit. What the
    /// merge did comes back with the outcome (zero counts when it was already in).
    pub async fn commit(
        &mut self,
        commits: &CommitEnv,
        silver: &mut DeltaTable,
        pass: MergePass<'_>,
    ) -> Result<(CommitOutcome, MergeCounts)> {
        let schema = log::arrow_schema(silver, &self.table)?;
        let rows: Vec<RecordBatch> = pass
            .rows
            .iter()
            .map(|b| smelter_lake::changes::conform(b, &no_file(), &schema))
            .collect::<smelter_lake::Result<_>>()?;
        let changes = concat_batches(&schema, &rows)?;
        let deletes = match &self.deletes {
            Some(predicate) => predicate.select(&changes)?,
            None => BooleanArray::from(vec![false; changes.num_rows()]),
        };
        let to = pass.txn.version;
        for _ in 0..PLANS {
            let live = live_files(commits, silver, &self.table).await?;
            self.index
                .sync(silver, &self.table, &live, &commits.recent)
                .await?;
            let plan = smelter_lake::merge::plan(smelter_lake::merge::Pass {
                table: silver,
                name: &self.table,
                index: &self.index,
                changes: &changes,
                deletes: &deletes,
                recent: &commits.recent,
            })
            .await?;
            if plan.tombstones.num_rows() > 0 && self.tombstoned_to.is_none_or(|t| t < to) {
                let txns = vec![TxnUpdate::new(
                    &self.tombstones_app_id,
                    self.tombstoned_to,
                    to,
                )];
                match smelter_lake::commit(
                    &mut self.tombstones,
                    &self.tombstones_name,
                    vec![plan.tombstones.clone()],
                    WriteMode::Append,
                    &[],
                    txns,
                    commits,
                )
                .await?
                {
                    CommitOutcome::Committed { .. } => {
                        self.tombstoned_to = Some(to);
                        self.index.add_tombstones(&plan.tombstones)?;
                    }
                    CommitOutcome::AlreadyCommitted => {
                        return Ok((CommitOutcome::AlreadyCommitted, MergeCounts::default()));
                    }
                }
            }
            let changes_file = if self.change_data_feed {
                smelter_lake::change_data::write(silver, &self.table, &plan.changes).await?
            } else {
                None
            };
            let mut metadata = pass.metadata.clone();
            metadata.insert(
                MERGE_KEY.to_string(),
                serde_json::to_value(&plan.counts).unwrap_or_default(),
            );
            let rewrite = Rewrite {
                removes: plan.removes,
                groups: plan.groups,
                copied: Vec::new(),
                readds: Vec::new(),
                changes: changes_file.into_iter().collect(),
                operation: DeltaOperation::Merge {
                    predicate: None,
                    merge_predicate: Some(self.index.columns().describe()),
                    matched_predicates: Vec::new(),
                    not_matched_predicates: Vec::new(),
                    not_matched_by_source_predicates: Vec::new(),
                },
                data_change: true,
                txns: vec![pass.txn.clone()],
                metadata,
                table_metadata: None,
            };
            match smelter_lake::commit::rewrite(silver, &self.table, rewrite, commits).await? {
                RewriteOutcome::Committed { version, .. } => {
                    return Ok((CommitOutcome::Committed { version }, plan.counts));
                }
                RewriteOutcome::AlreadyCommitted => {
                    return Ok((CommitOutcome::AlreadyCommitted, MergeCounts::default()));
                }
                RewriteOutcome::Superseded { path } => {
                    tracing::debug!(table = %self.table, path, "a file the merge rewrites went away; planning again");
                }
            }
        }
        Err(smelter_lake::LakeError::CommitConflict {
            table: self.table.clone(),
            message: format!("the files a merge rewrites changed under {PLANS} plans in a row"),
        }
        .into())
    }
}

fn columns(merge: &MergeSpec) -> MergeColumns {
    MergeColumns {
        keys: merge.keys.clone(),
        sequence: merge.sequence_by.clone(),
    }
}

/// The `commitInfo` key under which a merge records what it did ([`MergeCounts`]).
pub const MERGE_KEY: &str = "smelter.merge";

async fn live_files(
    commits: &CommitEnv,
    table: &mut DeltaTable,
    name: &str,
) -> Result<Vec<DataFile>> {
    let head = commits.heads.head(table, name).await?;
    Ok(head.files().map(data_file).collect())
}

fn data_file(file: &smelter_lake::heads::LiveFile) -> DataFile {
    DataFile {
        path: file.path().to_string(),
        partition_values: file.partition_values().clone(),
        rows: file.rows(),
        offer: None,
    }
}

fn no_file() -> DataFile {
    DataFile::default()
}
