//! `table_detail('layer.name')`: one row describing a table as its latest version stands
//! (`smelter_lake::detail`) — version, Delta schema (JSON), partition columns, description,
//! properties (JSON: `smelter.owner`, `smelter.tags`, Delta's own), live files, bytes,
//! rows and small files. What `GET /tables/{name}` shows beyond the pipeline's view.

use std::sync::Arc;

use super::scanned::{ReadOnScan, Scanned};
use arrow::array::{ArrayRef, Int64Array, ListBuilder, StringArray, StringBuilder, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use smelter_common::security::Principal;
use smelter_lake::TableStore;
use smelter_lake::detail::Detail;

/// The `table_detail` function of one session.
#[derive(Debug)]
pub struct DetailFunction {
    /// Where the tables are.
    pub tables: TableStore,
    /// Every table that existed when the session was made.
    pub names: Arc<Vec<String>>,
    /// The client the session plans for (`None`: the pipeline).
    pub caller: Option<Arc<Principal>>,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("schema", DataType::Utf8, false),
        Field::new(
            "partition_columns",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("description", DataType::Utf8, true),
        Field::new("properties", DataType::Utf8, false),
        Field::new("files", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("small_files", DataType::UInt64, false),
        Field::new("small_file_bytes", DataType::UInt64, false),
    ]))
}

impl TableFunctionImpl for DetailFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let name = match args.exprs() {
            [Expr::Literal(ScalarValue::Utf8(Some(name)), _)] => name.to_ascii_lowercase(),
            _ => {
                return Err(DataFusionError::Plan(
                    "table_detail takes one table name, as in table_detail('silver.events')".into(),
                ));
            }
        };
        let name =
            super::history::readable("table_detail", name, &self.names, self.caller.as_deref())?;
        Ok(Arc::new(Scanned(DetailTable {
            tables: self.tables.clone(),
            name,
        })))
    }
}

/// One table's detail, read from its log when scanned.
#[derive(Debug)]
struct DetailTable {
    tables: TableStore,
    name: String,
}

fn batch(name: &str, detail: &Detail) -> Result<RecordBatch> {
    let mut partitions = ListBuilder::new(StringBuilder::new());
    for column in &detail.partition_columns {
        partitions.values().append_value(column);
    }
    partitions.append(true);
    let u64s = |v: u64| -> ArrayRef { Arc::new(UInt64Array::from_iter_values([v])) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values([name])),
        Arc::new(Int64Array::from_iter_values([detail.version])),
        Arc::new(StringArray::from_iter_values([json(&detail.schema)])),
        Arc::new(partitions.finish()),
        Arc::new(StringArray::from_iter([detail.description.as_deref()])),
        Arc::new(StringArray::from_iter_values([json(&detail.properties)])),
        u64s(detail.files),
        u64s(detail.bytes),
        u64s(detail.rows),
        u64s(detail.small_files),
        u64s(detail.small_file_bytes),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// JSON text of one of the detail's structured fields.
fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[async_trait]
impl ReadOnScan for DetailTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn read(&self) -> Result<RecordBatch> {
        let external = |e: smelter_lake::LakeError| DataFusionError::External(Box::new(e));
        let mut table = self.tables.open(&self.name).await.map_err(external)?;
        let detail = smelter_lake::detail::detail(&mut table, &self.name)
            .await
            .map_err(external)?;
        batch(&self.name, &detail)
    }
}
