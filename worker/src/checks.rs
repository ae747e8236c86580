//! Table checks (`checks:` in the spec): uniqueness of key columns, the fraction of nulls
//! per column, and numeric ranges, evaluated on the rows a pass commits — silver: the
//! pass's new rows; gold: the whole refreshed table, so gold's figures are exact for the
//! table. Each outcome is recorded with the commit (in its quality record), and the failing
//! ones are reported with the task's status, where `smelter status`, `/tables` and
//! `/metrics` show them. A check never stops or slows the pipeline: it reports.
//!
//! A check naming a column the rows lack (a gold query that does not produce it) fails,
//! naming the column, rather than passing silently.

use std::collections::HashSet;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use arrow::row::{RowConverter, SortField};
use serde::Serialize;
use smelter_common::spec::ChecksSpec;

/// The outcome of one check on one pass's rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckOutcome {
    /// What was checked: `unique(event_id)`, `max_null_fraction(user_id)`, `range(price)`.
    pub check: String,
    /// Whether the rows passed.
    pub ok: bool,
    /// Rows (or, for `unique`, repeated keys) that broke it.
    pub violations: u64,
    /// Figures behind the outcome, for people.
    pub detail: String,
}

impl CheckOutcome {
    fn new(check: String, violations: u64, detail: String) -> Self {
        Self {
            check,
            ok: violations == 0,
            violations,
            detail,
        }
    }

    fn missing(check: String, column: &str) -> Self {
        Self {
            check,
            ok: false,
            violations: 0,
            detail: format!("the table has no column `{column}`"),
        }
    }

    /// `check: detail`, as a task reports a failing check.
    pub fn summary(&self) -> String {
        format!("{}: {}", self.check, self.detail)
    }
}

/// Evaluates every row check of `spec` on `batches` (all of one schema).
pub fn evaluate(spec: &ChecksSpec, batches: &[RecordBatch]) -> Vec<CheckOutcome> {
    let Some(schema) = batches.first().map(RecordBatch::schema) else {
        return Vec::new();
    };
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut out = Vec::new();
    if !spec.unique.is_empty() {
        let check = format!("unique({})", spec.unique.join(", "));
        match spec.unique.iter().find(|c| schema.index_of(c).is_err()) {
            Some(column) => out.push(CheckOutcome::missing(check, column)),
            None => out.push(unique(check, &spec.unique, batches, rows)),
        }
    }
    for (column, most) in &spec.max_null_fraction {
        let check = format!("max_null_fraction({column})");
        let Ok(index) = schema.index_of(column) else {
            out.push(CheckOutcome::missing(check, column));
            continue;
        };
        let nulls: usize = batches.iter().map(|b| b.column(index).null_count()).sum();
        let fraction = if rows == 0 {
            0.0
        } else {
            nulls as f64 / rows as f64
        };
        let over = fraction > *most;
        out.push(CheckOutcome::new(
            check,
            if over { nulls as u64 } else { 0 },
            format!(
                "{nulls} nulls in {rows} rows ({:.4}, at most {most})",
                fraction
            ),
        ));
    }
    for (column, range) in &spec.range {
        let check = format!("range({column})");
        let Ok(index) = schema.index_of(column) else {
            out.push(CheckOutcome::missing(check, column));
            continue;
        };
        if !schema.field(index).data_type().is_numeric() {
            out.push(CheckOutcome {
                check,
                ok: false,
                violations: 0,
                detail: format!("`{column}` is not numeric"),
            });
            continue;
        }
        let mut outside = 0u64;
        let (mut least, mut greatest) = (f64::INFINITY, f64::NEG_INFINITY);
        for batch in batches {
            let Ok(values) = cast(batch.column(index), &DataType::Float64) else {
                continue;
            };
            for value in values.as_primitive::<Float64Type>().iter().flatten() {
                if range.min.is_some_and(|min| value < min)
                    || range.max.is_some_and(|max| value > max)
                {
                    outside += 1;
                    least = least.min(value);
                    greatest = greatest.max(value);
                }
            }
        }
        let bounds = format!(
            "[{}, {}]",
            range.min.map_or("-inf".into(), |v| v.to_string()),
            range.max.map_or("inf".into(), |v| v.to_string())
        );
        let detail = if outside == 0 {
            format!("all values within {bounds}")
        } else {
            format!("{outside} values outside {bounds}, from {least} to {greatest}")
        };
        out.push(CheckOutcome::new(check, outside, detail));
    }
    out
}

/// Keys seen more than once among the rows (each repeat counted once per extra row).
fn unique(check: String, columns: &[String], batches: &[RecordBatch], rows: usize) -> CheckOutcome {
    let schema = batches[0].schema();
    let indices: Vec<usize> = columns
        .iter()
        .filter_map(|c| schema.index_of(c).ok())
        .collect();
    let fields = indices
        .iter()
        .map(|i| SortField::new(schema.field(*i).data_type().clone()))
        .collect();
    let converter = match RowConverter::new(fields) {
        Ok(converter) => converter,
        Err(e) => return CheckOutcome::new(check, 0, format!("keys not comparable: {e}")),
    };
    // Every batch converted first, so that the set holds rows borrowed from them (an owned
    // copy per row was most of the check's cost).
    let mut converted = Vec::with_capacity(batches.len());
    for batch in batches {
        let keys: Vec<_> = indices.iter().map(|i| batch.column(*i).clone()).collect();
        let Ok(rows) = converter.convert_columns(&keys) else {
            return CheckOutcome::new(check, 0, "keys not comparable".into());
        };
        converted.push(rows);
    }
    let mut seen = HashSet::with_capacity(rows);
    let mut repeats = 0u64;
    for row in converted.iter().flat_map(|rows| rows.iter()) {
        if !seen.insert(row) {
            repeats += 1;
        }
    }
    CheckOutcome::new(
        check,
        repeats,
        format!("{repeats} repeated keys among {rows} rows"),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use smelter_common::spec::RangeSpec;

    use super::*;

    fn batch(ids: Vec<&str>, users: Vec<Option<&str>>, quantity: Vec<Option<i64>>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("user", DataType::Utf8, true),
            Field::new("quantity", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(StringArray::from(users)),
                Arc::new(Int64Array::from(quantity)),
            ],
        )
        .unwrap()
    }

    fn spec() -> ChecksSpec {
        ChecksSpec {
            unique: vec!["id".into()],
            max_null_fraction: [("user".to_string(), 0.25)].into(),
            range: [(
                "quantity".to_string(),
                RangeSpec {
                    min: Some(1.0),
                    max: Some(5.0),
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn passing_rows_pass_every_check() {
        let rows = [
            batch(
                vec!["a", "b"],
                vec![Some("u1"), Some("u2")],
                vec![Some(1), None],
            ),
            batch(
                vec!["c", "d"],
                vec![None, Some("u3")],
                vec![Some(5), Some(2)],
            ),
        ];
        let outcomes = evaluate(&spec(), &rows);
        assert_eq!(outcomes.len(), 3);
        assert!(
            outcomes.iter().all(|o| o.ok && o.violations == 0),
            "{outcomes:?}"
        );
    }

    #[test]
    fn failures_count_what_broke_them_across_batches() {
        let rows = [
            batch(
                vec!["a", "b"],
                vec![None, Some("u2")],
                vec![Some(0), Some(9)],
            ),
            batch(
                vec!["a", "a"],
                vec![None, Some("u3")],
                vec![Some(3), Some(7)],
            ),
        ];
        let outcomes = evaluate(&spec(), &rows);
        let by = |name: &str| outcomes.iter().find(|o| o.check == name).unwrap().clone();
        let unique = by("unique(id)");
        assert_eq!((unique.ok, unique.violations), (false, 2));
        let nulls = by("max_null_fraction(user)");
        assert_eq!((nulls.ok, nulls.violations), (false, 2));
        assert!(
            nulls.detail.contains("2 nulls in 4 rows"),
            "{}",
            nulls.detail
        );
        let range = by("range(quantity)");
        assert_eq!((range.ok, range.violations), (false, 3));
        assert!(range.detail.contains("from 0 to 9"), "{}", range.detail);
        assert_eq!(
            range.summary(),
            format!("range(quantity): {}", range.detail)
        );
    }

    #[test]
    fn a_missing_or_non_numeric_column_fails_and_says_so() {
        let mut spec = spec();
        spec.unique = vec!["nope".into()];
        spec.range.insert(
            "user".into(),
            RangeSpec {
                min: Some(0.0),
                max: None,
            },
        );
        let rows = [batch(vec!["a"], vec![Some("x")], vec![Some(1)])];
        let outcomes = evaluate(&spec, &rows);
        let unique = outcomes.iter().find(|o| o.check == "unique(nope)").unwrap();
        assert!(!unique.ok && unique.detail.contains("no column `nope`"));
        let range = outcomes.iter().find(|o| o.check == "range(user)").unwrap();
        assert!(!range.ok, "{range:?}");
        assert_eq!(evaluate(&spec, &[]), Vec::new());
    }
}
