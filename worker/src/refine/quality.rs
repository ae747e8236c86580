//! Column figures for a refine pass's quality record: per declared column of the rows a
//! pass commits to silver, how many are null and the least and greatest value. Recorded
//! with the pass's counts in the silver commit's `commitInfo` (see
//! `smelter_lake::commit::QUALITY_KEY`), so any Delta reader sees the trend of each column.
//!
//! Only top-level scalar columns the spec declared are measured: Smelter's own columns
//! (`_topic`, `_offset`, `_rescued_data`, ...) start with `_`, and nested values have no
//! order. Values are rendered as text (a timestamp as `2026-11-01T10:00:00`), which keeps
//! the record readable and typed columns comparable by their readers.

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;

/// `{column: {"nulls": n, "rows": r, "min": "...", "max": "..."}}` over `batches`.
pub fn column_figures(batches: &[RecordBatch]) -> serde_json::Value {
    let Some(schema) = batches.first().map(RecordBatch::schema) else {
        return serde_json::json!({});
    };
    let mut out = serde_json::Map::new();
    for (index, field) in schema.fields().iter().enumerate() {
        if field.name().starts_with('_') || !measured(field.data_type()) {
            continue;
        }
        let (mut rows, mut nulls) = (0usize, 0usize);
        let min = MinAccumulator::try_new(field.data_type());
        let max = MaxAccumulator::try_new(field.data_type());
        let (Ok(mut min), Ok(mut max)) = (min, max) else {
            continue;
        };
        let mut ordered = true;
        for batch in batches {
            let column = batch.column(index);
            rows += column.len();
            nulls += column.null_count();
            ordered &= min.update_batch(std::slice::from_ref(column)).is_ok()
                && max.update_batch(std::slice::from_ref(column)).is_ok();
        }
        let mut figures = serde_json::json!({ "rows": rows, "nulls": nulls });
        if ordered {
            for (key, value) in [("min", min.evaluate()), ("max", max.evaluate())] {
                if let Ok(value) = value
                    && !value.is_null()
                {
                    figures[key] = value.to_string().into();
                }
            }
        }
        out.insert(field.name().clone(), figures);
    }
    out.into()
}

/// Whether a column of this type is measured: scalars with an order.
fn measured(data_type: &DataType) -> bool {
    data_type.is_primitive()
        || matches!(
            data_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
        )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn nulls_min_and_max_per_declared_column_over_every_batch() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("price", DataType::Float64, true),
            Field::new("_offset", DataType::Int64, false),
        ]));
        let batch = |users: Vec<Option<&str>>, prices: Vec<Option<f64>>| {
            let n = users.len() as i64;
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(users)),
                    Arc::new(Float64Array::from(prices)),
                    Arc::new(Int64Array::from_iter_values(0..n)),
                ],
            )
            .unwrap()
        };
        let figures = column_figures(&[
            batch(vec![Some("u2"), None], vec![Some(3.5), None]),
            batch(vec![Some("u1")], vec![None]),
        ]);
        assert_eq!(
            figures,
            serde_json::json!({
                "user_id": { "rows": 3, "nulls": 1, "min": "u1", "max": "u2" },
                "price": { "rows": 3, "nulls": 2, "min": "3.5", "max": "3.5" },
            })
        );
        let all_null = column_figures(&[batch(vec![None], vec![None])]);
        assert_eq!(
            all_null["price"],
            serde_json::json!({ "rows": 1, "nulls": 1 })
        );
        assert_eq!(column_figures(&[]), serde_json::json!({}));
    }
}
