//! Z-ordering: the rows a compaction writes, sorted along a Z-order curve over a few
//! columns, so that each output file covers a narrow range of each of them and readers
//! skip files by their min/max statistics whichever of the columns they filter on.
//!
//! Each column's values are replaced by their rank among the rows (ties share a rank,
//! nulls last), scaled to 32 bits; the bits of the columns' ranks are interleaved, most
//! significant first, into one key, and rows are sorted by it. Ranks rather than raw
//! values make any sortable type work (strings, timestamps, numbers) and spread skewed
//! values over the whole curve. Up to four columns (a 128-bit key).

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{SortOptions, concat_batches, rank, take_record_batch};

use crate::{LakeError, Result};

/// Most columns a Z-order interleaves.
pub const MAX_COLUMNS: usize = 4;

/// `batches` as one batch whose rows are in Z-order over `columns`.
pub fn sort(batches: &[RecordBatch], columns: &[String], table: &str) -> Result<RecordBatch> {
    let invalid = |message: String| LakeError::Invalid {
        table: table.to_string(),
        message,
    };
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| invalid("nothing to Z-order".into()))?;
    let batch = concat_batches(&schema, batches)?;
    if columns.is_empty() || columns.len() > MAX_COLUMNS {
        return Err(invalid(format!(
            "zorder_by takes 1 to {MAX_COLUMNS} columns, not {}",
            columns.len()
        )));
    }
    let rows = batch.num_rows();
    let mut ranks = Vec::with_capacity(columns.len());
    for column in columns {
        let values = batch
            .column_by_name(column)
            .ok_or_else(|| invalid(format!("zorder_by: the table has no column {column}")))?;
        let options = SortOptions {
            descending: false,
            nulls_first: false,
        };
        let ranked = rank(values.as_ref(), Some(options))
            .map_err(|e| invalid(format!("zorder_by: column {column}: {e}")))?;
        let top = ranked.iter().copied().max().unwrap_or(1).max(1) as u64;
        // Scaled to the full 32 bits, so every column weighs the same on the curve.
        ranks.push(
            ranked
                .into_iter()
                .map(|r| ((r as u64 * u32::MAX as u64) / top) as u32)
                .collect::<Vec<u32>>(),
        );
    }
    let mut keyed: Vec<(u128, u32)> = (0..rows)
        .map(|row| {
            let mut key = 0u128;
            for bit in (0..32).rev() {
                for column in &ranks {
                    key = (key << 1) | ((column[row] >> bit) & 1) as u128;
                }
            }
            (key, row as u32)
        })
        .collect();
    keyed.sort_unstable();
    let order = UInt32Array::from_iter_values(keyed.into_iter().map(|(_, row)| row));
    Ok(take_record_batch(&batch, &order)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;

    /// On a grid of (x, y), the Z-order visits each 2x2 quadrant before the next: the first
    /// four rows are the four smallest points, whatever order the rows came in.
    #[test]
    fn rows_follow_the_curve_and_bad_columns_are_refused() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, false),
            Field::new("y", DataType::Utf8, false),
        ]));
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for x in (0..4).rev() {
            for y in ["a", "b", "c", "d"] {
                xs.push(x);
                ys.push(y);
            }
        }
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(xs)),
                Arc::new(StringArray::from(ys)),
            ],
        )
        .unwrap();
        let sorted = sort(std::slice::from_ref(&batch), &["x".into(), "y".into()], "t").unwrap();
        let x: Vec<i64> = sorted
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        let y: Vec<&str> = sorted
            .column(1)
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect();
        let first: Vec<(i64, &str)> = x.iter().copied().zip(y.iter().copied()).take(4).collect();
        assert_eq!(first, [(0, "a"), (0, "b"), (1, "a"), (1, "b")]);
        assert_eq!(sorted.num_rows(), 16);
        let error = sort(&[batch], &["nope".into()], "t").unwrap_err();
        assert!(error.to_string().contains("no column nope"), "{error}");
    }
}
