//! Slowly changing dimension type 2: the table keeps every version of each key, each row
//! valid from its change's sequence value (`__start_at`) until the next change of the key
//! (`__end_at`, NULL while it is the current one, `__current`). A delete closes the
//! version it ends and opens none.
//!
//! A key's history is a function of the set of its changes, whatever order they arrive
//! in: sorted by sequence value, each upsert is a version ending where the next change
//! (upsert or delete) begins. So a pass rebuilds the history of each key it touches from
//! the versions stored, the deletes remembered (the tombstones: a delete leaves no row of
//! its own) and the pass's changes — a late change lands in the middle of the history and
//! splits the version it falls in; a repeated one (same sequence value) changes nothing.
//! The change data feed says what moved: new versions are inserts, closed or shortened ones
//! an update's pre- and post-image.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array, new_null_array,
};
use arrow::compute::{filter_record_batch, interleave_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::{KeyIndex, MergeCounts, MergePlan, Pass};
use crate::change_data::{self, ChangeType};
use crate::changes::{self, DataFile};
use crate::{LakeError, Result};

/// The sequence value a version starts at.
pub const START_AT: &str = "__start_at";
/// The sequence value of the next change of the key (NULL: still current).
pub const END_AT: &str = "__end_at";
/// Whether the version is the key's current row.
pub const CURRENT: &str = "__current";

/// The history columns appended to `schema` (the changes' columns), typed as its
/// `sequence` column.
pub fn with_history_columns(schema: &Schema, sequence: &str) -> Result<SchemaRef> {
    let kind = schema.field_with_name(sequence)?.data_type().clone();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(START_AT, kind.clone(), true));
    fields.push(Field::new(END_AT, kind, true));
    fields.push(Field::new(CURRENT, DataType::Boolean, true));
    Ok(Arc::new(Schema::new(fields)))
}

/// Where one event of a key's history comes from.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    /// A version stored in the table: (stored batch, row). Ranked first among events of
    /// one sequence value: a repeated change keeps what is stored.
    Stored(usize, usize),
    /// A delete: remembered, or in this pass.
    Delete,
    /// An upsert of this pass: its row in the changes.
    New(usize),
}

/// One event of a key's history: its sequence value (row-encoded) and where it comes from.
type Event = (Box<[u8]>, Source);

/// Plans the merge of a pass (its changes shaped as the table's schema, history columns
/// NULL) into the history table its index describes.
pub(super) async fn plan(pass: Pass<'_>) -> Result<MergePlan> {
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
    // The pass's events per key.
    let mut touched: HashMap<Box<[u8]>, Vec<Event>> = HashMap::new();
    let mut tombstone_rows = Vec::new();
    for i in 0..changes.num_rows() {
        let key: Box<[u8]> = keys.row(i).data().into();
        let sequence: Box<[u8]> = sequences.row(i).data().into();
        let source = if deletes.is_valid(i) && deletes.value(i) {
            let known = index
                .deletes
                .get(&key)
                .is_some_and(|all| all.contains(&sequence));
            if !known {
                tombstone_rows.push(i as u32);
            }
            Source::Delete
        } else {
            Source::New(i)
        };
        touched.entry(key).or_default().push((sequence, source));
    }
    // Where each touched key's history can change: from its version that holds the
    // pass's earliest change on (None: from its first). Only the files holding those
    // versions are rewritten — for changes in order, the file of the current version.
    let mut anchors: HashMap<Box<[u8]>, Option<Box<[u8]>>> = HashMap::with_capacity(touched.len());
    let mut files: std::collections::BTreeSet<Arc<str>> = std::collections::BTreeSet::new();
    for (key, events) in &touched {
        let earliest = events.iter().map(|(s, _)| s).min();
        let versions = index
            .versions
            .as_ref()
            .map(|v| v.get(key).map(Vec::as_slice).unwrap_or_default());
        let anchor = match (versions, earliest) {
            (Some(versions), Some(earliest)) => bound(versions, index.deletes.get(key), earliest),
            _ => None,
        };
        match versions {
            Some(versions) => files.extend(
                versions
                    .iter()
                    .filter(|(start, _)| anchor.as_ref().is_none_or(|a| start >= a))
                    .map(|(_, file)| file.clone()),
            ),
            // No version index: every file holding the key.
            None => files.extend(
                index
                    .files
                    .iter()
                    .filter(|(_, held)| held.iter().any(|k| k == key))
                    .map(|(file, _)| file.clone()),
            ),
        }
        anchors.insert(key.clone(), anchor);
    }
    let removes: Vec<Arc<str>> = files.into_iter().collect();
    let mut stored = Vec::new();
    let mut kept = Vec::new();
    // Per touched key: its stored versions' end values (None: current), by (batch, row).
    let mut ends: HashMap<(usize, usize), Option<Box<[u8]>>> = HashMap::new();
    for file in &removes {
        let data_file = DataFile {
            path: file.to_string(),
            partition_values: HashMap::new(),
            rows: None,
            offer: None,
        };
        for batch in changes::read(table, name, &data_file, None, recent).await? {
            let batch = changes::conform(&batch, &data_file, &schema)?;
            let (stored_keys, stored_sequences) = index.encode(&batch)?;
            let end_column = batch.column_by_name(END_AT).cloned().ok_or_else(|| {
                LakeError::generic(name, format!("history column `{END_AT}` missing"))
            })?;
            let end_values = index
                .sequences
                .convert_columns(std::slice::from_ref(&end_column))?;
            let b = stored.len();
            let mut keep = Vec::with_capacity(batch.num_rows());
            for r in 0..batch.num_rows() {
                let key = stored_keys.row(r).data();
                let start = stored_sequences.row(r).data();
                let affected = anchors
                    .get(key)
                    .is_some_and(|anchor| anchor.as_deref().is_none_or(|a| start >= a));
                if let (true, Some(events)) = (affected, touched.get_mut(key)) {
                    events.push((start.into(), Source::Stored(b, r)));
                    let end = end_column
                        .is_valid(r)
                        .then(|| end_values.row(r).data().into());
                    ends.insert((b, r), end);
                }
                keep.push(!affected);
            }
            kept.push(filter_record_batch(&batch, &BooleanArray::from(keep))?);
            stored.push(batch);
        }
    }
    // Each touched key's history, rebuilt.
    let mut versions: Vec<(usize, usize)> = Vec::new();
    let mut version_ends: Vec<Option<Box<[u8]>>> = Vec::new();
    let mut preimages: Vec<(usize, usize)> = Vec::new();
    let mut postimages: Vec<usize> = Vec::new();
    let mut inserts: Vec<usize> = Vec::new();
    let changes_at = stored.len();
    for (key, mut events) in touched {
        let anchor = anchors.get(&key).cloned().flatten();
        for sequence in index.deletes.get(&key).into_iter().flatten() {
            if anchor.as_ref().is_none_or(|a| sequence >= a) {
                events.push((sequence.clone(), Source::Delete));
            }
        }
        events.sort();
        let before = events.len();
        events.dedup_by(|later, earlier| later.0 == earlier.0);
        counts.stale += (before - events.len()) as u64;
        for (i, (_, source)) in events.iter().enumerate() {
            let end = events.get(i + 1).map(|(s, _)| s.clone());
            match *source {
                Source::Delete => {}
                Source::Stored(b, r) => {
                    if ends.get(&(b, r)) != Some(&end) {
                        counts.updated += 1;
                        preimages.push((b, r));
                        postimages.push(versions.len());
                    }
                    versions.push((b, r));
                    version_ends.push(end);
                }
                Source::New(row) => {
                    counts.inserted += 1;
                    inserts.push(versions.len());
                    versions.push((changes_at, row));
                    version_ends.push(end);
                }
            }
        }
    }
    counts.deleted = tombstone_rows.len() as u64;
    let mut rows: Vec<RecordBatch> = kept.into_iter().filter(|b| b.num_rows() > 0).collect();
    let mut change_rows = Vec::new();
    if !versions.is_empty() {
        let mut sources: Vec<&RecordBatch> = stored.iter().collect();
        sources.push(changes);
        let new = interleave_record_batch(&sources, &versions)?;
        let new = with_history(new, index, &version_ends)?;
        for (picked, kind) in [
            (&postimages, ChangeType::UpdatePostimage),
            (&inserts, ChangeType::Insert),
        ] {
            if !picked.is_empty() {
                let indices = UInt32Array::from_iter_values(picked.iter().map(|i| *i as u32));
                change_rows.push(change_data::tagged(
                    &take_record_batch(&new, &indices)?,
                    kind,
                )?);
            }
        }
        rows.push(new);
    }
    if !preimages.is_empty() {
        let sources: Vec<&RecordBatch> = stored.iter().collect();
        let old = interleave_record_batch(&sources, &preimages)?;
        change_rows.push(change_data::tagged(&old, ChangeType::UpdatePreimage)?);
    }
    let tombstone_schema = index.tombstone_schema(&schema)?;
    let indices = tombstone_schema
        .fields()
        .iter()
        .map(|f| schema.index_of(f.name()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let tombstones =
        take_record_batch(changes, &UInt32Array::from(tombstone_rows))?.project(&indices)?;
    Ok(MergePlan {
        removes: removes.iter().map(|f| f.to_string()).collect(),
        groups: current_and_closed(&rows)?,
        changes: change_rows,
        tombstones,
        counts,
    })
}

/// Where a key's history can change when its earliest new change is `earliest`: from the
/// start of the stored version that holds it — unless that version ended (at the next
/// version or a delete) before it, when only what starts at `earliest` or later can. `None`:
/// from the key's first version (the change is older than all of them).
fn bound(
    versions: &[super::Version],
    deletes: Option<&Vec<Box<[u8]>>>,
    earliest: &[u8],
) -> Option<Box<[u8]>> {
    let start = versions
        .iter()
        .map(|(start, _)| start)
        .filter(|start| &***start <= earliest)
        .max()?;
    let next_start = versions.iter().map(|(s, _)| s).filter(|s| *s > start).min();
    let next_delete = deletes.into_iter().flatten().filter(|d| *d > start).min();
    let end = next_start.into_iter().chain(next_delete).min();
    match end {
        Some(end) if &**end <= earliest => Some(earliest.into()),
        _ => Some(start.clone()),
    }
}

/// `rows` in groups written to files of their own: the current versions, then the closed
/// ones by the order they closed, in groups of at most [`CLOSED_FILE_ROWS`]. Closed versions change only when a late
/// change lands inside them, so their files are seldom rewritten, while the current
/// versions' files are on each pass that changes one of their keys.
fn current_and_closed(rows: &[RecordBatch]) -> Result<Vec<Vec<RecordBatch>>> {
    let (mut current, mut closed) = (Vec::new(), Vec::new());
    for batch in rows.iter().filter(|b| b.num_rows() > 0) {
        let flags = batch
            .column_by_name(CURRENT)
            .ok_or_else(|| LakeError::generic("merge", format!("`{CURRENT}` missing")))?
            .as_boolean();
        // NULL (a row written before the flag existed) counts as current.
        let is_current = BooleanArray::from_iter(
            (0..flags.len()).map(|i| Some(flags.is_null(i) || flags.value(i))),
        );
        let now = filter_record_batch(batch, &is_current)?;
        let then = filter_record_batch(batch, &arrow::compute::not(&is_current)?)?;
        current.extend((now.num_rows() > 0).then_some(now));
        closed.extend((then.num_rows() > 0).then_some(then));
    }
    // Closed versions in the order they closed, in files of a bounded size: a late change
    // affects only versions that closed after it, which are in the last files; the files
    // of versions closed long ago are not rewritten again.
    let mut groups = vec![current];
    if let Some(first) = closed.first() {
        let closed = arrow::compute::concat_batches(&first.schema(), &closed)?;
        let order = arrow::compute::sort_to_indices(
            closed
                .column_by_name(END_AT)
                .ok_or_else(|| LakeError::generic("merge", format!("`{END_AT}` missing")))?,
            None,
            None,
        )?;
        let closed = take_record_batch(&closed, &order)?;
        let mut offset = 0;
        while offset < closed.num_rows() {
            let length = CLOSED_FILE_ROWS.min(closed.num_rows() - offset);
            groups.push(vec![closed.slice(offset, length)]);
            offset += length;
        }
    }
    groups.retain(|group| !group.is_empty());
    Ok(groups)
}

/// Most rows of closed versions written to one file.
const CLOSED_FILE_ROWS: usize = 50_000;

/// `batch` (versions) with its history columns set: `__start_at` its sequence value,
/// `__end_at` from `ends` (row-encoded sequence values; None: NULL), `__current` where
/// there is no end.
fn with_history(
    batch: RecordBatch,
    index: &KeyIndex,
    ends: &[Option<Box<[u8]>>],
) -> Result<RecordBatch> {
    let schema = batch.schema();
    let sequence = batch
        .column_by_name(&index.columns.sequence)
        .cloned()
        .ok_or_else(|| LakeError::generic("merge", "sequence column missing"))?;
    let kind = sequence.data_type().clone();
    let null: Box<[u8]> = index
        .sequences
        .convert_columns(&[new_null_array(&kind, 1)])?
        .row(0)
        .data()
        .into();
    let parser = index.sequences.parser();
    let encoded: Vec<&[u8]> = ends.iter().map(|e| e.as_deref().unwrap_or(&null)).collect();
    let end: ArrayRef = index
        .sequences
        .convert_rows(encoded.iter().map(|e| parser.parse(e)))?
        .remove(0);
    let current: ArrayRef = Arc::new(BooleanArray::from_iter(
        ends.iter().map(|e| Some(e.is_none())),
    ));
    let mut columns = batch.columns().to_vec();
    columns[schema.index_of(START_AT)?] = sequence;
    columns[schema.index_of(END_AT)?] = end;
    columns[schema.index_of(CURRENT)?] = current;
    Ok(RecordBatch::try_new(schema, columns)?)
}
