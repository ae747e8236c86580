//! A table as its latest version stands — what Databricks users know as `DESCRIBE DETAIL`:
//! version, schema, partition columns, catalog description and properties, live files,
//! bytes, rows, and how many files are small (below the target its maintenance record
//! names, 128 MiB before any pass). Read by `GET /tables/{name}` (through the SQL function
//! `table_detail`) and by `smelter maintenance status`.

use std::collections::BTreeMap;

use deltalake::DeltaTable;
use serde::Serialize;

use crate::describe::Description;
use crate::log::refresh;
use crate::{LakeError, Result, maintenance_record};

/// Files counted small when no maintenance pass recorded the table's target.
pub const DEFAULT_TARGET_BYTES: u64 = 128 * 1024 * 1024;

/// See the module docs.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    /// Latest version.
    pub version: i64,
    /// The Delta schema, as the log holds it (JSON).
    pub schema: serde_json::Value,
    /// Partition columns.
    pub partition_columns: Vec<String>,
    /// The description in the table's metadata.
    pub description: Option<String>,
    /// Every table property (Delta's own and the catalog's).
    pub properties: BTreeMap<String, String>,
    /// Live data files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Rows in them, from their statistics.
    pub rows: u64,
    /// Files smaller than `small_file_bytes`.
    pub small_files: u64,
    /// What counts as small for the table.
    pub small_file_bytes: u64,
}

impl Detail {
    /// The catalog description the table's metadata holds.
    pub fn catalog(&self) -> Description {
        Description::from_properties(self.description.clone(), &self.properties)
    }
}

/// The detail of `table` at its latest version.
pub async fn detail(table: &mut DeltaTable, name: &str) -> Result<Detail> {
    refresh(table, name).await?;
    let record = maintenance_record::read(table, name).await?;
    let small_file_bytes = record
        .map(|r| r.target_file_bytes)
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_TARGET_BYTES);
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
    let metadata = snapshot.metadata();
    let schema = serde_json::from_str(metadata.schema_string())
        .map_err(|e| LakeError::generic(name, format!("schema in the log: {e}")))?;
    let (mut files, mut bytes, mut rows, mut small_files) = (0, 0, 0, 0);
    for file in snapshot.log_data().iter() {
        let size = file.size().max(0) as u64;
        files += 1;
        bytes += size;
        rows += file.num_records().unwrap_or(0) as u64;
        if size < small_file_bytes {
            small_files += 1;
        }
    }
    Ok(Detail {
        version: snapshot.version() as i64,
        schema,
        partition_columns: metadata.partition_columns().to_vec(),
        description: metadata.description().map(str::to_string),
        properties: metadata
            .configuration()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        files,
        bytes,
        rows,
        small_files,
        small_file_bytes,
    })
}
