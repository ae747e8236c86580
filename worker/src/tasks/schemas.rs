//! Arrow schemas of the tables Smelter writes: bronze, silver (derived from the declared
//! parse schema), quarantine. Delta stores timestamps as microseconds UTC, so every
//! timestamp here is `Timestamp(Microsecond, "UTC")`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use smelter_common::spec::{FieldType, PayloadFormat, Primitive, RecordField, TableSpec};

use crate::Result;

/// The timestamp type of every Smelter table.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Schema of every bronze table.
pub fn bronze() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("key", DataType::Utf8, true),
        Field::new("timestamp", timestamp_type(), true),
        Field::new("headers", DataType::Utf8, true),
        Field::new("payload", DataType::Binary, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("ingested_at", timestamp_type(), false),
        Field::new("ingest_date", DataType::Date32, false),
    ]))
}

/// Schema of every quarantine table.
pub fn quarantine() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("rule", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("payload", DataType::Binary, true),
        Field::new("ingested_at", timestamp_type(), false),
        Field::new("quarantined_at", timestamp_type(), false),
    ]))
}

pub(crate) fn arrow_type(ty: &FieldType) -> DataType {
    match ty {
        FieldType::Primitive(p) => match p {
            Primitive::String => DataType::Utf8,
            Primitive::Int => DataType::Int32,
            Primitive::Long => DataType::Int64,
            Primitive::Float => DataType::Float32,
            Primitive::Double => DataType::Float64,
            Primitive::Boolean => DataType::Boolean,
            Primitive::Timestamp => timestamp_type(),
            Primitive::TimestampNtz => DataType::Timestamp(TimeUnit::Microsecond, None),
            Primitive::Date => DataType::Date32,
            Primitive::Binary => DataType::Binary,
            Primitive::Decimal { precision, scale } => {
                DataType::Decimal128(*precision, *scale as i8)
            }
        },
        FieldType::Struct(inner) => DataType::Struct(Fields::from(
            inner
                .fields
                .iter()
                .map(|(n, t)| Field::new(n, arrow_type(t), true))
                .collect::<Vec<_>>(),
        )),
        // As Delta's readers spell a map (`key_value` entries of `key` and `value`).
        FieldType::Map(inner) => DataType::Map(
            Arc::new(Field::new(
                "key_value",
                DataType::Struct(Fields::from(vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", arrow_type(inner), true),
                ])),
                false,
            )),
            false,
        ),
        FieldType::List(inner) => {
            DataType::List(Arc::new(Field::new("element", arrow_type(inner), true)))
        }
    }
}

/// The declared type an Arrow type of a silver table holds (the inverse of the mapping
/// above), `None` for a type no declared field makes.
pub fn field_type(ty: &DataType) -> Option<FieldType> {
    let primitive = |p| Some(FieldType::Primitive(p));
    match ty {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => primitive(Primitive::String),
        DataType::Int32 => primitive(Primitive::Int),
        DataType::Int64 => primitive(Primitive::Long),
        DataType::Float32 => primitive(Primitive::Float),
        DataType::Float64 => primitive(Primitive::Double),
        DataType::Boolean => primitive(Primitive::Boolean),
        DataType::Timestamp(_, None) => primitive(Primitive::TimestampNtz),
        DataType::Timestamp(_, Some(_)) => primitive(Primitive::Timestamp),
        DataType::Date32 => primitive(Primitive::Date),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            primitive(Primitive::Binary)
        }
        DataType::Decimal128(precision, scale) => primitive(Primitive::Decimal {
            precision: *precision,
            scale: u8::try_from(*scale).ok()?,
        }),
        DataType::Struct(fields) => {
            let mut schema = smelter_common::spec::SchemaSpec::default();
            for field in fields {
                schema
                    .fields
                    .insert(field.name().clone(), field_type(field.data_type())?);
            }
            Some(FieldType::Struct(schema))
        }
        DataType::List(item) | DataType::LargeList(item) => {
            Some(FieldType::List(Box::new(field_type(item.data_type())?)))
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                Some(FieldType::Map(Box::new(field_type(kv[1].data_type())?)))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The declared schema a silver table that is not flattened holds: its columns before
/// `_rescued_data`, as declared types. How an inferred schema is read back from the table
/// it is recorded in.
pub fn recorded_schema(table: &Schema) -> smelter_common::spec::SchemaSpec {
    let mut schema = smelter_common::spec::SchemaSpec::default();
    for field in table.fields() {
        if field.name() == "_rescued_data" {
            break;
        }
        if let Some(ty) = field_type(field.data_type()) {
            schema.fields.insert(field.name().clone(), ty);
        }
    }
    schema
}

/// Schema of a silver table: declared columns (flattened if asked), then metadata columns.
pub fn silver(table: &TableSpec) -> SchemaRef {
    let mut fields: Vec<Field> = Vec::new();
    {
        let declared = table.declared_columns();
        fields.extend(
            declared
                .iter()
                .map(|(n, t)| Field::new(n, arrow_type(t), true)),
        );
    }
    fields.push(Field::new("_rescued_data", DataType::Utf8, true));
    if table
        .parse
        .as_ref()
        .is_some_and(|p| p.format == PayloadFormat::Debezium)
    {
        // The change event's operation, time, log position and source block (see `refine::envelope`).
        fields.push(Field::new("_op", DataType::Utf8, true));
        fields.push(Field::new("_ts_ms", DataType::Int64, true));
        fields.push(Field::new("_lsn", DataType::Int64, true));
        fields.push(Field::new("_source", DataType::Utf8, true));
    }
    for field in table.parse.iter().flat_map(|p| &p.metadata) {
        let kind = match field {
            RecordField::Key => DataType::Utf8,
            RecordField::Headers => arrow_type(&FieldType::Map(Box::new(FieldType::Primitive(
                Primitive::String,
            )))),
            RecordField::Timestamp => timestamp_type(),
        };
        fields.push(Field::new(field.column(), kind, true));
    }
    fields.push(Field::new("_topic", DataType::Utf8, false));
    fields.push(Field::new("_partition", DataType::Int32, false));
    fields.push(Field::new("_offset", DataType::Int64, false));
    fields.push(Field::new("_ingested_at", timestamp_type(), false));
    Arc::new(Schema::new(fields))
}

/// Maps a query result type to one Delta can store (no views, no unsigned, µs timestamps).
fn delta_type(ty: &DataType) -> DataType {
    match ty {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::UInt8 | DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 | DataType::Float32 => DataType::Float64,
        DataType::Timestamp(_, _) => timestamp_type(),
        DataType::Date64 => DataType::Date32,
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) => DataType::List(
            Arc::new(Field::new("element", delta_type(f.data_type()), true)),
        ),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| Field::new(f.name(), delta_type(f.data_type()), f.is_nullable()))
                .collect::<Vec<_>>()
                .into(),
        ),
        other => other.clone(),
    }
}

/// The Delta-storable version of a query result schema.
pub fn delta_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), delta_type(f.data_type()), f.is_nullable()))
            .collect::<Vec<_>>(),
    ))
}

/// Casts a batch to [`delta_schema`] of its schema.
pub fn to_delta(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                cast(column.as_ref(), field.data_type())
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(RecordBatch::try_new(Arc::clone(target), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silver_schema_flattens_and_adds_metadata() {
        let spec = smelter_common::spec::PipelineSpec::parse(
            include_str!("../../../examples/clickstream.yaml"),
            "demo",
        )
        .unwrap();
        let schema = silver(&spec.tables["silver.events"]);
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(&names[..4], &["event_id", "event_type", "ts", "session_id"]);
        assert!(
            names.contains(&"product_price")
                && names.ends_with(&["_partition", "_offset", "_ingested_at"])
        );
        assert_eq!(
            schema.field_with_name("ts").unwrap().data_type(),
            &timestamp_type()
        );
        let nested = delta_schema(&Schema::new(vec![Field::new(
            "x",
            DataType::Utf8View,
            true,
        )]));
        assert_eq!(nested.field(0).data_type(), &DataType::Utf8);
        // Every declared type reads back from the table's Arrow type.
        let declared = spec.tables["silver.events"].parse.as_ref().unwrap();
        let declared = declared.schema.declared().unwrap();
        let mut unflattened = spec.tables["silver.events"].clone();
        unflattened.flatten = false;
        assert_eq!(&recorded_schema(&silver(&unflattened)), declared);
        let map = FieldType::Map(Box::new(FieldType::List(Box::new(FieldType::Primitive(
            Primitive::Decimal {
                precision: 12,
                scale: 2,
            },
        )))));
        assert_eq!(field_type(&arrow_type(&map)), Some(map));
        let _ = Array::len(&arrow::array::Int32Array::from(vec![1]));
    }
}
