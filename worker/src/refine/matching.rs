//! The raw records of silver rows, found by what they say rather than where they were:
//! `smelter delete --cascade --pipeline FILE` deletes a user's records from bronze and the
//! quarantine by refining each record's payload as silver's refine task would (its parse
//! section: format, schema, flattening, envelope) and evaluating the delete's predicate
//! over the silver columns that gives.
//!
//! Why not only the positions of the silver rows deleted: bronze also holds records that
//! never became those rows — a producer's re-sent copies (dedupe kept one), records a rule
//! quarantined (the quarantine keeps the payload, not the columns), and records ingested
//! but not yet refined when the delete ran. Selecting by content finds every one of them.
//! A payload that does not decode belongs to no row: it is never selected.

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use smelter_common::spec::TableSpec;
use smelter_lake::LakeError;
use smelter_lake::delete::{RowSelector, SqlPredicate};

use super::Refiner;
use crate::Result;

/// The records (rows with a `payload` column: bronze, quarantine) whose payload refines to
/// a silver row matching a predicate.
pub struct RecordsMatching {
    silver: String,
    refiner: Refiner,
    predicate: SqlPredicate,
    sql: String,
}

impl RecordsMatching {
    /// Records of silver table `silver` (declared by `spec` in `origin`) whose refined row
    /// matches `sql`; an error names what is wrong with the predicate (an unknown column,
    /// or one only silver's own commits fill, such as `_offset`).
    pub fn new(silver: &str, spec: &TableSpec, origin: &str, sql: &str) -> Result<Self> {
        // Framed records (Avro, JSON Schema) unframe with the registry's schemas, which a
        // selection (run while a delete plans, without I/O) cannot fetch: refused rather
        // than matching nothing.
        if let Some(parse) = spec.parse.as_ref().filter(|p| p.registry.is_some()) {
            let format = serde_json::to_value(parse.format).unwrap_or_default();
            return Err(crate::WorkerError::InvalidSpec {
                origin: origin.to_string(),
                field: format!("tables.{silver}.parse.registry"),
                message: format!(
                    "a delete cannot cascade into the records of a table whose `format: {}` \
                     records are framed with a schema registry's ids (they unframe with its \
                     schemas); delete from its bronze table by position instead",
                    format.as_str().unwrap_or_default()
                ),
            });
        }
        if spec.parse.as_ref().is_some_and(|p| p.schema.inferred()) {
            return Err(crate::WorkerError::InvalidSpec {
                origin: origin.to_string(),
                field: format!("tables.{silver}.parse.schema"),
                message: "a delete cannot cascade by content into the records of a table whose \
                          schema is inferred (its columns are the table's, not the spec's); \
                          delete from its bronze table by position instead"
                    .into(),
            });
        }
        let refiner = Refiner::new(silver, spec, origin)?;
        let predicate = SqlPredicate::new(sql, &refiner.decoded_schema(), silver)?;
        Ok(Self {
            silver: silver.to_string(),
            refiner,
            predicate,
            sql: sql.to_string(),
        })
    }
}

impl RowSelector for RecordsMatching {
    fn select(&self, batch: &RecordBatch) -> smelter_lake::Result<BooleanArray> {
        let invalid = |message: String| LakeError::Invalid {
            table: self.silver.clone(),
            message,
        };
        let payloads = batch
            .column_by_name("payload")
            .ok_or_else(|| invalid("the table has no payload column to refine".into()))?;
        let payloads = payloads
            .as_binary_opt::<i32>()
            .ok_or_else(|| invalid("payload is not a binary column".into()))?;
        let (decoded, rows) = self
            .refiner
            .decode_rows(payloads.iter())
            .map_err(|e| invalid(format!("refining payloads: {e}")))?;
        let hits = self.predicate.select(&decoded)?;
        let mut selected = vec![false; batch.num_rows()];
        for (decoded_row, &record) in rows.iter().enumerate() {
            if hits.is_valid(decoded_row) && hits.value(decoded_row) {
                selected[record] = true;
            }
        }
        Ok(BooleanArray::from(selected))
    }

    fn describe(&self) -> String {
        format!("payload refined as {} matches {}", self.silver, self.sql)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{BinaryArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn silver_spec() -> TableSpec {
        let yaml = r#"
pipeline: p
sources: { s: { generator: { partitions: 1 } } }
tables:
  bronze.events: { from: s }
  silver.events:
    from: bronze.events
    parse: { format: json, schema: { event_id: string, user: { id: string }, price: double } }
    flatten: true
"#;
        let spec = smelter_common::spec::PipelineSpec::parse(yaml, "test.yaml").unwrap();
        spec.tables["silver.events"].clone()
    }

    #[test]
    fn records_are_selected_by_their_refined_columns() {
        let matching = RecordsMatching::new(
            "silver.events",
            &silver_spec(),
            "test.yaml",
            "user_id IN ('u1', 'u3')",
        )
        .unwrap();
        let payloads: Vec<Option<&[u8]>> = vec![
            Some(br#"{"event_id":"a","user":{"id":"u1"},"price":1}"#),
            Some(br#"{"event_id":"b","user":{"id":"u2"},"price":1}"#),
            Some(b"{not json"),
            None,
            // A rule would quarantine it (negative price): it is still u3's record.
            Some(br#"{"event_id":"c","user":{"id":"u3"},"price":-5}"#),
            // Re-sent copy of a.
            Some(br#"{"event_id":"a","user":{"id":"u1"},"price":1}"#),
        ];
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("offset", DataType::Int64, false),
                Field::new("payload", DataType::Binary, true),
            ])),
            vec![
                Arc::new(Int64Array::from_iter_values(0..payloads.len() as i64)),
                Arc::new(BinaryArray::from(payloads)),
            ],
        )
        .unwrap();
        let selected = matching.select(&batch).unwrap();
        let picked: Vec<bool> = selected.iter().map(|v| v.unwrap()).collect();
        assert_eq!(picked, [true, false, false, false, true, true]);
    }

    #[test]
    fn framed_tables_refuse_a_cascade_naming_the_registry() {
        let yaml = r#"
pipeline: p
sources: { s: { generator: { partitions: 1 } } }
tables:
  bronze.events: { from: s }
  silver.events:
    from: bronze.events
    parse: { format: avro, registry: "http://127.0.0.1:9", schema: { event_id: string } }
"#;
        let spec = smelter_common::spec::PipelineSpec::parse(yaml, "test.yaml").unwrap();
        let error = RecordsMatching::new(
            "silver.events",
            &spec.tables["silver.events"],
            "test.yaml",
            "event_id = 'a'",
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(
            error.contains("tables.silver.events.parse.registry") && error.contains("avro"),
            "{error}"
        );
    }

    #[test]
    fn a_predicate_over_columns_refining_does_not_fill_is_refused() {
        let error = RecordsMatching::new("silver.events", &silver_spec(), "t.yaml", "_offset = 3")
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("_offset"), "{error}");
    }
}
