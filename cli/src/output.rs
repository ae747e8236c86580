//! Rendering of query results and status for humans (`table`) and programs (`json`, `csv`).

use arrow::record_batch::RecordBatch;
use clap::ValueEnum;

use crate::Result;

/// Output format of CLI commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Aligned text table.
    #[default]
    Table,
    /// JSON: an array of row objects for results, an object for status.
    Json,
    /// CSV with a header row.
    Csv,
}

/// Renders result batches in `format`.
pub fn render_batches(batches: &[RecordBatch], format: Format) -> Result<String> {
    match format {
        Format::Table => Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string()),
        Format::Json => {
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            let bytes = writer.into_inner();
            Ok(if bytes.is_empty() {
                "[]".to_string()
            } else {
                String::from_utf8_lossy(&bytes).into_owned()
            })
        }
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(Vec::new());
            for batch in batches {
                writer.write(batch)?;
            }
            Ok(String::from_utf8_lossy(&writer.into_inner()).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![Some(1), None])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn formats() {
        let json: serde_json::Value =
            serde_json::from_str(&render_batches(&[batch()], Format::Json).unwrap()).unwrap();
        assert_eq!(json, serde_json::json!([{"k": "a", "n": 1}, {"k": "b"}]));
        assert_eq!(
            render_batches(&[batch()], Format::Csv).unwrap(),
            "k,n\na,1\nb,\n"
        );
        assert!(
            render_batches(&[batch()], Format::Table)
                .unwrap()
                .contains("| a | 1 |")
        );
        assert_eq!(render_batches(&[], Format::Json).unwrap(), "[]");
    }
}
