//! Reading a table's log position: its loaded version, the latest version in storage, a
//! txn appId's version, and bringing a snapshot up to date cheaply.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use deltalake::DeltaTable;
use object_store::ObjectStoreExt;

use crate::app_id::AppId;
use crate::{LakeError, Result};

/// The highest committed txn version of `app_id` in the loaded snapshot, if any.
pub async fn txn_version(table: &DeltaTable, app_id: &AppId) -> Result<Option<i64>> {
    let name = table.table_url().to_string();
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(&name, e))?;
    snapshot
        .transaction_version(table.log_store().as_ref(), &app_id.to_string())
        .await
        .map_err(|e| LakeError::delta(&name, e))
}

/// The table's loaded version, `-1` before the first commit.
pub fn version(table: &DeltaTable) -> i64 {
    table.version().map_or(-1, |v| v as i64)
}

/// The latest version in `table`'s log, at least `known`, found by probing for the commit
/// files after `known` one by one. Nothing is loaded: a follower that only needs to know
/// whether its upstream moved (and then reads the new commit entries itself, see
/// [`crate::changes::range`]) polls with a `HEAD` per poll instead of a snapshot update,
/// which lists the log and replays the new actions over every file of the table.
pub async fn latest_version(table: &DeltaTable, name: &str, known: i64) -> Result<i64> {
    let log_store = table.log_store();
    let store = log_store.object_store(None);
    let mut latest = known;
    loop {
        let next = log_store
            .log_path()
            .clone()
            .join(format!("{:020}.json", latest + 1));
        match store.head(&next).await {
            Ok(_) => latest += 1,
            Err(object_store::Error::NotFound { .. }) => return Ok(latest),
            Err(e) => return Err(LakeError::delta(name, e.into())),
        }
    }
}

/// Brings `table`'s snapshot up to the latest version, skipping the snapshot update (a log
/// listing and a replay) when a probe finds no new commit; returns the version.
pub async fn refresh(table: &mut DeltaTable, name: &str) -> Result<i64> {
    let loaded = version(table);
    if latest_version(table, name, loaded).await? > loaded {
        table
            .update_state()
            .await
            .map_err(|e| LakeError::delta(name, e))?;
    }
    Ok(version(table))
}

/// Rows in the table's current snapshot (from the add actions' statistics).
pub fn row_count(table: &DeltaTable) -> u64 {
    match table.snapshot() {
        Ok(snapshot) => snapshot
            .log_data()
            .iter()
            .map(|f| f.num_records().unwrap_or(0) as u64)
            .sum(),
        Err(_) => 0,
    }
}

/// The schema of a table's current snapshot as Arrow.
pub fn arrow_schema(table: &DeltaTable, name: &str) -> Result<SchemaRef> {
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
    let schema = snapshot.snapshot().arrow_schema();
    Ok(Arc::clone(&schema))
}

/// A table property of the loaded snapshot (`None`: not set, or no snapshot).
pub fn table_property(table: &DeltaTable, key: &str) -> Option<String> {
    table
        .snapshot()
        .ok()?
        .metadata()
        .configuration()
        .get(key)
        .cloned()
}
