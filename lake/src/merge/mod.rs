//! Applying a change stream to a table by key (slowly changing dimension type 1): the
//! table holds the current row of each key, a change replaces it only if its sequence value
//! is greater than the stored row's, and a delete removes it.
//!
//! A merge is a [`rewrite`](crate::commit::rewrite): the files holding a changed key are
//! written again without its old row, the new rows are added, and everything goes in one
//! commit with the writer's txn (exactly once, under the commit lock, as appends). On a
//! table with the change data feed the commit also carries the rows inserted, updated
//! (pre- and post-image) and deleted ([`crate::change_data`]).
//!
//! Invariants:
//! * one row per key: a pass reduces its changes to the latest per key (greatest sequence
//!   value, the later delivery on a tie) before applying them;
//! * a late or repeated change never wins over a newer one, deleted keys included: every
//!   applied delete leaves a tombstone (key and sequence value) that the writer keeps in a
//!   table of its own, and an upsert must be newer than the key's tombstone too;
//! * replaying a pass after a crash gives the same table: a delete applies whenever the
//!   stored row is older, whether or not its tombstone was committed before the crash.
//!
//! Type 2 keeps every version of each key instead ([`history`]).
//!
//! [`KeyIndex`] is what the writer knows of the table between passes — each key's sequence
//! value and file — kept in step with the table's live files ([`KeyIndex::sync`]), so a
//! pass reads only the files it rewrites.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{filter_record_batch, take_record_batch};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use deltalake::DeltaTable;
use serde::Serialize;

use crate::change_data::{self, ChangeType};
use crate::changes::{self, DataFile};
use crate::recent_files::RecentFiles;
use crate::{LakeError, Result};

pub mod history;

/// Bronze position columns a tombstone keeps, when the changes have them.
const POSITION_COLUMNS: [&str; 3] = ["_topic", "_partition", "_offset"];

/// The columns a merge goes by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeColumns {
    /// The columns that identify a row.
    pub keys: Vec<String>,
    /// The column ordering a key's changes.
    pub sequence: String,
}

impl MergeColumns {
    /// The merge condition, as the log records it.
    pub fn describe(&self) -> String {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("target.{k} = source.{k}"))
            .collect();
        format!(
            "{} (latest by {}, older changes ignored)",
            keys.join(" AND "),
            self.sequence
        )
    }
}

/// A stored row: its sequence value (row-encoded) and the file holding it.
#[derive(Debug, Clone)]
struct Stored {
    sequence: Box<[u8]>,
    file: Arc<str>,
}

/// A version of a key in a history table: its start value (row-encoded) and its file.
type Version = (Box<[u8]>, Arc<str>);

/// What the writer knows of a merged table: each key's sequence value and file, the keys
/// of each live file, and the tombstones of deleted keys.
pub struct KeyIndex {
    columns: MergeColumns,
    keys: RowConverter,
    sequences: RowConverter,
    rows: HashMap<Box<[u8]>, Stored>,
    files: HashMap<Arc<str>, Vec<Box<[u8]>>>,
    tombstones: HashMap<Box<[u8]>, Box<[u8]>>,
    /// Every delete of each key (its sequence values), for the history of SCD type 2.
    deletes: HashMap<Box<[u8]>, Vec<Box<[u8]>>>,
    /// History tables (SCD type 2): each key's versions, by start value, and their files.
    versions: Option<HashMap<Box<[u8]>, Vec<Version>>>,
}

impl KeyIndex {
    /// An empty index for a table of `schema`.
    pub fn new(schema: &Schema, columns: MergeColumns) -> Result<Self> {
        let field = |name: &str| {
            schema
                .field_with_name(name)
                .map(|f| SortField::new(f.data_type().clone()))
                .map_err(LakeError::from)
        };
        let keys = RowConverter::new(
            columns
                .keys
                .iter()
                .map(|k| field(k))
                .collect::<Result<Vec<_>>>()?,
        )?;
        let sequences = RowConverter::new(vec![field(&columns.sequence)?])?;
        Ok(Self {
            columns,
            keys,
            sequences,
            rows: HashMap::new(),
            files: HashMap::new(),
            tombstones: HashMap::new(),
            deletes: HashMap::new(),
            versions: None,
        })
    }

    /// The same keeping each key's versions and their files (a history table: a pass
    /// rewrites only the files holding the versions its changes affect).
    pub fn with_versions(mut self) -> Self {
        self.versions = Some(HashMap::new());
        self
    }

    /// The columns it goes by.
    pub fn columns(&self) -> &MergeColumns {
        &self.columns
    }

    /// Keys the table holds.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Deleted keys remembered.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    fn encode(&self, batch: &RecordBatch) -> Result<(Rows, Rows)> {
        let column = |name: &str| -> Result<ArrayRef> {
            batch.column_by_name(name).cloned().ok_or_else(|| {
                LakeError::generic("merge", format!("merge column `{name}` missing"))
            })
        };
        let keys = self
            .columns
            .keys
            .iter()
            .map(|k| column(k))
            .collect::<Result<Vec<_>>>()?;
        let keys = self.keys.convert_columns(&keys)?;
        let sequences = self
            .sequences
            .convert_columns(&[column(&self.columns.sequence)?])?;
        Ok((keys, sequences))
    }

    /// Brings the index to `live`, the table's files now: the keys of files it has not seen
    /// are read (key and sequence columns only), those of files gone are forgotten.
    pub async fn sync(
        &mut self,
        table: &DeltaTable,
        name: &str,
        live: &[DataFile],
        recent: &RecentFiles,
    ) -> Result<()> {
        let now: HashSet<&str> = live.iter().map(|f| f.path.as_str()).collect();
        let gone: Vec<Arc<str>> = self
            .files
            .keys()
            .filter(|f| !now.contains(&***f))
            .cloned()
            .collect();
        for file in gone {
            for key in self.files.remove(&file).unwrap_or_default() {
                if self.rows.get(&key).is_some_and(|s| s.file == file) {
                    self.rows.remove(&key);
                }
                if let Some(versions) = self.versions.as_mut().and_then(|v| v.get_mut(&key)) {
                    versions.retain(|(_, f)| *f != file);
                }
            }
        }
        let wanted: HashSet<String> = self
            .columns
            .keys
            .iter()
            .chain([&self.columns.sequence])
            .cloned()
            .collect();
        for file in live {
            if self.files.contains_key(file.path.as_str()) {
                continue;
            }
            let path: Arc<str> = file.path.as_str().into();
            let mut held = Vec::new();
            for batch in changes::read(table, name, file, Some(&wanted), recent).await? {
                let (keys, sequences) = self.encode(&batch)?;
                for i in 0..batch.num_rows() {
                    let key: Box<[u8]> = keys.row(i).data().into();
                    let sequence: Box<[u8]> = sequences.row(i).data().into();
                    if let Some(versions) = self.versions.as_mut() {
                        versions
                            .entry(key.clone())
                            .or_default()
                            .push((sequence.clone(), path.clone()));
                    }
                    let newer = self.rows.get(&key).is_none_or(|s| *s.sequence <= *sequence);
                    if newer {
                        self.rows.insert(
                            key.clone(),
                            Stored {
                                sequence,
                                file: path.clone(),
                            },
                        );
                    }
                    held.push(key);
                }
            }
            self.files.insert(path, held);
        }
        Ok(())
    }

    /// Remembers the deletes in `batch` (rows with the key and sequence columns).
    pub fn add_tombstones(&mut self, batch: &RecordBatch) -> Result<()> {
        let (keys, sequences) = self.encode(batch)?;
        for i in 0..batch.num_rows() {
            let key: Box<[u8]> = keys.row(i).data().into();
            let sequence: Box<[u8]> = sequences.row(i).data().into();
            let all = self.deletes.entry(key.clone()).or_default();
            if !all.contains(&sequence) {
                all.push(sequence.clone());
            }
            match self.tombstones.get(&key) {
                Some(known) if **known >= *sequence => {}
                _ => {
                    self.tombstones.insert(key, sequence);
                }
            }
        }
        Ok(())
    }

    /// The schema of the tombstones of a table whose changes have `schema`: the key and
    /// sequence columns, and the bronze position of the delete when the changes have it.
    pub fn tombstone_schema(&self, schema: &Schema) -> Result<SchemaRef> {
        let mut indices = Vec::new();
        for name in self.columns.keys.iter().chain([&self.columns.sequence]) {
            indices.push(schema.index_of(name)?);
        }
        indices.extend(
            POSITION_COLUMNS
                .iter()
                .filter_map(|c| schema.index_of(c).ok()),
        );
        Ok(Arc::new(schema.project(&indices)?))
    }
}

/// What a merge did to the table's rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MergeCounts {
    /// Keys new to the table.
    pub inserted: u64,
    /// Stored rows replaced by a newer change.
    pub updated: u64,
    /// Stored rows deleted.
    pub deleted: u64,
    /// Changes older than what the table holds for their key (late or repeated), and the
    /// older changes of a key within the pass.
    pub stale: u64,
    /// Deletes of keys the table does not hold (remembered, so that an older change
    /// delivered later does not bring the key back).
    pub deletes_of_absent_keys: u64,
}

/// One merge, planned: the files to take out, the rows of the file that replaces them,
/// the change data, and the tombstones of the deletes.
pub struct MergePlan {
    /// Files rewritten (each holds a changed key).
    pub removes: Vec<String>,
    /// Their rows that stay, and the new and updated rows, in groups each written to
    /// files of its own (a history table keeps closed versions apart from current ones).
    pub groups: Vec<Vec<RecordBatch>>,
    /// The change data feed's rows, tagged with `_change_type`.
    pub changes: Vec<RecordBatch>,
    /// The deletes applied (see [`KeyIndex::tombstone_schema`]).
    pub tombstones: RecordBatch,
    /// What the merge does.
    pub counts: MergeCounts,
}

/// What becomes of one key in a pass.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Insert,
    Update,
    Delete,
}

/// One pass to merge: the table as `index` describes it, and the changes.
pub struct Pass<'a> {
    /// The table.
    pub table: &'a DeltaTable,
    /// Its name.
    pub name: &'a str,
    /// What the writer knows of it (brought to its head by [`KeyIndex::sync`]).
    pub index: &'a KeyIndex,
    /// The changes, shaped as the table's schema, in delivery order.
    pub changes: &'a RecordBatch,
    /// Which of them are deletes.
    pub deletes: &'a BooleanArray,
    /// Rows of files this process wrote lately.
    pub recent: &'a RecentFiles,
}

/// Plans the merge of a pass: the current row per key, or every version when the index
/// keeps them ([`KeyIndex::with_versions`], SCD type 2, see [`history`]).
pub async fn plan(pass: Pass<'_>) -> Result<MergePlan> {
    if pass.index.versions.is_some() {
        history::plan(pass).await
    } else {
        current(pass).await
    }
}

/// [`plan`] for SCD type 1.
async fn current(pass: Pass<'_>) -> Result<MergePlan> {
    let Pass {
        table,
        name,
        index,
        changes,
        deletes,
        recent,
    } = pass;
    let schema = changes.schema();
    let (keys, sequences) = index.encode(changes)?;
    let mut counts = MergeCounts::default();
    // The latest change of each key: greatest sequence value, the later one on a tie.
    let mut latest: HashMap<&[u8], usize> = HashMap::with_capacity(changes.num_rows());
    for i in 0..changes.num_rows() {
        match latest.entry(keys.row(i).data()) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(i);
            }
            std::collections::hash_map::Entry::Occupied(mut slot) => {
                counts.stale += 1;
                if sequences.row(i) >= sequences.row(*slot.get()) {
                    slot.insert(i);
                }
            }
        }
    }
    let mut winners: Vec<(&[u8], usize)> = latest.into_iter().collect();
    winners.sort_unstable_by_key(|(_, i)| *i);
    let mut applied: Vec<(u32, Outcome)> = Vec::new();
    let mut tombstone_rows: Vec<u32> = Vec::new();
    // Stored keys this merge replaces or deletes, by file.
    let mut touched: BTreeMap<Arc<str>, HashMap<&[u8], Outcome>> = BTreeMap::new();
    for (key, i) in winners {
        let sequence = sequences.row(i);
        let sequence = sequence.as_ref();
        let delete = deletes.is_valid(i) && deletes.value(i);
        match index.rows.get(key) {
            Some(stored) if sequence > &*stored.sequence => {
                let outcome = if delete {
                    tombstone_rows.push(i as u32);
                    counts.deleted += 1;
                    Outcome::Delete
                } else {
                    counts.updated += 1;
                    Outcome::Update
                };
                applied.push((i as u32, outcome));
                touched
                    .entry(stored.file.clone())
                    .or_default()
                    .insert(key, outcome);
            }
            Some(_) => counts.stale += 1,
            None => {
                let newer = index.tombstones.get(key).is_none_or(|t| sequence > &**t);
                if !newer {
                    counts.stale += 1;
                } else if delete {
                    tombstone_rows.push(i as u32);
                    counts.deletes_of_absent_keys += 1;
                } else {
                    counts.inserted += 1;
                    applied.push((i as u32, Outcome::Insert));
                }
            }
        }
    }
    let mut rows = Vec::new();
    let mut change_rows = Vec::new();
    let mut removes = Vec::new();
    for (file, outcomes) in &touched {
        removes.push(file.to_string());
        let data_file = DataFile {
            path: file.to_string(),
            partition_values: HashMap::new(),
            rows: None,
            offer: None,
        };
        for batch in changes::read(table, name, &data_file, None, recent).await? {
            let batch = changes::conform(&batch, &data_file, &schema)?;
            let (stored_keys, _) = index.encode(&batch)?;
            let outcome: Vec<Option<Outcome>> = (0..batch.num_rows())
                .map(|r| outcomes.get(stored_keys.row(r).data()).copied())
                .collect();
            let keep = BooleanArray::from_iter(outcome.iter().map(|o| Some(o.is_none())));
            rows.push(filter_record_batch(&batch, &keep)?);
            for (change, kind) in [
                (Outcome::Update, ChangeType::UpdatePreimage),
                (Outcome::Delete, ChangeType::Delete),
            ] {
                let mask =
                    BooleanArray::from_iter(outcome.iter().map(|o| Some(*o == Some(change))));
                let old = filter_record_batch(&batch, &mask)?;
                if old.num_rows() > 0 {
                    change_rows.push(change_data::tagged(&old, kind)?);
                }
            }
        }
    }
    let upserts: Vec<u32> = applied
        .iter()
        .filter(|(_, o)| *o != Outcome::Delete)
        .map(|(i, _)| *i)
        .collect();
    if !upserts.is_empty() {
        rows.push(take_record_batch(changes, &UInt32Array::from(upserts))?);
    }
    for (outcome, kind) in [
        (Outcome::Update, ChangeType::UpdatePostimage),
        (Outcome::Insert, ChangeType::Insert),
    ] {
        let picked: Vec<u32> = applied
            .iter()
            .filter(|(_, o)| *o == outcome)
            .map(|(i, _)| *i)
            .collect();
        if !picked.is_empty() {
            let new = take_record_batch(changes, &UInt32Array::from(picked))?;
            change_rows.push(change_data::tagged(&new, kind)?);
        }
    }
    let tombstone_schema = index.tombstone_schema(&schema)?;
    let tombstones = take_record_batch(changes, &UInt32Array::from(tombstone_rows))?;
    let indices = tombstone_schema
        .fields()
        .iter()
        .map(|f| schema.index_of(f.name()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let tombstones = tombstones.project(&indices)?;
    rows.retain(|b| b.num_rows() > 0);
    Ok(MergePlan {
        removes,
        groups: if rows.is_empty() {
            Vec::new()
        } else {
            vec![rows]
        },
        changes: change_rows,
        tombstones,
        counts,
    })
}
