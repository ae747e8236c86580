//! `table_history('layer.name')`: a table's commit history as a SQL table, the same
//! entries `smelter history` prints (`smelter_lake::history::entries`), newest first.
//! A caller may read the history of the tables it is granted only.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, ListBuilder, StringArray, StringBuilder, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use smelter_common::security::Principal;
use smelter_lake::TableStore;
use smelter_lake::history::Entry;

use super::query::Forbidden;
use super::scanned::{ReadOnScan, Scanned};

/// The `table_history` function of one session.
#[derive(Debug)]
pub struct HistoryFunction {
    /// Where the tables are.
    pub tables: TableStore,
    /// Every table that existed when the session was made.
    pub names: Arc<Vec<String>>,
    /// The client the session plans for (`None`: the pipeline).
    pub caller: Option<Arc<Principal>>,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("version", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("operation", DataType::Utf8, false),
        Field::new("delta_operation", DataType::Utf8, true),
        Field::new("rows_added", DataType::UInt64, false),
        Field::new("files_added", DataType::UInt64, false),
        Field::new("files_removed", DataType::UInt64, false),
        Field::new("bytes_added", DataType::UInt64, false),
        Field::new(
            "consumed",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("epoch", DataType::Int64, true),
        Field::new("writer", DataType::Utf8, true),
        Field::new("quality", DataType::Utf8, true),
    ]))
}

impl TableFunctionImpl for HistoryFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let name = match args.exprs() {
            [Expr::Literal(ScalarValue::Utf8(Some(name)), _)] => name.to_ascii_lowercase(),
            _ => {
                return Err(DataFusionError::Plan(
                    "table_history takes one table name, as in table_history('gold.hourly_metrics')"
                        .into(),
                ));
            }
        };
        let name = readable("table_history", name, &self.names, self.caller.as_deref())?;
        Ok(Arc::new(Scanned(HistoryTable {
            tables: self.tables.clone(),
            name,
        })))
    }
}

/// `name` if the table exists and `caller` may read it; the planning error `function`
/// gives otherwise (shared by the table functions that take a table name).
pub(super) fn readable(
    function: &str,
    name: String,
    names: &[String],
    caller: Option<&Principal>,
) -> Result<String> {
    if !names.contains(&name) {
        return Err(DataFusionError::Plan(format!(
            "{function}: table {name} does not exist"
        )));
    }
    if let Some(caller) = caller.filter(|c| !c.may_read(&name)) {
        return Err(DataFusionError::External(Box::new(Forbidden {
            table: name,
            caller: caller.name.clone(),
        })));
    }
    Ok(name)
}

/// One table's history, read from its log when scanned.
#[derive(Debug)]
struct HistoryTable {
    tables: TableStore,
    name: String,
}

/// The entries as one batch of [`schema`].
fn batch(entries: &[Entry]) -> Result<RecordBatch> {
    let mut consumed = ListBuilder::new(StringBuilder::new());
    for entry in entries {
        for item in &entry.consumed {
            consumed.values().append_value(item);
        }
        consumed.append(true);
    }
    let u64s = |f: fn(&Entry) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(entries.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            entries.iter().map(|e| e.version),
        )),
        Arc::new(
            arrow::array::TimestampMillisecondArray::from_iter(
                entries.iter().map(|e| e.timestamp_ms),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.operation.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            entries.iter().map(|e| e.delta_operation.as_deref()),
        )),
        u64s(|e| e.rows_added),
        u64s(|e| e.files_added as u64),
        u64s(|e| e.files_removed as u64),
        u64s(|e| e.bytes_added),
        Arc::new(consumed.finish()),
        Arc::new(Int64Array::from_iter(entries.iter().map(|e| e.epoch))),
        Arc::new(StringArray::from_iter(
            entries.iter().map(|e| e.writer.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            entries
                .iter()
                .map(|e| e.quality.as_ref().map(|q| q.to_string())),
        )),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

#[async_trait]
impl ReadOnScan for HistoryTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn read(&self) -> Result<RecordBatch> {
        let external = |e: smelter_lake::LakeError| DataFusionError::External(Box::new(e));
        let table = self.tables.open(&self.name).await.map_err(external)?;
        let entries = smelter_lake::history::entries(&table, &self.name, None)
            .await
            .map_err(external)?;
        batch(&entries)
    }
}
