//! The rows of the data files this worker committed moments ago, kept in memory so that
//! the tasks downstream on the same worker read them without going to storage.
//!
//! Refine reads each new bronze file right after ingest committed it, and gold each new
//! silver file right after refine did: decoding those files again (decompressing every
//! payload) was most of what refine spent beyond its own work. A committed data file
//! never changes, so its rows as written are its rows as read, exactly when
//!
//! * the commit wrote one file (the rows of several batches in one file, in order), and
//! * every batch, without the partition columns, already had the writer's file schema,
//!   so the writer stored it as given (it converts other batches first).
//!
//! Other commits are not kept, and a file that is not here is read from storage. Entries
//! are dropped oldest first once their Arrow size passes the budget; a reader a few
//! seconds behind finds its files gone and reads them as before.
//!
//! Workers in one process (`smelter up`) share one cache, so refine finds the bronze
//! files every worker's ingest wrote, and the budget is the process's.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use smelter_common::config::WorkerConfig;

/// The rows of recently committed data files, by table and file.
#[derive(Debug, Clone, Default)]
pub struct RecentFiles {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    budget: usize,
    files: Mutex<Files>,
    hits: AtomicU64,
}

#[derive(Debug, Default)]
struct Files {
    rows: HashMap<String, Arc<Vec<RecordBatch>>>,
    /// Keys and sizes, oldest first.
    order: VecDeque<(String, usize)>,
    bytes: usize,
}

fn key(table_uri: &str, path: &str) -> String {
    format!("{}/{path}", table_uri.trim_end_matches('/'))
}

impl RecentFiles {
    /// Keeps up to `budget` bytes of rows (0 keeps nothing).
    pub fn new(budget: usize) -> Self {
        Self {
            inner: Arc::new(Shared {
                budget,
                ..Default::default()
            }),
        }
    }

    /// The budget `worker.recent_files_mb` sets.
    pub fn from_config(config: &WorkerConfig) -> Self {
        Self::new(
            usize::try_from(config.recent_files_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
        )
    }

    /// How many reads were answered from memory.
    pub fn hits(&self) -> u64 {
        self.inner.hits.load(Ordering::Relaxed)
    }

    /// Keeps `batches` as the rows of the file at `path` (relative to the table, as its
    /// log names it) if they are exactly what the file holds: each batch without the
    /// `partition_by` columns must have `file_schema`, the schema the writer encoded.
    pub fn keep(
        &self,
        table_uri: &str,
        path: &str,
        file_schema: &SchemaRef,
        partition_by: &[String],
        batches: &[RecordBatch],
    ) {
        if self.inner.budget == 0 {
            return;
        }
        let mut rows = Vec::with_capacity(batches.len());
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let columns: Vec<usize> = (0..batch.num_columns())
                .filter(|&i| !partition_by.contains(batch.schema_ref().field(i).name()))
                .collect();
            let Ok(stored) = batch.project(&columns) else {
                return;
            };
            if stored.schema_ref() != file_schema {
                return;
            }
            rows.push(stored);
        }
        let size: usize = rows.iter().map(RecordBatch::get_array_memory_size).sum();
        if size > self.inner.budget {
            return;
        }
        let key = key(table_uri, path);
        let mut files = self.inner.files.lock().unwrap_or_else(|e| e.into_inner());
        if files.rows.insert(key.clone(), Arc::new(rows)).is_some() {
            return;
        }
        files.order.push_back((key, size));
        files.bytes += size;
        while files.bytes > self.inner.budget {
            let Some((oldest, size)) = files.order.pop_front() else {
                break;
            };
            files.rows.remove(&oldest);
            files.bytes -= size;
        }
    }

    /// The rows of the file at `path` with only the `columns` named (all when `None`),
    /// as reading the file would give them, if they are here.
    pub fn get(
        &self,
        table_uri: &str,
        path: &str,
        columns: Option<&HashSet<String>>,
    ) -> Option<Vec<RecordBatch>> {
        let rows = {
            let files = self.inner.files.lock().unwrap_or_else(|e| e.into_inner());
            files.rows.get(&key(table_uri, path))?.clone()
        };
        let projected = rows
            .iter()
            .map(|batch| match columns {
                None => Some(batch.clone()),
                Some(columns) => {
                    let keep: Vec<usize> = (0..batch.num_columns())
                        .filter(|&i| columns.contains(batch.schema_ref().field(i).name()))
                        .collect();
                    batch.project(&keep).ok()
                }
            })
            .collect::<Option<Vec<_>>>()?;
        self.inner.hits.fetch_add(1, Ordering::Relaxed);
        Some(projected)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use arrow::array::RecordBatch;
    use arrow::compute::concat_batches;

    use super::RecentFiles;
    use crate::changes;
    use crate::commit::{CommitEnv, CommitOutcome, WriteMode, commit};
    use crate::location::TableStore;
    use crate::testing::{DAY_COLUMN, positions_batch, positions_schema};

    /// Offsets `from..from + n` of partition 1, every seventh flagged with an error.
    fn records(from: i64, n: i64) -> RecordBatch {
        positions_batch(
            "events",
            1,
            from..from + n,
            |offset| format!("k{offset}"),
            |offset| format!(r#"{{"n":{offset}}}"#),
            |offset| (offset % 7 == 0).then(|| "too large".to_string()),
        )
    }

    /// Appends `batches` to `bronze.events` in one commit; the files it added.
    async fn append(
        table: &mut deltalake::DeltaTable,
        env: &CommitEnv,
        by: &[String],
        batches: Vec<RecordBatch>,
    ) -> Vec<changes::DataFile> {
        let name = "bronze.events";
        let outcome = commit(table, name, batches, WriteMode::Append, by, vec![], env).await;
        let Ok(CommitOutcome::Committed { version }) = outcome else {
            panic!("not committed: {outcome:?}");
        };
        changes::range(table, name, version, version)
            .await
            .unwrap()
            .added
    }

    /// Rows read from memory are the rows read from the file: same schema, same values,
    /// with and without a projection. Only single-file commits are kept.
    #[tokio::test]
    async fn kept_rows_read_as_the_file_does() {
        let env = CommitEnv {
            recent: RecentFiles::new(64 << 20),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let store = TableStore::new(dir.path()).unwrap();
        let by = [DAY_COLUMN.to_string()];
        let mut table = store
            .open_or_create("bronze.events", &positions_schema(), &by, &env)
            .await
            .unwrap();
        // Two batches into one file (one partition: one day).
        let batches = vec![records(0, 300), records(300, 200)];
        let added = append(&mut table, &env, &by, batches).await;
        assert_eq!(added.len(), 1);
        let file = &added[0];
        let projection: HashSet<String> = ["offset", "payload", "error"]
            .into_iter()
            .map(String::from)
            .collect();
        for columns in [None, Some(&projection)] {
            let disk = changes::read(
                &table,
                "bronze.events",
                file,
                columns,
                &RecentFiles::default(),
            )
            .await
            .unwrap();
            let hits = env.recent.hits();
            let memory = changes::read(&table, "bronze.events", file, columns, &env.recent)
                .await
                .unwrap();
            assert_eq!(env.recent.hits(), hits + 1, "answered from memory");
            let schema = disk[0].schema();
            assert_eq!(memory[0].schema().fields(), schema.fields());
            assert_eq!(
                concat_batches(&schema, &memory).unwrap(),
                concat_batches(&schema, &disk).unwrap()
            );
        }
        // Rows of two days make two files: not kept.
        let two_days = records(500, 10);
        let mut columns = two_days.columns().to_vec();
        let date = positions_schema().index_of(DAY_COLUMN).unwrap();
        columns[date] = Arc::new(arrow::array::Date32Array::from_iter_values(
            (0..10).map(|i| 20_000 + i % 2),
        ));
        let two_days = RecordBatch::try_new(two_days.schema(), columns).unwrap();
        let added = append(&mut table, &env, &by, vec![two_days]).await;
        assert_eq!(added.len(), 2);
        let hits = env.recent.hits();
        for file in &added {
            let rows = changes::read(&table, "bronze.events", file, None, &env.recent)
                .await
                .unwrap();
            assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 5);
        }
        assert_eq!(env.recent.hits(), hits, "read from storage");
    }

    /// The oldest files go first once the budget is spent.
    #[test]
    fn the_oldest_files_leave_first() {
        let batch = records(0, 100);
        let size = batch.get_array_memory_size();
        let schema = batch.schema();
        let recent = RecentFiles::new(size * 2 + size / 2);
        for path in ["a", "b", "c"] {
            recent.keep(
                "file:///t",
                path,
                &schema,
                &[],
                std::slice::from_ref(&batch),
            );
        }
        assert!(recent.get("file:///t", "a", None).is_none());
        assert!(recent.get("file:///t", "b", None).is_some());
        assert!(recent.get("file:///t", "c", None).is_some());
        assert!(
            recent.get("file:///u", "c", None).is_none(),
            "another table"
        );
        // A batch not of the file's schema is not kept.
        let other = batch.project(&[0, 1]).unwrap();
        recent.keep("file:///t", "d", &schema, &[], &[other]);
        assert!(recent.get("file:///t", "d", None).is_none());
    }

    /// The workers of one process hold clones of one cache: a file one of them kept is
    /// there for the others, and they spend one budget.
    #[test]
    fn clones_share_files_and_budget() {
        let batch = records(0, 1_000);
        let schema = batch.schema();
        let config = smelter_common::config::WorkerConfig {
            recent_files_mb: 1,
            ..Default::default()
        };
        let ingest_side = RecentFiles::from_config(&config);
        let refine_side = ingest_side.clone();
        ingest_side.keep("file:///t", "a", &schema, &[], std::slice::from_ref(&batch));
        assert!(refine_side.get("file:///t", "a", None).is_some());
        assert_eq!(ingest_side.hits(), 1);
        // 1 MB holds this batch a few times over, not a hundred times.
        let size = batch.get_array_memory_size();
        assert!(size * 4 < 1 << 20 && size * 100 > 1 << 20, "{size} bytes");
        for i in 0..100 {
            refine_side.keep(
                "file:///t",
                &format!("b{i}"),
                &schema,
                &[],
                std::slice::from_ref(&batch),
            );
        }
        assert!(ingest_side.get("file:///t", "a", None).is_none());
        assert!(ingest_side.get("file:///t", "b99", None).is_some());
    }
}
