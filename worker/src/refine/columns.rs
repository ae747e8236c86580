//! Decoded rows (one [`Cell`] per column, already checked against the declared types by
//! the decoder) into Arrow columns, appended straight into a builder per column.
//!
//! Text is copied once, from the payload into the builder. Columns of nested types
//! (structs when not flattened, lists) still go through arrow-json, which knows their
//! shapes.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, TimeUnit};
use arrow::error::ArrowError;
use serde_json::{Map, Value};

use super::decode::Cell;
use crate::Result;

/// A builder for one column.
enum Column {
    Utf8(StringBuilder),
    Int64(Int64Builder),
    Int32(Int32Builder),
    UInt32(UInt32Builder),
    Float64(Float64Builder),
    Float32(Float32Builder),
    Boolean(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Date32(Date32Builder),
    /// Bytes, appended from their base64 text.
    Binary(BinaryBuilder),
    /// Exact decimals of this precision and scale, appended from their text.
    Decimal(Decimal128Builder, u8, u8),
    /// Nested: the values, decoded by arrow-json at the end.
    Nested(Field, Vec<Map<String, Value>>),
}

fn mistyped(field: &Field, cell: &Cell) -> ArrowError {
    ArrowError::JsonError(format!(
        "column {}: {cell:?} is not a {}",
        field.name(),
        field.data_type()
    ))
}

impl Column {
    fn new(field: &Field, rows: usize) -> Self {
        match field.data_type() {
            DataType::Utf8 => Column::Utf8(StringBuilder::with_capacity(rows, rows * 16)),
            DataType::Int64 => Column::Int64(Int64Builder::with_capacity(rows)),
            DataType::Int32 => Column::Int32(Int32Builder::with_capacity(rows)),
            DataType::UInt32 => Column::UInt32(UInt32Builder::with_capacity(rows)),
            DataType::Float64 => Column::Float64(Float64Builder::with_capacity(rows)),
            DataType::Float32 => Column::Float32(Float32Builder::with_capacity(rows)),
            DataType::Boolean => Column::Boolean(BooleanBuilder::with_capacity(rows)),
            DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                Column::Timestamp(TimestampMicrosecondBuilder::with_capacity(rows), tz.clone())
            }
            DataType::Date32 => Column::Date32(Date32Builder::with_capacity(rows)),
            DataType::Binary => Column::Binary(BinaryBuilder::with_capacity(rows, rows * 16)),
            DataType::Decimal128(precision, scale) if *scale >= 0 => Column::Decimal(
                Decimal128Builder::with_capacity(rows)
                    .with_precision_and_scale(*precision, *scale)
                    .unwrap_or_default(),
                *precision,
                *scale as u8,
            ),
            _ => Column::Nested(field.clone(), Vec::with_capacity(rows)),
        }
    }

    fn append(&mut self, field: &Field, cell: Cell) -> Result<(), ArrowError> {
        let small = |v: i64, cell: &Cell| i32::try_from(v).map_err(|_| mistyped(field, cell));
        match (self, cell) {
            (Column::Nested(_, values), cell) => {
                let mut row = Map::with_capacity(1);
                row.insert(field.name().clone(), cell.into_value());
                values.push(row);
            }
            (Column::Utf8(b), Cell::Null) => b.append_null(),
            (Column::Int64(b), Cell::Null) => b.append_null(),
            (Column::Int32(b), Cell::Null) => b.append_null(),
            (Column::UInt32(b), Cell::Null) => b.append_null(),
            (Column::Float64(b), Cell::Null) => b.append_null(),
            (Column::Float32(b), Cell::Null) => b.append_null(),
            (Column::Boolean(b), Cell::Null) => b.append_null(),
            (Column::Timestamp(b, _), Cell::Null) => b.append_null(),
            (Column::Date32(b), Cell::Null) => b.append_null(),
            (Column::Decimal(b, _, _), Cell::Null) => b.append_null(),
            (Column::Binary(b), Cell::Null) => b.append_null(),
            (Column::Binary(b), Cell::Text(text)) => match super::decode::base64_bytes(&text) {
                Some(bytes) => b.append_value(bytes),
                None => return Err(mistyped(field, &Cell::Text(text))),
            },
            (Column::Decimal(b, precision, scale), Cell::Text(text)) => {
                match super::decode::parse_decimal(&text, *precision, *scale) {
                    Some(value) => b.append_value(value),
                    None => return Err(mistyped(field, &Cell::Text(text))),
                }
            }
            (Column::Utf8(b), Cell::Text(s)) => b.append_value(s),
            (Column::Int64(b), Cell::Long(v)) => b.append_value(v),
            (Column::Timestamp(b, _), Cell::Long(v)) => b.append_value(v),
            (Column::Int32(b), cell @ Cell::Long(v)) => b.append_value(small(v, &cell)?),
            (Column::Date32(b), cell @ Cell::Long(v)) => b.append_value(small(v, &cell)?),
            (Column::UInt32(b), cell @ Cell::Long(v)) => {
                b.append_value(u32::try_from(v).map_err(|_| mistyped(field, &cell))?)
            }
            (Column::Float64(b), Cell::Double(v)) => b.append_value(v),
            (Column::Float64(b), Cell::Long(v)) => b.append_value(v as f64),
            (Column::Float32(b), Cell::Double(v)) => b.append_value(v as f32),
            (Column::Float32(b), Cell::Long(v)) => b.append_value(v as f32),
            (Column::Boolean(b), Cell::Bool(v)) => b.append_value(v),
            (_, cell) => return Err(mistyped(field, &cell)),
        }
        Ok(())
    }

    fn finish(self) -> Result<ArrayRef> {
        Ok(match self {
            Column::Utf8(mut b) => Arc::new(b.finish()),
            Column::Int64(mut b) => Arc::new(b.finish()),
            Column::Int32(mut b) => Arc::new(b.finish()),
            Column::UInt32(mut b) => Arc::new(b.finish()),
            Column::Float64(mut b) => Arc::new(b.finish()),
            Column::Float32(mut b) => Arc::new(b.finish()),
            Column::Boolean(mut b) => Arc::new(b.finish()),
            Column::Timestamp(mut b, tz) => Arc::new(b.finish().with_timezone_opt(tz)),
            Column::Date32(mut b) => Arc::new(b.finish()),
            Column::Decimal(mut b, _, _) => Arc::new(b.finish()),
            Column::Binary(mut b) => Arc::new(b.finish()),
            Column::Nested(field, values) => {
                let schema = Arc::new(Schema::new(vec![field]));
                let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
                    .with_batch_size(values.len().max(1))
                    .build_decoder()?;
                decoder.serialize(&values)?;
                let batch = decoder
                    .flush()?
                    .unwrap_or_else(|| RecordBatch::new_empty(schema));
                Arc::clone(batch.column(0))
            }
        })
    }
}

/// Builders for `fields`, filled one row of cells at a time.
pub struct Columns<'f> {
    fields: &'f [FieldRef],
    columns: Vec<Column>,
}

impl<'f> Columns<'f> {
    /// Empty builders for about `rows` rows of `fields`.
    pub fn new(fields: &'f [FieldRef], rows: usize) -> Self {
        Self {
            fields,
            columns: fields.iter().map(|f| Column::new(f, rows)).collect(),
        }
    }

    /// Appends one row (`row[j]` is the value of field `j`), leaving `row` empty.
    pub fn push(&mut self, row: &mut Vec<Cell>) -> Result<()> {
        for ((field, column), cell) in self.fields.iter().zip(&mut self.columns).zip(row.drain(..))
        {
            column.append(field, cell)?;
        }
        Ok(())
    }

    /// One array per field.
    pub fn finish(self) -> Result<Vec<ArrayRef>> {
        self.columns.into_iter().map(Column::finish).collect()
    }
}

/// Bronze's `headers` (a JSON object of header name to text, or NULL) as a map column of
/// type `kind` (string keys and values): what silver's `_headers` holds.
pub(super) fn headers_map(headers: &ArrayRef, kind: &DataType) -> Result<ArrayRef> {
    use arrow::array::{Array, AsArray, MapBuilder, MapFieldNames};
    let text = arrow::compute::cast(headers, &DataType::Utf8)?;
    let text = text.as_string::<i32>();
    let names = MapFieldNames {
        entry: "key_value".into(),
        key: "key".into(),
        value: "value".into(),
    };
    let mut builder = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new());
    for row in 0..text.len() {
        let parsed = text
            .is_valid(row)
            .then(|| serde_json::from_str::<Map<String, Value>>(text.value(row)).ok())
            .flatten();
        let Some(object) = parsed else {
            builder.append(false)?;
            continue;
        };
        for (name, value) in object {
            builder.keys().append_value(name);
            match value {
                Value::String(v) => builder.values().append_value(v),
                Value::Null => builder.values().append_null(),
                other => builder.values().append_value(other.to_string()),
            }
        }
        builder.append(true)?;
    }
    let map: ArrayRef = Arc::new(builder.finish());
    if map.data_type() == kind {
        return Ok(map);
    }
    Ok(arrow::compute::cast(&map, kind)?)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};

    use super::*;

    #[test]
    fn builds_each_type_and_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("t", crate::tasks::schemas::timestamp_type(), true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("element", DataType::Utf8, true))),
                true,
            ),
        ]));
        let row = |json: &str| -> Vec<Cell<'static>> {
            let object: Map<String, Value> = serde_json::from_str(json).unwrap();
            schema
                .fields()
                .iter()
                .map(|f| Cell::from_value(object.get(f.name()).cloned().unwrap_or(Value::Null)))
                .collect()
        };
        let to_arrays = |fields: &[FieldRef], rows: Vec<Vec<Cell>>| -> Result<Vec<ArrayRef>> {
            let mut columns = Columns::new(fields, rows.len());
            for mut row in rows {
                columns.push(&mut row)?;
            }
            columns.finish()
        };
        let rows = vec![
            row(r#"{"s":"a","n":1,"f":2,"t":5,"tags":["x","y"]}"#),
            row(r#"{"s":null}"#),
        ];
        let arrays = to_arrays(schema.fields(), rows).unwrap();
        let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column(0).as_string::<i32>().value(0), "a");
        assert!(batch.column(0).is_null(1));
        assert_eq!(batch.column(1).as_primitive::<Int64Type>().value(0), 1);
        assert_eq!(
            batch
                .column(2)
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(0),
            2.0
        );
        assert_eq!(
            batch
                .column(3)
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            5
        );
        assert_eq!(
            batch.column(3).data_type(),
            &crate::tasks::schemas::timestamp_type()
        );
        assert_eq!(batch.column(4).as_list::<i32>().value(0).len(), 2);
        assert!(batch.column(4).is_null(1));
        assert!(to_arrays(schema.fields(), vec![row(r#"{"n":"seven"}"#)]).is_err());
    }
}
