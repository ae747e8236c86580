//! Every txn of a table at once: the version of each appId in a snapshot, read from its
//! checkpoint and the commit entries after it.
//!
//! Why: delta-rs answers "the version of `appId`" by replaying the log since the last
//! checkpoint for that one id. A files source asks that for every file it lists (two ids
//! per file: its position and its end), so a prefix of 20,000 files cost 40,000 replays of
//! a log that grows with it. One read of the checkpoint's `txn` column and the few commit
//! entries after it answers them all ([`crate::heads`] keeps the answer and carries it
//! forward commit by commit).
//!
//! Exactness: a checkpoint at version `c` holds the latest txn of every appId up to `c`
//! (Delta's protocol: the reconciled state); every commit entry in `c+1 ..= v` is then
//! applied in order, a later txn of an id replacing an earlier one. A commit entry missing
//! in that range is an error, never an empty answer.

use std::collections::HashMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use object_store::ObjectStoreExt;

use crate::{LakeError, Result, changes, log};

/// The version of every txn appId in `table`'s loaded snapshot.
pub async fn all_txns(table: &DeltaTable, name: &str) -> Result<HashMap<String, i64>> {
    let version = log::version(table);
    let mut txns = HashMap::new();
    let mut from = 0;
    if let Some((checkpoint, parts)) = last_checkpoint(table, name, version).await? {
        for part in checkpoint_files(checkpoint, parts) {
            read_checkpoint_txns(table, name, &part, &mut txns).await?;
        }
        from = checkpoint + 1;
    }
    for v in from..=version {
        let actions = changes::commit_actions(table, name, v)
            .await?
            .ok_or_else(|| LakeError::Invalid {
                table: name.to_string(),
                message: format!(
                    "commit entry {v} is missing from the log (after checkpoint {})",
                    from - 1
                ),
            })?;
        for action in actions {
            if let Action::Txn(txn) = action {
                txns.insert(txn.app_id, txn.version);
            }
        }
    }
    Ok(txns)
}

/// The checkpoint `_last_checkpoint` names and its part count, if it is at or before
/// `version`; else the latest checkpoint at or before it (see [`checkpoint_at_or_before`]).
async fn last_checkpoint(
    table: &DeltaTable,
    name: &str,
    version: i64,
) -> Result<Option<(i64, Option<u64>)>> {
    match latest_checkpoint(table, name).await? {
        // A snapshot loaded before the latest checkpoint: the latest one at or before it,
        // found by listing (the log before it may have been cleaned up).
        Some((checkpoint, _)) if checkpoint > version => {
            checkpoint_at_or_before(table, name, version).await
        }
        latest => Ok(latest),
    }
}

/// The checkpoint `_last_checkpoint` names, and its part count (`None` if there is none).
pub(crate) async fn latest_checkpoint(
    table: &DeltaTable,
    name: &str,
) -> Result<Option<(i64, Option<u64>)>> {
    let log_store = table.log_store();
    let store = log_store.object_store(None);
    let path = log_store.log_path().clone().join("_last_checkpoint");
    let bytes = match store.get(&path).await {
        Ok(got) => got
            .bytes()
            .await
            .map_err(|e| LakeError::delta(name, e.into()))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(LakeError::delta(name, e.into())),
    };
    let hint: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| LakeError::Invalid {
            table: name.to_string(),
            message: format!("_last_checkpoint is not JSON: {e}"),
        })?;
    Ok(hint["version"]
        .as_i64()
        .map(|checkpoint| (checkpoint, hint["parts"].as_u64())))
}

/// The latest classic checkpoint of `table` at or before `version`, and its part count,
/// from a listing of the log.
async fn checkpoint_at_or_before(
    table: &DeltaTable,
    name: &str,
    version: i64,
) -> Result<Option<(i64, Option<u64>)>> {
    use futures::TryStreamExt as _;
    let log_store = table.log_store();
    let store = log_store.object_store(None);
    let entries: Vec<_> = store
        .list(Some(log_store.log_path()))
        .try_collect()
        .await
        .map_err(|e| LakeError::delta(name, e.into()))?;
    let mut best: Option<(i64, Option<u64>)> = None;
    for entry in entries {
        let Some(file) = entry.location.filename() else {
            continue;
        };
        let mut parts = file.split('.');
        let (Some(v), Some("checkpoint")) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(v) = v.parse::<i64>() else { continue };
        // `V.checkpoint.parquet` or `V.checkpoint.I.N.parquet`.
        let rest: Vec<&str> = parts.collect();
        let count = match rest.as_slice() {
            ["parquet"] => None,
            [_, n, "parquet"] => n.parse::<u64>().ok(),
            _ => continue,
        };
        if v <= version && best.is_none_or(|(b, _)| v > b) {
            best = Some((v, count));
        }
    }
    Ok(best)
}

/// The file names of a classic checkpoint (single or multi-part).
pub(crate) fn checkpoint_files(version: i64, parts: Option<u64>) -> Vec<String> {
    match parts {
        Some(n) if n > 1 => (1..=n)
            .map(|i| format!("{version:020}.checkpoint.{i:010}.{n:010}.parquet"))
            .collect(),
        _ => vec![format!("{version:020}.checkpoint.parquet")],
    }
}

/// Adds the `txn` rows of one checkpoint file to `txns`.
async fn read_checkpoint_txns(
    table: &DeltaTable,
    name: &str,
    file: &str,
    txns: &mut HashMap<String, i64>,
) -> Result<()> {
    let log_store = table.log_store();
    let store = log_store.object_store(None);
    let path = log_store.log_path().clone().join(file);
    let delta = |e: object_store::Error| LakeError::delta(name, e.into());
    let bytes = store
        .get(&path)
        .await
        .map_err(delta)?
        .bytes()
        .await
        .map_err(delta)?;
    let parquet = |e: deltalake::parquet::errors::ParquetError| LakeError::delta(name, e.into());
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(parquet)?;
    let Some(root) = builder
        .schema()
        .fields()
        .iter()
        .position(|f| f.name() == "txn")
    else {
        return Ok(()); // a checkpoint of a table that never had a txn
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [root]);
    for batch in builder.with_projection(mask).build().map_err(parquet)? {
        let batch = batch?;
        let txn = batch.column(0).as_struct();
        let (Some(app_ids), Some(versions)) =
            (txn.column_by_name("appId"), txn.column_by_name("version"))
        else {
            continue;
        };
        let app_ids = arrow::compute::cast(app_ids, &arrow::datatypes::DataType::Utf8)?;
        let app_ids = app_ids.as_string::<i32>();
        let versions = arrow::compute::cast(versions, &arrow::datatypes::DataType::Int64)?;
        let versions = versions.as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            if txn.is_valid(row) && app_ids.is_valid(row) && versions.is_valid(row) {
                txns.insert(app_ids.value(row).to_string(), versions.value(row));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app_id::AppId;
    use crate::commit::{CommitEnv, CommitOutcome, TxnUpdate, WriteMode, commit};
    use crate::testing::TestTable;

    /// Across checkpoints (every 10 versions here), `all_txns` answers what delta-rs's
    /// one-id replay answers, for every id and at every version.
    #[tokio::test]
    async fn all_txns_agrees_with_the_one_id_replay_across_checkpoints() {
        let env = CommitEnv::default();
        let t = TestTable::create("silver.t", &env).await;
        let mut table = t.store.open("silver.t").await.unwrap();
        let ids: Vec<AppId> = (0..7)
            .map(|p| AppId::source("p", &format!("f-{p}.ndjson"), 0))
            .collect();
        let mut at: HashMap<usize, i64> = HashMap::new();
        for round in 0..25_i64 {
            // Each commit moves two or three ids; some ids stop moving early.
            let moving: Vec<usize> = (0..7)
                .filter(|i| !(round as usize + i).is_multiple_of(3) && (*i < 4 || round < 12))
                .collect();
            let txns = moving
                .iter()
                .map(|&i| {
                    let next = at.get(&i).map_or(0, |v| v + 1 + i as i64);
                    let update = TxnUpdate::new(&ids[i], at.get(&i).copied(), next);
                    at.insert(i, next);
                    update
                })
                .collect();
            let outcome = commit(
                &mut table,
                "silver.t",
                vec![t.batch(3)],
                WriteMode::Append,
                &[],
                txns,
                &env,
            )
            .await
            .unwrap();
            let CommitOutcome::Committed { version } = outcome else {
                panic!("{outcome:?}");
            };
            if version % 10 == 9 {
                // As the commit path does every `checkpointInterval` versions.
                log::refresh(&mut table, "silver.t").await.unwrap();
                deltalake::checkpoints::create_checkpoint(&table, None)
                    .await
                    .unwrap();
            }
        }
        let latest = log::refresh(&mut table, "silver.t").await.unwrap();
        let log_dir = t.dir.path().join("silver/t/_delta_log");
        let listing: Vec<String> = std::fs::read_dir(&log_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".json"))
            .collect();
        assert!(
            log_dir
                .join(format!("{:020}.checkpoint.parquet", 19))
                .exists(),
            "{listing:?} {:?}",
            t.dir.path()
        );
        assert!(
            latest >= 20,
            "checkpoints were written at 9 and 19: {latest}"
        );
        for version in [latest, 19, 15, 9, 3] {
            let mut snapshot = table.clone();
            snapshot.load_version(version as u64).await.unwrap();
            let all = all_txns(&snapshot, "silver.t").await.unwrap();
            for id in &ids {
                let one = log::txn_version(&snapshot, id).await.unwrap();
                assert_eq!(all.get(&id.to_string()).copied(), one, "{id} at {version}");
            }
        }
        // The log before checkpoint 9 cleaned up (as maintenance does): a snapshot loaded
        // before the latest checkpoint starts from checkpoint 9, not from version 0.
        let mut at_15 = table.clone();
        at_15.load_version(15).await.unwrap();
        let before = all_txns(&at_15, "silver.t").await.unwrap();
        let deleted = crate::log_cleanup::clean_up(&table, "silver.t", 15, i64::MAX / 2)
            .await
            .unwrap();
        assert!(deleted > 0);
        assert!(!log_dir.join(format!("{:020}.json", 0)).exists());
        assert_eq!(all_txns(&at_15, "silver.t").await.unwrap(), before);
    }
}
