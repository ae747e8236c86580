//! A silver spec whose declared columns its existing table cannot take (a type that is not
//! a widening: `long` → `string`, a struct become a scalar), when the table says what to do
//! with it (`on_incompatible`; without it `smelter apply`/`up` refuse the spec):
//!
//! * `rescue` — [`rescue_conflicts`]: each such column keeps the table's type, and the
//!   refine task decodes it as that type, rescuing every value that type does not take into
//!   `_rescued_data` under the field's path; the row still lands. The table is not touched.
//! * `new_version` — [`conflict`] tells the refine task that the table must start over: it
//!   empties the quarantine, then replaces the silver table's schema and removes its rows
//!   (`smelter_lake::commit::replace_schema`), both with their bronze position set back to
//!   before the first version, and refines all of bronze again under the new spec.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use indexmap::IndexMap;
use smelter_common::spec::{FieldType, ParseSchema, SchemaSpec, TableSpec};
use smelter_lake::evolve::{self, Incompatible};

use super::decode::Rescue;
use crate::tasks::schemas::{arrow_type, field_type};

/// The first column of `rows` that `table` cannot take, if any.
pub fn conflict(table: &Schema, rows: &Schema) -> Option<Incompatible> {
    evolve::plan(table, rows).err()
}

/// `spec` with the type of each declared column the table (`held`) cannot take replaced by
/// the table's, and the dotted paths of those fields for the decoder to rescue; `None`
/// when there is none.
pub fn rescue_conflicts(spec: &TableSpec, held: &Schema) -> Option<(TableSpec, Rescue)> {
    let declared = spec.parse.as_ref()?.schema.declared()?;
    let mut paths = BTreeSet::new();
    let fields = conform(&declared.fields, spec.flatten, "", "", held, &mut paths);
    if paths.is_empty() {
        return None;
    }
    let mut conformed = spec.clone();
    if let Some(parse) = conformed.parse.as_mut() {
        parse.schema = ParseSchema::Declared(SchemaSpec { fields });
    }
    Some((conformed, Rescue::Paths(paths)))
}

/// The fields of one declared struct (the record's at the top), each column the table
/// holds in a type it cannot take from the declared one given the table's type.
fn conform(
    fields: &IndexMap<String, FieldType>,
    flatten: bool,
    path: &str,
    prefix: &str,
    held: &Schema,
    paths: &mut BTreeSet<String>,
) -> IndexMap<String, FieldType> {
    let mut out = IndexMap::new();
    for (name, ty) in fields {
        let field_path = join(path, name, ".");
        let column = join(prefix, name, "_");
        let ty = match ty {
            FieldType::Struct(inner) if flatten => FieldType::Struct(SchemaSpec {
                fields: conform(&inner.fields, flatten, &field_path, &column, held, paths),
            }),
            declared => match held.field_with_name(&column) {
                Ok(have) if !takes(have, declared) => match field_type(have.data_type()) {
                    Some(kept) => {
                        paths.insert(field_path);
                        kept
                    }
                    None => declared.clone(),
                },
                _ => declared.clone(),
            },
        };
        out.insert(name.clone(), ty);
    }
    out
}

/// Whether a column the table holds as `have` can take values declared `declared`.
fn takes(have: &Field, declared: &FieldType) -> bool {
    let rows = Field::new(have.name(), arrow_type(declared), true);
    conflict(
        &Schema::new(vec![have.clone()]),
        &Schema::new(vec![Arc::new(rows)]),
    )
    .is_none()
}

fn join(prefix: &str, name: &str, separator: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}{separator}{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::schemas;

    fn table(flatten: bool, schema: &str) -> TableSpec {
        let text = format!(
            "pipeline: p\nsources: {{ s: {{ generator: {{ partitions: 1 }} }} }}\ntables:\n  \
             bronze.e: {{ from: s }}\n  silver.e:\n    from: bronze.e\n    \
             parse: {{ format: json, schema: {schema} }}\n    flatten: {flatten}\n    \
             on_incompatible: rescue\n"
        );
        let spec = smelter_common::spec::PipelineSpec::parse(&text, "p.yaml").unwrap();
        spec.tables["silver.e"].clone()
    }

    #[test]
    fn columns_the_table_cannot_take_keep_its_type_and_are_rescued() {
        for flatten in [true, false] {
            let old = table(
                flatten,
                "{ id: string, n: long, user: { id: long, name: string } }",
            );
            let held = schemas::silver(&old);
            let new = table(
                flatten,
                "{ id: string, n: string, user: { id: string, name: string, age: int } }",
            );
            let (conformed, rescue) = rescue_conflicts(&new, &held).unwrap();
            let expected = if flatten {
                // The flattened `user_id` keeps long; the struct gains `age`.
                "{ id: string, n: long, user: { id: long, name: string, age: int } }"
            } else {
                // The struct kept whole is the column: it keeps the table's type.
                "{ id: string, n: long, user: { id: long, name: string } }"
            };
            assert_eq!(
                conformed.declared_columns(),
                table(flatten, expected).declared_columns(),
                "flatten: {flatten}"
            );
            let paths = if flatten {
                ["n", "user.id"]
            } else {
                ["n", "user"]
            };
            assert_eq!(
                rescue,
                Rescue::Paths(paths.iter().map(|p| p.to_string()).collect())
            );
            // What the table takes (a new column, a widening) needs no rescue.
            let wider = table(
                flatten,
                "{ id: string, n: long, extra: double, user: { id: long } }",
            );
            assert!(rescue_conflicts(&wider, &held).is_none());
            assert!(conflict(&held, &schemas::silver(&conformed)).is_none());
        }
    }
}
