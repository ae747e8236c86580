//! Per-group aggregate state held in memory by an incremental gold task.
//!
//! Mergeable partials (`__g*, __s*`) are kept as Arrow batches, one row per group after
//! each merge; `count(DISTINCT x)` keeps, per group, the `x` values seen (in Arrow's row
//! format) with the number of rows holding each, so counting stays exact however the rows
//! arrive, and a value leaves the set when its last row is retracted.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};

use crate::Result;

/// Values in Arrow's row format, with the number of rows holding each.
type Rows = HashMap<Box<[u8]>, i64, ahash::RandomState>;

/// Where each group's state row is: its batch and its row in it, by group key.
pub type GroupIndex = HashMap<Box<[u8]>, (usize, usize)>;

/// The values of `x` seen per group, for one `count(DISTINCT x)`.
#[derive(Default)]
struct DistinctSet {
    groups: HashMap<Box<[u8]>, Rows, ahash::RandomState>,
    values: Option<RowConverter>,
}

/// Group keys in Arrow's row format; the empty key when the query has no `GROUP BY`.
struct GroupKeys {
    converter: Option<RowConverter>,
}

impl GroupKeys {
    fn new(fields: &[Arc<Field>]) -> Result<Self> {
        let converter = if fields.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                fields
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )?)
        };
        Ok(Self { converter })
    }

    /// The keys of `columns`' rows, converted once and borrowed per row ([`Self::key`]);
    /// `None` when there is no `GROUP BY` (every row has the empty key).
    fn rows(&self, columns: &[ArrayRef]) -> Result<Option<arrow::row::Rows>> {
        match &self.converter {
            None => Ok(None),
            Some(converter) => Ok(Some(converter.convert_columns(columns)?)),
        }
    }

    /// Row `row`'s key in `rows` (from [`Self::rows`]).
    fn key(rows: &Option<arrow::row::Rows>, row: usize) -> &[u8] {
        rows.as_ref().map_or(&[], |rows| rows.row(row).data())
    }

    /// One key per row of `columns`.
    fn keys(&self, columns: &[ArrayRef], rows: usize) -> Result<Vec<Box<[u8]>>> {
        match &self.converter {
            None => Ok(vec![Box::default(); rows]),
            Some(converter) => {
                let converted = converter.convert_columns(columns)?;
                Ok(converted.iter().map(|r| r.as_ref().into()).collect())
            }
        }
    }
}

/// State of every group seen so far.
pub struct GroupState {
    schema: SchemaRef,
    groups: usize,
    rows: Vec<RecordBatch>,
    keys: GroupKeys,
    distinct: Vec<DistinctSet>,
}

impl GroupState {
    /// Empty state with columns shaped like `partial` (the output of a partial plan) and
    /// `distinct_sets` sets.
    pub fn new(partial: &Schema, groups: usize, distinct_sets: usize) -> Result<Self> {
        let schema = Self::schema_of(partial);
        let keys = GroupKeys::new(&schema.fields()[..groups])?;
        Ok(Self {
            schema,
            groups,
            rows: Vec::new(),
            keys,
            distinct: (0..distinct_sets).map(|_| DistinctSet::default()).collect(),
        })
    }

    /// The schema of the state of a partial plan with output `partial`: the same columns,
    /// all nullable.
    pub fn schema_of(partial: &Schema) -> SchemaRef {
        let fields: Vec<Arc<Field>> = partial
            .fields()
            .iter()
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// The schema of [`Self::rows`].
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The state rows: one per group after [`Self::replace`], more before.
    pub fn rows(&self) -> &[RecordBatch] {
        &self.rows
    }

    /// Number of state rows.
    pub fn len(&self) -> usize {
        self.rows.iter().map(RecordBatch::num_rows).sum()
    }

    /// Whether no group has been seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches shaped as the state (same columns, types may carry other nullability).
    fn conform(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        batches
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| {
                Ok(RecordBatch::try_new(
                    self.schema.clone(),
                    b.columns().to_vec(),
                )?)
            })
            .collect()
    }

    /// Adds unmerged rows (a partial plan's output).
    pub fn extend(&mut self, partial: Vec<RecordBatch>) -> Result<()> {
        let partial = self.conform(partial)?;
        self.rows.extend(partial);
        Ok(())
    }

    /// Replaces the rows with their merge.
    pub fn replace(&mut self, merged: Vec<RecordBatch>) -> Result<()> {
        self.rows = self.conform(merged)?;
        Ok(())
    }

    /// Adds (`sign` 1) or takes out (`sign` -1) the distinct `(__g*, __x, __n)` pairs of set
    /// `k`, each standing for `__n` rows; null `x` values are not counted.
    pub fn add_distinct(&mut self, k: usize, pairs: &[RecordBatch], sign: i64) -> Result<()> {
        for batch in pairs {
            let x = batch.column(self.groups);
            let rows = arrow::compute::cast(batch.column(self.groups + 1), &DataType::Int64)?;
            let rows = rows.as_primitive::<Int64Type>();
            let set = &mut self.distinct[k];
            let values = match &mut set.values {
                Some(converter) => converter,
                slot => slot.insert(RowConverter::new(vec![SortField::new(
                    x.data_type().clone(),
                )])?),
            };
            let values = values.convert_columns(std::slice::from_ref(x))?;
            let keys = self.keys.rows(&batch.columns()[..self.groups])?;
            // Keys and values are looked up borrowed from the converted rows and copied
            // only when new: most pairs of a fold hit a group, and many a value, already
            // held (a box per row was 4% of the pipeline's CPU).
            for row in 0..batch.num_rows() {
                if x.is_null(row) {
                    continue;
                }
                let delta = sign * rows.value(row);
                let key = GroupKeys::key(&keys, row);
                if !set.groups.contains_key(key) {
                    set.groups.insert(key.into(), Rows::default());
                }
                let Some(group) = set.groups.get_mut(key) else {
                    continue;
                };
                let value = values.row(row);
                let value = value.data();
                match group.get_mut(value) {
                    Some(held) => {
                        *held += delta;
                        if *held <= 0 {
                            group.remove(value);
                        }
                    }
                    // A value not held that is taken out (or counted for no rows) stays
                    // out.
                    None if delta > 0 => {
                        group.insert(value.into(), delta);
                    }
                    None => {}
                }
            }
        }
        for set in &mut self.distinct {
            set.groups.retain(|_, values| !values.is_empty());
        }
        Ok(())
    }

    /// Drops the groups whose row count (state column `__s<rows_state>`) is zero: every
    /// row of theirs was retracted. A query without `GROUP BY` keeps its one group.
    pub fn drop_empty(&mut self, rows_state: usize) -> Result<()> {
        if self.groups == 0 {
            return Ok(());
        }
        let mut kept = Vec::with_capacity(self.rows.len());
        for batch in &self.rows {
            let counts =
                arrow::compute::cast(batch.column(self.groups + rows_state), &DataType::Int64)?;
            let counts = counts.as_primitive::<Int64Type>();
            let live: arrow::array::BooleanArray =
                counts.iter().map(|n| Some(n.unwrap_or(0) > 0)).collect();
            if live.true_count() == batch.num_rows() {
                kept.push(batch.clone());
            } else if live.true_count() > 0 {
                kept.push(arrow::compute::filter_record_batch(batch, &live)?);
            }
        }
        self.rows = kept;
        Ok(())
    }

    /// Where each group's row is, by key (valid while the state has one row per group).
    pub fn index(&self) -> Result<GroupIndex> {
        let mut index = HashMap::new();
        for (b, batch) in self.rows.iter().enumerate() {
            let keys = self
                .keys
                .keys(&batch.columns()[..self.groups], batch.num_rows())?;
            for (row, key) in keys.into_iter().enumerate() {
                index.insert(key, (b, row));
            }
        }
        Ok(index)
    }

    /// The keys of the rows of `batch`, shaped as the state (group keys first).
    pub fn keys_of(&self, batch: &RecordBatch) -> Result<Vec<Box<[u8]>>> {
        self.keys
            .keys(&batch.columns()[..self.groups], batch.num_rows())
    }

    /// The rows with one `__d<k>` column per distinct set appended: the size of the set of
    /// each row's group.
    pub fn finished(&self) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let mut fields: Vec<Arc<Field>> = self.schema.fields().iter().cloned().collect();
        fields.extend((0..self.distinct.len()).map(|k| {
            Arc::new(Field::new(
                super::plan::distinct_name(k),
                DataType::Int64,
                true,
            ))
        }));
        let schema = Arc::new(Schema::new(fields));
        let mut out = Vec::with_capacity(self.rows.len());
        for batch in &self.rows {
            let mut columns = batch.columns().to_vec();
            if !self.distinct.is_empty() {
                let keys = self.keys.rows(&batch.columns()[..self.groups])?;
                for set in &self.distinct {
                    let counts: Int64Array = (0..batch.num_rows())
                        .map(|row| {
                            let key = GroupKeys::key(&keys, row);
                            Some(set.groups.get(key).map_or(0, |s| s.len() as i64))
                        })
                        .collect();
                    columns.push(Arc::new(counts));
                }
            }
            out.push(RecordBatch::try_new(schema.clone(), columns)?);
        }
        Ok((schema, out))
    }

    /// Distinct values held over all sets (for logs and memory accounting).
    pub fn distinct_values(&self) -> usize {
        self.distinct
            .iter()
            .flat_map(|s| s.groups.values())
            .map(HashMap::len)
            .sum()
    }
}
