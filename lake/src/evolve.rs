//! Schema evolution: a writer whose rows are shaped differently from its table (the spec
//! declared a new column, a new nested field, or a wider type) evolves the table's schema
//! in the same commit as the first rows that need it (see [`crate::commit`]).
//!
//! [`plan`] merges the table's schema with the rows' schema:
//!
//! * a column (or nested struct field, or a field of a list's structs) the rows have and
//!   the table does not is **added**, nullable, after the table's own: the rows written
//!   before it read back as null;
//! * a column whose type the rows **widen** — `int` to `long`, `float` to `double`, a date
//!   to a timestamp — takes the wider type. Delta without its `typeWidening` feature (which
//!   the readers this project serves do not all read) has no way to say that old files
//!   hold the narrower type, so the commit that widens also rewrites every file the table
//!   holds, cast, with `dataChange = false` (the same rows, which readers of new data skip);
//! * a column the table has and the rows lack (the spec no longer declares it) stays in
//!   the table; the rows are written with it null;
//! * a rows' type narrower than the table's (a `long` column the spec now reads as `int`)
//!   is cast up to the table's type: no value is lost;
//! * anything else (a `long` column the rows hold as text, a struct the rows hold as a
//!   scalar) is [`Incompatible`]: retrying cannot help, and the writer stops and says which
//!   column. `smelter apply` refuses such specs before they reach a writer.
//!
//! Invariants: a table's schema only ever grows (columns are never dropped, types never
//! narrowed), so every version's files read under every later schema; an evolution lands
//! in exactly one commit, with the rows that needed it and their txns, or not at all.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, RecordBatch, RecordBatchOptions};
use arrow::array::{StructArray, new_null_array};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::{LakeError, Result};

/// What writing rows of one schema into a table of another takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The shapes agree (up to nullability and metadata): write as they are.
    Same,
    /// The table holds everything the rows do; the rows are shaped as the table (missing
    /// columns null, narrower types cast up) and written without a schema change.
    Conform(SchemaRef),
    /// The table's schema grows.
    Evolve(Evolution),
}

/// A change of a table's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Evolution {
    /// The table's schema after the change: rows are shaped as it.
    pub target: SchemaRef,
    /// Columns added, as dotted paths (`user.device`).
    pub added: Vec<String>,
    /// Columns whose type widened: path, old type, new type.
    pub widened: Vec<(String, DataType, DataType)>,
}

impl Evolution {
    /// Whether the table's files must be rewritten (a type widened).
    pub fn rewrites(&self) -> bool {
        !self.widened.is_empty()
    }

    /// One line for logs and commit metadata: `added user.device; widened quantity int→long`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            parts.push(format!("added {}", self.added.join(", ")));
        }
        if !self.widened.is_empty() {
            let widened: Vec<String> = self
                .widened
                .iter()
                .map(|(path, from, to)| format!("{path} {} to {}", name(from), name(to)))
                .collect();
            parts.push(format!("widened {}", widened.join(", ")));
        }
        parts.join("; ")
    }
}

/// Whether `schema` has a `timestamp_ntz` column (a timestamp without a time zone)
/// anywhere, nested ones included: a table holds one only with Delta's `timestampNtz`
/// table feature, which it gains when created with such a column and not after (the
/// metadata a schema change writes carries no protocol change).
pub fn has_timestamp_ntz(schema: &Schema) -> bool {
    fn nested(ty: &DataType) -> bool {
        match ty {
            DataType::Timestamp(_, None) => true,
            DataType::Struct(fields) => fields.iter().any(|f| nested(f.data_type())),
            DataType::List(item) | DataType::LargeList(item) | DataType::Map(item, _) => {
                nested(item.data_type())
            }
            _ => false,
        }
    }
    schema.fields().iter().any(|f| nested(f.data_type()))
}

/// Refuses a schema change that brings a `timestamp_ntz` column to a table that has none
/// (see [`has_timestamp_ntz`]).
pub fn check_timestamp_ntz(table: &Schema, target: &Schema, name: &str) -> Result<()> {
    if has_timestamp_ntz(target) && !has_timestamp_ntz(table) {
        return Err(LakeError::Invalid {
            table: name.to_string(),
            message: "a timestamp_ntz column needs Delta's timestampNtz table feature, which \
                      this table was not created with; declare it in a new table"
                .into(),
        });
    }
    Ok(())
}

/// A column the rows hold in a type the table's column cannot take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatible {
    /// Dotted path of the column.
    pub column: String,
    /// What is wrong.
    pub message: String,
}

impl Incompatible {
    /// As the lake crate's error for `table`.
    pub fn into_error(self, table: &str) -> LakeError {
        LakeError::Invalid {
            table: table.to_string(),
            message: format!(
                "column {}: {} (a table's schema can gain columns and widen int to long, \
                 float to double, date to timestamp; nothing else)",
                self.column, self.message
            ),
        }
    }
}

/// How rows of schema `rows` go into a table of schema `table` (see the module docs).
pub fn plan(table: &Schema, rows: &Schema) -> std::result::Result<Plan, Incompatible> {
    let mut change = Change::default();
    let fields = merge_fields(table.fields(), rows.fields(), "", &mut change)?;
    if change.added.is_empty() && change.widened.is_empty() {
        if change.conform {
            return Ok(Plan::Conform(Arc::new(Schema::new_with_metadata(
                fields,
                table.metadata().clone(),
            ))));
        }
        return Ok(Plan::Same);
    }
    Ok(Plan::Evolve(Evolution {
        target: Arc::new(Schema::new_with_metadata(fields, table.metadata().clone())),
        added: change.added,
        widened: change.widened,
    }))
}

#[derive(Default)]
struct Change {
    added: Vec<String>,
    widened: Vec<(String, DataType, DataType)>,
    /// The rows need shaping (a missing column, a narrower type) even if the table stays.
    conform: bool,
}

fn path_of(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn merge_fields(
    table: &Fields,
    rows: &Fields,
    prefix: &str,
    change: &mut Change,
) -> std::result::Result<Vec<Field>, Incompatible> {
    let mut out = Vec::with_capacity(table.len().max(rows.len()));
    for field in table.iter() {
        let path = path_of(prefix, field.name());
        match rows.iter().find(|f| f.name() == field.name()) {
            Some(row) => {
                let ty = merge_type(field.data_type(), row.data_type(), &path, change)?;
                // A column that may be null in the rows must be nullable in the table.
                let nullable = field.is_nullable() || row.is_nullable();
                out.push(
                    Field::new(field.name(), ty, nullable).with_metadata(field.metadata().clone()),
                );
            }
            None => {
                change.conform = true;
                out.push(field.as_ref().clone().with_nullable(true));
            }
        }
    }
    for row in rows.iter() {
        if table.iter().any(|f| f.name() == row.name()) {
            continue;
        }
        change.added.push(path_of(prefix, row.name()));
        change.conform = true;
        out.push(nullable_everywhere(row));
    }
    Ok(out)
}

/// A new column: nullable, and so is everything inside it (its old rows are null).
fn nullable_everywhere(field: &Field) -> Field {
    let ty = match field.data_type() {
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| nullable_everywhere(f))
                .collect::<Vec<_>>()
                .into(),
        ),
        DataType::List(element) => DataType::List(Arc::new(nullable_everywhere(element))),
        other => other.clone(),
    };
    Field::new(field.name(), ty, true).with_metadata(field.metadata().clone())
}

fn merge_type(
    table: &DataType,
    rows: &DataType,
    path: &str,
    change: &mut Change,
) -> std::result::Result<DataType, Incompatible> {
    match (table, rows) {
        (DataType::Struct(t), DataType::Struct(r)) => {
            Ok(DataType::Struct(merge_fields(t, r, path, change)?.into()))
        }
        (DataType::List(t), DataType::List(r)) => {
            let element = merge_type(t.data_type(), r.data_type(), &format!("{path}[]"), change)?;
            Ok(DataType::List(Arc::new(Field::new(
                t.name(),
                element,
                t.is_nullable() || r.is_nullable(),
            ))))
        }
        // Maps of the same key and value types, whatever their entries are named.
        (DataType::Map(t, _), DataType::Map(r, _)) => {
            let (DataType::Struct(tk), DataType::Struct(rk)) = (t.data_type(), r.data_type())
            else {
                return Err(Incompatible {
                    column: path.to_string(),
                    message: "a map without key and value".into(),
                });
            };
            let same = tk.len() == 2
                && rk.len() == 2
                && tk
                    .iter()
                    .zip(rk.iter())
                    .all(|(a, b)| a.data_type() == b.data_type());
            if same {
                Ok(table.clone())
            } else {
                Err(Incompatible {
                    column: path.to_string(),
                    message: format!(
                        "the table holds {} and the rows {}",
                        name(table),
                        name(rows)
                    ),
                })
            }
        }
        (t, r) if t == r => Ok(t.clone()),
        (t, r) if widens(t, r) => {
            change
                .widened
                .push((path.to_string(), t.clone(), r.clone()));
            change.conform = true;
            Ok(r.clone())
        }
        (t, r) if widens(r, t) => {
            change.conform = true;
            Ok(t.clone())
        }
        (t, r) => Err(Incompatible {
            column: path.to_string(),
            message: format!("the table holds {} and the rows {}", name(t), name(r)),
        }),
    }
}

/// Whether `to` holds every value of `from` exactly: the widenings a table allows.
pub fn widens(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    match (from, to) {
        (Int8, Int16 | Int32 | Int64) | (Int16, Int32 | Int64) | (Int32, Int64) => true,
        (Float32, Float64) => true,
        (Date32, Timestamp(TimeUnit::Microsecond, _)) => true,
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            p2 >= p1 && s2 >= s1 && (*p2 as i16 - *s2 as i16) >= (*p1 as i16 - *s1 as i16)
        }
        _ => false,
    }
}

/// The spec's name of a type, for messages.
fn name(ty: &DataType) -> String {
    match ty {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Int64 => "long".into(),
        DataType::Int32 => "int".into(),
        DataType::Float64 => "double".into(),
        DataType::Float32 => "float".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, _) => "timestamp".into(),
        DataType::Binary | DataType::LargeBinary => "binary".into(),
        DataType::Struct(_) => "a struct".into(),
        DataType::List(_) => "a list".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        other => other.to_string(),
    }
}

/// `batch` shaped as `schema`: columns (and nested struct fields) matched by name, missing
/// ones null, narrower types cast up.
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) => conform_array(column, field.data_type()),
            None => Ok(new_null_array(field.data_type(), rows)),
        })
        .collect::<Result<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}

/// `array` as `ty`: structs by field name (missing fields null), lists element-wise, other
/// types cast.
pub fn conform_array(array: &ArrayRef, ty: &DataType) -> Result<ArrayRef> {
    if array.data_type() == ty {
        return Ok(Arc::clone(array));
    }
    match (array.data_type(), ty) {
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let source = array.as_struct();
            let children = fields
                .iter()
                .map(|f| match source.column_by_name(f.name()) {
                    Some(child) => conform_array(child, f.data_type()),
                    None => Ok(new_null_array(f.data_type(), source.len())),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Arc::new(StructArray::try_new(
                fields.clone(),
                children,
                source.nulls().cloned(),
            )?))
        }
        (DataType::List(_), DataType::List(element)) => {
            let source = array.as_list::<i32>();
            let values = conform_array(source.values(), element.data_type())?;
            Ok(Arc::new(ListArray::try_new(
                Arc::clone(element),
                source.offsets().clone(),
                values,
                source.nulls().cloned(),
            )?))
        }
        _ => Ok(arrow::compute::cast(array, ty)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, StringArray};

    fn utc() -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    }

    fn user(fields: &[&str]) -> DataType {
        DataType::Struct(
            fields
                .iter()
                .map(|n| Field::new(*n, DataType::Utf8, true))
                .collect::<Vec<_>>()
                .into(),
        )
    }

    #[test]
    fn equal_shapes_need_nothing() {
        let schema = Schema::new(vec![Field::new("a", DataType::Int64, true)]);
        assert_eq!(plan(&schema, &schema), Ok(Plan::Same));
    }

    #[test]
    fn new_columns_and_nested_fields_are_added_after_the_tables_own() {
        let table = Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("user", user(&["id"]), true),
            Field::new("_offset", DataType::Int64, false),
        ]);
        let rows = Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("user", user(&["id", "device"]), true),
            Field::new("channel", DataType::Utf8, false),
            Field::new("_offset", DataType::Int64, false),
        ]);
        let Ok(Plan::Evolve(evolution)) = plan(&table, &rows) else {
            panic!("expected an evolution");
        };
        assert_eq!(evolution.added, vec!["user.device", "channel"]);
        assert!(!evolution.rewrites());
        let names: Vec<&str> = evolution
            .target
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["id", "user", "_offset", "channel"]);
        // Added columns are nullable: the rows written before them read back null.
        assert!(
            evolution
                .target
                .field_with_name("channel")
                .unwrap()
                .is_nullable()
        );
        assert_eq!(
            evolution.summary(),
            "added user.device, channel",
            "{evolution:?}"
        );
    }

    #[test]
    fn widenings_are_allowed_and_rewrite_narrowings_are_cast_up() {
        let table = Schema::new(vec![
            Field::new("quantity", DataType::Int32, true),
            Field::new("day", DataType::Date32, true),
            Field::new("price", DataType::Float64, true),
        ]);
        let rows = Schema::new(vec![
            Field::new("quantity", DataType::Int64, true),
            Field::new("day", utc(), true),
            Field::new("price", DataType::Float32, true),
        ]);
        let Ok(Plan::Evolve(evolution)) = plan(&table, &rows) else {
            panic!("expected an evolution");
        };
        assert!(evolution.rewrites());
        assert_eq!(evolution.widened.len(), 2);
        assert_eq!(
            evolution
                .target
                .field_with_name("price")
                .unwrap()
                .data_type(),
            &DataType::Float64,
            "a narrower rows' type keeps the table's"
        );
        assert_eq!(
            evolution.summary(),
            "widened quantity int to long, day date to timestamp"
        );
        // Rows narrower than the table only: shaped, the table unchanged.
        let narrower = Schema::new(vec![Field::new("price", DataType::Float32, true)]);
        let Ok(Plan::Conform(schema)) = plan(&table, &narrower) else {
            panic!("expected a conform");
        };
        assert_eq!(schema.fields().len(), 3);
    }

    #[test]
    fn incompatible_types_name_the_column() {
        let table = Schema::new(vec![Field::new("user", user(&["id"]), true)]);
        let rows = Schema::new(vec![Field::new(
            "user",
            DataType::Struct(vec![Field::new("id", DataType::Int64, true)].into()),
            true,
        )]);
        let error = plan(&table, &rows).unwrap_err();
        assert_eq!(error.column, "user.id");
        assert!(error.message.contains("string") && error.message.contains("long"));
        let scalar = Schema::new(vec![Field::new("user", DataType::Utf8, true)]);
        assert_eq!(plan(&table, &scalar).unwrap_err().column, "user");
        let message = plan(&table, &scalar)
            .unwrap_err()
            .into_error("silver.t")
            .to_string();
        assert!(
            message.contains("silver.t") && message.contains("column user"),
            "{message}"
        );
    }

    #[test]
    fn conform_fills_missing_fields_and_casts() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("quantity", DataType::Int32, true),
                Field::new("user", user(&["id"]), true),
            ])),
            vec![
                Arc::new(Int32Array::from(vec![Some(1), None])),
                Arc::new(StructArray::from(vec![(
                    Arc::new(Field::new("id", DataType::Utf8, true)),
                    Arc::new(StringArray::from(vec!["u1", "u2"])) as ArrayRef,
                )])),
            ],
        )
        .unwrap();
        let target = Arc::new(Schema::new(vec![
            Field::new("quantity", DataType::Int64, true),
            Field::new("user", user(&["id", "device"]), true),
            Field::new("channel", DataType::Utf8, true),
        ]));
        let shaped = conform(&batch, &target).unwrap();
        assert_eq!(shaped.schema(), target);
        let quantity = shaped
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(quantity.iter().collect::<Vec<_>>(), vec![Some(1), None]);
        let user = shaped.column(1).as_struct();
        assert_eq!(user.column(0).as_string::<i32>().value(1), "u2");
        assert_eq!(user.column(1).null_count(), 2);
        assert_eq!(shaped.column(2).null_count(), 2);
    }
}
