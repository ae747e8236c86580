//! The table verifier behind `smelter verify`: replays a table's `_delta_log` commit by
//! commit and checks what the commit protocol (docs/exactly-once.md) promises, independently of
//! the writers' own bookkeeping:
//!
//! * log versions are contiguous from the first one kept;
//! * per txn appId (source partition, upstream table, writer epoch) versions strictly
//!   increase: each version is committed once, and never after a later one — except that
//!   a `RESTORE` commit puts positions back (what follows it is checked from there);
//! * no data file is added twice (a `RESTORE` puts back files the table held before);
//! * every file the log still references exists in storage;
//! * bronze tables with source positions: per (topic, partition) the offsets are contiguous,
//!   each present once, and the partition's txn version is its largest offset — offsets a
//!   delete took out (recorded in its commit, [`DELETED_POSITIONS_KEY`]) counting as
//!   accounted for.
//!
//! Each violation is a [`Finding`] naming the version or partition; a clean table has none.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::AsArray;
use arrow::datatypes::{Int32Type, Int64Type};
use datafusion::object_store::ObjectStoreExt;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::prelude::SessionContext;
use deltalake::kernel::Action;
use serde::Serialize;

use crate::app_id::AppId;
use crate::commit::DELETED_POSITIONS_KEY;
use crate::history;
use crate::location::TableStore;
use crate::log;
use crate::{LakeError, Result};

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Which check: `log_gap`, `txn_regressed`, `txn_repeated`, `file_added_twice`, `file_missing`,
    /// `offset_gap`, `offset_duplicate`, `txn_offset_mismatch`.
    pub check: &'static str,
    /// Where and what.
    pub message: String,
}

/// What the verifier saw and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `layer.name`.
    pub table: String,
    /// First and last log versions replayed.
    pub first_version: i64,
    /// Latest version.
    pub last_version: i64,
    /// Distinct txn appIds and their latest versions.
    pub txns: BTreeMap<String, i64>,
    /// Data files the log references now.
    pub live_files: usize,
    /// Bronze only: (topic/partition) -> (first offset, last offset, rows).
    pub partitions: BTreeMap<String, (i64, i64, i64)>,
    /// Every violation; empty means clean.
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when nothing was found.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    fn find(&mut self, check: &'static str, message: String) {
        self.findings.push(Finding { check, message });
    }
}

/// Verifies table `name` under `tables`.
pub async fn verify(tables: &TableStore, name: &str) -> Result<Report> {
    let table = tables.open(name).await?;
    let latest = log::version(&table);
    let store = table.object_store();
    let mut report = Report {
        table: name.to_string(),
        last_version: latest,
        ..Default::default()
    };
    let log = history::read_log(&table, name).await?;
    report.first_version = log.first().map_or(latest + 1, |(version, _)| *version);
    let mut added: BTreeSet<String> = BTreeSet::new();
    let mut live: BTreeSet<String> = BTreeSet::new();
    let mut deleted = Deleted::new();
    for (version, actions) in log {
        let Some(actions) = actions else {
            report.find(
                "log_gap",
                format!("commit {version} is missing from the log"),
            );
            continue;
        };
        let restored_to = crate::changes::restored_to(&actions);
        if let Some(to) = restored_to {
            // Offsets deleted after the restored version are back in the table.
            for runs in deleted.values_mut() {
                runs.retain(|(at, _, _)| *at <= to);
            }
        }
        for action in actions {
            match action {
                Action::Txn(txn) if restored_to.is_some() => {
                    report.txns.insert(txn.app_id.clone(), txn.version);
                }
                Action::Add(add) if restored_to.is_some() && !live.contains(&add.path) => {
                    added.insert(add.path.clone());
                    live.insert(add.path);
                }
                Action::Txn(txn) => {
                    if let Some(&previous) = report.txns.get(&txn.app_id) {
                        if txn.version < previous {
                            report.find(
                                "txn_regressed",
                                format!(
                                    "v{version}: txn {} went back from {previous} to {}",
                                    txn.app_id, txn.version
                                ),
                            );
                        } else if txn.version == previous {
                            report.find(
                                "txn_repeated",
                                format!(
                                    "v{version}: txn {} version {previous} committed again",
                                    txn.app_id
                                ),
                            );
                        }
                    }
                    report.txns.insert(txn.app_id.clone(), txn.version);
                }
                Action::Add(add) => {
                    if !added.insert(add.path.clone()) {
                        report.find(
                            "file_added_twice",
                            format!("v{version}: {} was added before", add.path),
                        );
                    }
                    live.insert(add.path);
                }
                Action::Remove(remove) => {
                    live.remove(&remove.path);
                }
                Action::CommitInfo(info) => {
                    if let Some(runs) = info.info.get(DELETED_POSITIONS_KEY) {
                        for (key, first, last) in crate::delete::deleted_runs(runs) {
                            deleted.entry(key).or_default().push((version, first, last));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    report.live_files = live.len();
    for path in &live {
        let location =
            ObjectPath::from_url_path(path).map_err(|e| LakeError::generic(name, e.to_string()))?;
        if store.head(&location).await.is_err() {
            report.find(
                "file_missing",
                format!("{path} is referenced but not in storage"),
            );
        }
    }
    let has_positions = log::arrow_schema(&table, name).is_ok_and(|schema| {
        ["topic", "partition", "offset"]
            .iter()
            .all(|c| schema.field_with_name(c).is_ok())
    });
    if name.starts_with("bronze.") && has_positions {
        check_offsets(&table, name, &deleted, &mut report).await?;
    }
    Ok(report)
}

/// Offsets deletes took out, as runs per `topic/partition`, with the version of the delete.
type Deleted = BTreeMap<String, Vec<(i64, i64, i64)>>;

/// Bronze: per (topic, partition), offsets contiguous and unique, and the partition's txn
/// version equal to its largest offset; `deleted` offsets fill the gaps they left.
async fn check_offsets(
    table: &deltalake::DeltaTable,
    name: &str,
    deleted: &Deleted,
    report: &mut Report,
) -> Result<()> {
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| LakeError::delta(name, e))?;
    let provider = table.table_provider().await?;
    ctx.register_table("bronze", provider)?;
    let batches = ctx
        .sql(
            "SELECT topic, \"partition\", min(\"offset\"), max(\"offset\"), count(*), \
             count(DISTINCT \"offset\") FROM bronze GROUP BY topic, \"partition\"",
        )
        .await?
        .collect()
        .await?;
    for batch in batches {
        let topic = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)?;
        let topic = topic.as_string::<i32>();
        let partition = batch.column(1).as_primitive::<Int32Type>();
        let (min, max) = (
            batch.column(2).as_primitive::<Int64Type>(),
            batch.column(3).as_primitive::<Int64Type>(),
        );
        let (rows, distinct) = (
            batch.column(4).as_primitive::<Int64Type>(),
            batch.column(5).as_primitive::<Int64Type>(),
        );
        for i in 0..batch.num_rows() {
            let key = format!("{}/{}", topic.value(i), partition.value(i));
            let (mut first, mut last, n, unique) =
                (min.value(i), max.value(i), rows.value(i), distinct.value(i));
            let mut accounted = unique;
            for (_, from, to) in deleted.get(&key).into_iter().flatten() {
                first = first.min(*from);
                last = last.max(*to);
                accounted += to - from + 1;
            }
            report.partitions.insert(key.clone(), (first, last, n));
            if unique != n {
                report.find(
                    "offset_duplicate",
                    format!("{key}: {} offsets appear more than once", n - unique),
                );
            }
            if accounted != last - first + 1 {
                report.find(
                    "offset_gap",
                    format!(
                        "{key}: {} of the offsets {first}..={last} are missing",
                        last - first + 1 - accounted
                    ),
                );
            }
            let txn = report
                .txns
                .iter()
                .find(|(app, _)| {
                    matches!(AppId::parse(app), Some(AppId::Source { topic: t, partition: p, .. })
                        if t == topic.value(i) && p == partition.value(i))
                })
                .map(|(_, v)| *v);
            if txn != Some(last) {
                report.find(
                    "txn_offset_mismatch",
                    format!("{key}: txn version {txn:?} but the last offset is {last}"),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestTable;
    use crate::{AppId, CommitEnv, CommitOutcome, TxnUpdate, WriteMode, commit};

    /// The verifier's epoch check can fail: a log whose writer epoch goes back (a stale
    /// holder landing after its successor) is reported, a clean one is not.
    #[tokio::test]
    async fn an_epoch_that_goes_back_is_reported() {
        let env = CommitEnv::default();
        let t = TestTable::create("silver.t", &env).await;
        let mut table = t.store.open("silver.t").await.unwrap();
        let mut put = async |previous: Option<i64>, epoch: i64| {
            let txns = vec![TxnUpdate::new(&AppId::Epoch, previous, epoch)];
            let outcome = commit(
                &mut table,
                "silver.t",
                vec![t.batch(epoch)],
                WriteMode::Append,
                &[],
                txns,
                &env,
            )
            .await
            .unwrap();
            assert!(matches!(outcome, CommitOutcome::Committed { .. }));
        };
        put(None, 5).await;
        put(Some(5), 7).await;
        assert!(verify(&t.store, "silver.t").await.unwrap().is_clean());
        put(Some(7), 6).await;
        let report = verify(&t.store, "silver.t").await.unwrap();
        let checks: Vec<&str> = report.findings.iter().map(|f| f.check).collect();
        assert_eq!(checks, ["txn_regressed"], "{:?}", report.findings);
        assert!(report.findings[0].message.contains("smelter/epoch"));
    }

    /// Offsets a delete took out are accounted for (its commit records them), the last one
    /// included; the same rows taken out by a rewrite that does not record them are gaps.
    #[tokio::test]
    async fn deleted_offsets_are_not_gaps_but_unrecorded_ones_are() {
        use crate::commit::{Rewrite, rewrite};
        use crate::delete::{SqlPredicate, delete};
        use crate::testing::{DAY_COLUMN, positions_batch, positions_schema};

        let env = CommitEnv::default();
        let dir = tempfile::tempdir().unwrap();
        let store = TableStore::new(dir.path()).unwrap();
        let name = "bronze.t";
        let mut table = store
            .open_or_create(name, &positions_schema(), &[DAY_COLUMN.to_string()], &env)
            .await
            .unwrap();
        let app = AppId::source("p", "t", 0);
        let batch = positions_batch(
            "t",
            0,
            0..10,
            |o| o.to_string(),
            |o| o.to_string(),
            |_| None,
        );
        commit(
            &mut table,
            name,
            vec![batch],
            WriteMode::Append,
            &[DAY_COLUMN.to_string()],
            vec![TxnUpdate::new(&app, None, 9)],
            &env,
        )
        .await
        .unwrap();
        assert!(verify(&store, name).await.unwrap().is_clean());

        let schema = log::arrow_schema(&table, name).unwrap();
        let predicate = SqlPredicate::new("\"offset\" IN (3, 4, 9)", &schema, name).unwrap();
        let deleted = delete(&mut table, name, &predicate, &env).await.unwrap();
        assert_eq!(deleted.rows_deleted, 3);
        assert_eq!(deleted.positions.len(), 3);
        let report = verify(&store, name).await.unwrap();
        assert!(report.is_clean(), "{:?}", report.findings);

        // Offset 5 vanishes in a rewrite that says nothing of it.
        log::refresh(&mut table, name).await.unwrap();
        let file = crate::changes::snapshot(&table, name).unwrap().remove(0);
        let rows = crate::changes::read(&table, name, &file, None, &Default::default())
            .await
            .unwrap();
        let kept: Vec<_> = rows
            .iter()
            .map(|b| {
                let b = crate::changes::conform(b, &file, &schema).unwrap();
                let offsets = b
                    .column_by_name("offset")
                    .unwrap()
                    .as_primitive::<Int64Type>();
                let keep: arrow::array::BooleanArray =
                    offsets.iter().map(|o| Some(o != Some(5))).collect();
                arrow::compute::filter_record_batch(&b, &keep).unwrap()
            })
            .collect();
        rewrite(
            &mut table,
            name,
            Rewrite {
                removes: vec![file.path],
                groups: vec![kept],
                copied: Vec::new(),
                readds: Vec::new(),
                changes: Vec::new(),
                operation: deltalake::protocol::DeltaOperation::Delete { predicate: None },
                data_change: true,
                txns: Vec::new(),
                metadata: Default::default(),
                table_metadata: None,
            },
            &env,
        )
        .await
        .unwrap();
        let report = verify(&store, name).await.unwrap();
        let checks: Vec<&str> = report.findings.iter().map(|f| f.check).collect();
        assert_eq!(checks, ["offset_gap"], "{:?}", report.findings);
        assert!(
            report.findings[0]
                .message
                .contains("1 of the offsets 0..=9")
        );
    }
}
