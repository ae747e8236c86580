//! What opening a table reads: the entries of its `_delta_log` (listed to find the latest
//! version) and its latest checkpoint's actions — live files, txns and the `remove`
//! tombstones kept for `delta.deletedFileRetentionDuration` (see `crate::describe`). A
//! table under streaming writes and compaction stays fast to open only while both stay
//! bounded; the soak bench samples them next to the open time, and the retention tests
//! check the tombstones expire.

use datafusion::object_store::ObjectStoreExt as _;
use deltalake::DeltaTable;
use deltalake::arrow::array::Array as _;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use futures::TryStreamExt as _;

use crate::{LakeError, Result};

/// The size of a table's log.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogSize {
    /// Objects under `_delta_log` (commits, checkpoints, CRCs, `_last_checkpoint`).
    pub entries: u64,
    /// The latest checkpoint's version, if there is one.
    pub checkpoint_version: Option<i64>,
    /// Actions in it.
    pub checkpoint_actions: u64,
    /// Of those, `remove` tombstones.
    pub checkpoint_tombstones: u64,
}

/// The size of `table`'s log now (see the module docs).
pub async fn log_size(table: &DeltaTable, name: &str) -> Result<LogSize> {
    let store = table.object_store();
    let log = deltalake::Path::from("_delta_log");
    let entries = store
        .list(Some(&log))
        .try_fold(0u64, |n, _| async move { Ok(n + 1) })
        .await
        .map_err(|e| LakeError::delta(name, e.into()))?;
    let mut out = LogSize {
        entries,
        ..LogSize::default()
    };
    let Some((version, parts)) = crate::txns::latest_checkpoint(table, name).await? else {
        return Ok(out);
    };
    out.checkpoint_version = Some(version);
    let parts = crate::txns::checkpoint_files(version, parts);
    for part in parts {
        let data = store
            .get(&deltalake::Path::from(format!("_delta_log/{part}")))
            .await
            .map_err(|e| LakeError::delta(name, e.into()))?
            .bytes()
            .await
            .map_err(|e| LakeError::delta(name, e.into()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(data)
            .map_err(|e| LakeError::delta(name, e.into()))?;
        let removes = builder
            .schema()
            .fields()
            .iter()
            .position(|f| f.name() == "remove");
        let builder = match removes {
            Some(i) => {
                let mask = ProjectionMask::roots(builder.parquet_schema(), [i]);
                builder.with_projection(mask)
            }
            None => builder,
        };
        for batch in builder
            .build()
            .map_err(|e| LakeError::delta(name, e.into()))?
        {
            let batch = batch?;
            out.checkpoint_actions += batch.num_rows() as u64;
            if removes.is_some() {
                let column = batch.column(0);
                out.checkpoint_tombstones += (column.len() - column.null_count()) as u64;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::{CommitEnv, WriteMode};
    use crate::compact::{CompactOptions, compact};
    use crate::describe::{Description, describe};
    use crate::testing::{TestTable, commit_for_test};

    /// Three appends compacted: three tombstones. Each next version is checkpointed.
    async fn compacted(tombstones: Option<std::time::Duration>) -> (TestTable, DeltaTable) {
        let env = CommitEnv::default();
        let test = TestTable::create("t", &env).await;
        let mut table = test.store.open("t").await.unwrap();
        let description = Description {
            tombstones,
            ..Description::default()
        };
        describe(&mut table, "t", &description, &env).await.unwrap();
        for n in 0..3 {
            commit_for_test(&mut table, "t", test.batch(n), WriteMode::Append, &[]).await;
        }
        let compaction = compact(&mut table, "t", CompactOptions::default(), &env)
            .await
            .unwrap();
        assert_eq!(compaction.files_removed, 3);
        (test, table)
    }

    /// A new version of `table`, checkpointed; what the checkpoint holds.
    async fn checkpointed(test: &TestTable, table: &mut DeltaTable) -> LogSize {
        let version = commit_for_test(table, "t", test.batch(9), WriteMode::Append, &[]).await;
        table.load_version(version as u64).await.unwrap();
        deltalake::checkpoints::create_checkpoint(table, None)
            .await
            .unwrap();
        let size = log_size(table, "t").await.unwrap();
        assert_eq!(size.checkpoint_version, Some(version));
        size
    }

    #[tokio::test]
    async fn checkpoints_drop_tombstones_past_the_table_retention_only() {
        // Delta's default (a week): the compacted files' tombstones stay.
        let (test, mut table) = compacted(None).await;
        let size = checkpointed(&test, &mut table).await;
        assert_eq!(size.checkpoint_tombstones, 3, "{size:?}");
        assert!(size.checkpoint_actions > 3 && size.entries > 5, "{size:?}");

        // One second: a checkpoint written once they are older leaves them out.
        let (test, mut table) = compacted(Some(std::time::Duration::from_secs(1))).await;
        // Polled: the checkpoint writer compares with the clock. At most 30 s.
        let mut size = checkpointed(&test, &mut table).await;
        for _ in 0..150 {
            if size.checkpoint_tombstones == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            size = checkpointed(&test, &mut table).await;
        }
        assert_eq!(size.checkpoint_tombstones, 0, "{size:?}");
    }
}
