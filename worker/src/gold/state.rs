//! Per-group aggregate state held in memory by an incremental gold task.
//!
//! Mergeable partials (`__g*, __s*`) are kept as Arrow batches, one row per group after
//! each merge; `count(DISTINCT x)` keeps, per group, the set of `x` values seen (in Arrow's
//! row format), so counting stays exact however the rows arrive.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};

use crate::Result;

/// Values in Arrow's row format.
type Rows = HashSet<Box<[u8]>, ahash::RandomState>;

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

    /// Adds the distinct `(__g*, __x)` pairs of set `k`; null `x` values are not counted.
    pub fn add_distinct(&mut self, k: usize, pairs: &[RecordBatch]) -> Result<()> {
        for batch in pairs {
            let x = batch.column(self.groups);
            let set = &mut self.distinct[k];
            let values = match &mut set.values {
                Some(converter) => converter,
                slot => slot.insert(RowConverter::new(vec![SortField::new(
                    x.data_type().clone(),
                )])?),
            };
            let values = values.convert_columns(std::slice::from_ref(x))?;
            let keys = self
                .keys
                .keys(&batch.columns()[..self.groups], batch.num_rows())?;
            for (row, key) in keys.into_iter().enumerate() {
                if x.is_null(row) {
                    continue;
                }
                set.groups
                    .entry(key)
                    .or_default()
                    .insert(values.row(row).as_ref().into());
            }
        }
        Ok(())
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
                let keys = self
                    .keys
                    .keys(&batch.columns()[..self.groups], batch.num_rows())?;
                for set in &self.distinct {
                    let counts: Int64Array = keys
                        .iter()
                        .map(|key| Some(set.groups.get(key).map_or(0, |s| s.len() as i64)))
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
            .map(HashSet::len)
            .sum()
    }
}
