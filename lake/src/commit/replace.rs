//! A table started over under another schema: one commit that removes every file the table
//! holds and writes a metadata action with the new schema (Delta's schema overwrite), with
//! the txn positions the writer starts again from.
//!
//! What `on_incompatible: new_version` does to a silver table whose spec declares columns
//! its schema cannot take (see the worker's refine task): readers of older versions still
//! read them with the schema they had, since each version's metadata is in the log.

use arrow::datatypes::SchemaRef;
use deltalake::DeltaTable;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow as _;
use deltalake::kernel::{MetadataExt as _, StructType};

use super::{CommitEnv, CommitOutcome, Payload, TxnUpdate, WriteMode, attempts};
use crate::log::refresh;
use crate::{LakeError, Result};

/// The `commitInfo` key under which a commit that replaced the table's schema says why.
pub const REPLACED_KEY: &str = "smelter.schemaReplaced";

/// Replaces `table`'s schema with `schema` and removes all its rows, in one commit that
/// moves `txns` (see the module docs); `why` is recorded under [`REPLACED_KEY`].
pub async fn replace_schema(
    table: &mut DeltaTable,
    name: &str,
    schema: &SchemaRef,
    txns: Vec<TxnUpdate>,
    why: &str,
    env: &CommitEnv,
) -> Result<CommitOutcome> {
    for _ in 0..super::PLANS {
        refresh(table, name).await?;
        let current_schema = crate::log::arrow_schema(table, name)?;
        crate::evolve::check_timestamp_ntz(&current_schema, schema, name)?;
        let delta_schema = StructType::try_from_arrow(schema.as_ref()).map_err(|e| {
            LakeError::generic(name, format!("schema not representable in Delta: {e}"))
        })?;
        let current = table
            .snapshot()
            .map_err(|e| LakeError::delta(name, e))?
            .metadata()
            .clone();
        let partition_by: Vec<String> = current.partition_columns().to_vec();
        let metadata = current
            .with_schema(&delta_schema)
            .map_err(|e| LakeError::generic(name, format!("replaced metadata: {e}")))?;
        let info = std::collections::HashMap::from([(
            REPLACED_KEY.to_string(),
            serde_json::Value::from(why),
        )]);
        let payload = Payload {
            files: &[],
            mode: WriteMode::Overwrite,
            partition_by: &partition_by,
            changes: &[],
            removes: &[],
            removes_data: true,
            operation: None,
            metadata: Some(&info),
            table_metadata: Some(&metadata),
        };
        match attempts(table, name, &payload, &txns, env).await {
            // Another metadata change landed since the refresh: derive again.
            Err(LakeError::Superseded { .. }) => continue,
            Ok(CommitOutcome::Committed { version }) => {
                env.signals.announce(table.table_url().as_str(), version);
                tracing::info!(
                    table = name,
                    version,
                    why,
                    "table schema replaced; its rows removed"
                );
                refresh(table, name).await?;
                return Ok(CommitOutcome::Committed { version });
            }
            other => return other,
        }
    }
    Err(LakeError::CommitConflict {
        table: name.to_string(),
        message: "other commits changed the table's metadata while its schema was replaced".into(),
    })
}
