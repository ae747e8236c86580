//! Duplicate removal on key columns: first within the batch (first occurrence wins), then
//! against rows already in the silver table, optionally only within an event-time window
//! around the batch (`within: 1h`), which keeps the lookup to recent files.
//!
//! The lookup runs against the version the next commit will be built on ([`SilverAt`]);
//! the refine task is the table's only writer, and a racing owner is rejected by the txn
//! conflict check. The task's own commits do not update its loaded snapshot, so the table
//! itself is brought up to that version only when it must be read.
//!
//! A [`KeyCache`] keeps the table's keys (with their event time) in memory between the
//! task's own commits, so a batch is checked without scanning the table. It describes
//! exactly one table version: it is loaded from the table (the keys whose event time is at
//! or after a horizon), advanced only by the task's own commit landing as the next
//! version, and dropped on anything else (a foreign commit, a compaction, an unknown
//! outcome). A batch reaching before the horizon, or a key whose cached time falls outside
//! the window while the key exists, goes to the table as before.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::{cast, max, min};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{JoinType, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionContext, col, lit};
use deltalake::DeltaTable;

use super::key_times::KeyTimes;
use crate::Result;

const SEPARATOR: char = '\u{1f}';

/// Composite key of each row as one string (NULL if any key column is NULL).
fn row_keys(batch: &RecordBatch, keys: &[String]) -> Result<Vec<Option<String>>> {
    let columns: Vec<ArrayRef> = keys
        .iter()
        .map(|k| {
            let column = batch.column_by_name(k).ok_or_else(|| {
                arrow::error::ArrowError::SchemaError(format!("no key column {k}"))
            })?;
            cast(column.as_ref(), &DataType::Utf8)
        })
        .collect::<Result<_, _>>()?;
    let strings: Vec<&StringArray> = columns
        .iter()
        .filter_map(|c| c.as_any().downcast_ref::<StringArray>())
        .collect();
    Ok((0..batch.num_rows())
        .map(|row| {
            let mut key = String::with_capacity(
                strings
                    .iter()
                    .map(|s| s.value_length(row) as usize + 1)
                    .sum(),
            );
            for (i, s) in strings.iter().enumerate() {
                if s.is_null(row) {
                    return None;
                }
                if i > 0 {
                    key.push(SEPARATOR);
                }
                key.push_str(s.value(row));
            }
            Some(key)
        })
        .collect())
}

/// Most keys a [`KeyCache`] holds; beyond it, keys older than two windows are evicted
/// (and without a window the table is scanned per batch instead).
const CACHE_MAX_KEYS: usize = 4_000_000;

/// The keys of one silver table version, with their (latest) event time in µs.
#[derive(Debug, Default)]
pub struct KeyCache {
    version: Option<i64>,
    keys: KeyTimes,
    /// Every key whose event time is at or after this is in `keys`.
    horizon: i64,
}

impl KeyCache {
    /// Forgets everything (the table changed in a way the task did not make).
    pub fn invalidate(&mut self) {
        self.version = None;
        self.keys.clear();
    }

    /// The task's own commit landed as `version` with `added` keys; the cache follows it
    /// if it described the version before, and is dropped otherwise.
    pub fn committed(&mut self, version: i64, added: Vec<(String, i64)>, window: Option<Duration>) {
        if self.version != Some(version - 1) {
            self.invalidate();
            return;
        }
        self.version = Some(version);
        for (key, ts) in added {
            self.keys.insert_latest(&key, ts);
        }
        if self.keys.len() > CACHE_MAX_KEYS {
            match window {
                Some(window) => {
                    let newest = self.keys.newest().unwrap_or(i64::MIN);
                    let keep_from = newest.saturating_sub(2 * window.as_micros() as i64);
                    self.keys.retain(|ts| ts >= keep_from);
                    self.horizon = self.horizon.max(keep_from);
                }
                None => self.invalidate(),
            }
        }
    }
}

/// The silver table as the next commit will see it.
pub struct SilverAt<'a> {
    /// The table; its loaded snapshot may trail `version`.
    pub table: &'a mut DeltaTable,
    /// Its `layer.name`.
    pub name: &'a str,
    /// The latest version: the one the next commit builds on.
    pub version: i64,
}

impl SilverAt<'_> {
    /// The table with its snapshot brought up to the latest version, to be read.
    async fn current(&mut self) -> Result<&DeltaTable> {
        self.version = smelter_lake::log::refresh(self.table, self.name).await?;
        Ok(self.table)
    }
}

/// Which rows dedupe keeps, and the keys (with event time) of those rows.
pub struct Deduped {
    /// One value per row of the batch: whether it is kept.
    pub keep: BooleanArray,
    /// Rows removed.
    pub removed: usize,
    /// Keys of the kept rows, for [`KeyCache::committed`].
    pub keys: Vec<(String, i64)>,
}

/// Event times of `batch`'s rows in µs (0 without a window column).
fn event_times(batch: &RecordBatch, window: Option<(&str, Duration)>) -> Vec<i64> {
    let ts = window.and_then(|(column, _)| {
        batch
            .column_by_name(column)?
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .cloned()
    });
    (0..batch.num_rows())
        .map(|i| {
            ts.as_ref()
                .filter(|t| t.is_valid(i))
                .map_or(0, |t| t.value(i))
        })
        .collect()
}

/// Marks the rows whose key repeats within the batch or already exists in `silver` (the
/// batch needs only the key and window columns), using (and loading, if needed) `cache`.
pub async fn dedupe(
    batch: RecordBatch,
    keys: &[String],
    window: Option<(&str, Duration)>,
    silver: &mut SilverAt<'_>,
    cache: &mut KeyCache,
) -> Result<Deduped> {
    if batch.num_rows() == 0 {
        return Ok(Deduped {
            keep: BooleanArray::from(Vec::<bool>::new()),
            removed: 0,
            keys: Vec::new(),
        });
    }
    let row_keys = row_keys(&batch, keys)?;
    let times = event_times(&batch, window);
    // The event-time range a matching row may have: the batch's, padded by the window.
    let (lo, hi) = match window {
        Some((_, within)) => {
            let pad = within.as_micros() as i64;
            let lo = times.iter().copied().min().unwrap_or(0);
            let hi = times.iter().copied().max().unwrap_or(0);
            (lo.saturating_sub(pad), hi.saturating_add(pad))
        }
        None => (i64::MIN, i64::MAX),
    };
    let existing = match cached(cache, silver, &row_keys, lo, hi, window, keys).await? {
        Some(existing) => existing,
        None => existing_keys(&batch, keys, window, silver.current().await?).await?,
    };
    let keep: BooleanArray = {
        let mut seen: HashSet<&str, _> =
            HashSet::with_capacity_and_hasher(row_keys.len(), ahash::RandomState::new());
        row_keys
            .iter()
            .map(|key| {
                Some(
                    key.as_deref()
                        .is_none_or(|k| !existing.contains(k) && seen.insert(k)),
                )
            })
            .collect()
    };
    let kept_keys = row_keys
        .into_iter()
        .zip(times)
        .zip(keep.iter())
        .filter_map(|((key, ts), keep)| Some((key?, ts)).filter(|_| keep == Some(true)))
        .collect();
    let removed = keep.len() - keep.true_count();
    Ok(Deduped {
        keep,
        removed,
        keys: kept_keys,
    })
}

/// The batch's keys that exist in the table, answered from the cache (loading it first if
/// it does not describe the table's version or does not reach back to `lo`); `None` when
/// the table must be asked instead.
async fn cached(
    cache: &mut KeyCache,
    silver: &mut SilverAt<'_>,
    row_keys: &[Option<String>],
    lo: i64,
    hi: i64,
    window: Option<(&str, Duration)>,
    keys: &[String],
) -> Result<Option<HashSet<String>>> {
    if cache.version != Some(silver.version) || cache.horizon > lo {
        let table = silver.current().await?;
        if window.is_none() && smelter_lake::log::row_count(table) as usize > CACHE_MAX_KEYS {
            cache.invalidate();
            return Ok(None);
        }
        let version = smelter_lake::log::version(table);
        load(cache, table, version, lo, window, keys).await?;
    }
    let mut existing = HashSet::new();
    for key in row_keys.iter().flatten() {
        match cache.keys.get(key) {
            None => {}
            Some(ts) if (lo..=hi).contains(&ts) => {
                existing.insert(key.clone());
            }
            // The key exists, but its cached (latest) time is outside the window: an
            // earlier row of it may be inside. Only the table can tell.
            Some(_) => return Ok(None),
        }
    }
    Ok(Some(existing))
}

/// Fills `cache` with the keys of `table` whose event time is at or after `from`.
async fn load(
    cache: &mut KeyCache,
    table: &DeltaTable,
    version: i64,
    from: i64,
    window: Option<(&str, Duration)>,
    keys: &[String],
) -> Result<()> {
    cache.invalidate();
    if smelter_lake::log::row_count(table) > 0 {
        let ctx = SessionContext::new();
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| crate::WorkerError::delta("dedupe", e))?;
        let mut rows = ctx.read_table(table.table_provider().await?)?;
        let mut columns: Vec<_> = keys.iter().map(|k| col(k.as_str())).collect();
        if let Some((ts_column, _)) = window {
            rows = rows.filter(col(ts_column).gt_eq(lit(ScalarValue::TimestampMicrosecond(
                Some(from),
                Some("UTC".into()),
            ))))?;
            columns.push(col(ts_column));
        }
        for batch in rows.select(columns)?.collect().await? {
            let times = event_times(&batch, window);
            for (key, ts) in row_keys(&batch, keys)?.into_iter().zip(times) {
                if let Some(key) = key {
                    cache.keys.insert_latest(&key, ts);
                }
            }
        }
    }
    cache.version = Some(version);
    cache.horizon = if window.is_some() { from } else { i64::MIN };
    Ok(())
}

async fn existing_keys(
    batch: &RecordBatch,
    keys: &[String],
    window: Option<(&str, Duration)>,
    table: &DeltaTable,
) -> Result<HashSet<String>> {
    if smelter_lake::log::row_count(table) == 0 {
        return Ok(HashSet::new());
    }
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| crate::WorkerError::delta("dedupe", e))?;
    let provider = table.table_provider().await?;
    let mut existing = ctx.read_table(provider)?;
    if let Some((ts_column, within)) = window
        && let Some(ts) = batch
            .column_by_name(ts_column)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        && let (Some(lo), Some(hi)) = (min(ts), max(ts))
    {
        let pad = within.as_micros() as i64;
        let bound = |v: i64| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(v),
                Some("UTC".into()),
            ))
        };
        existing = existing.filter(
            col(ts_column)
                .gt_eq(bound(lo - pad))
                .and(col(ts_column).lt_eq(bound(hi + pad))),
        )?;
    }
    // Only this batch's keys matter: semi-join the table against them.
    let key_columns: Vec<ArrayRef> = keys
        .iter()
        .filter_map(|k| batch.column_by_name(k).cloned())
        .collect();
    let key_schema = Arc::new(Schema::new(
        keys.iter()
            .zip(&key_columns)
            .map(|(k, c)| Field::new(format!("__k_{k}"), c.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let key_batch = RecordBatch::try_new(key_schema.clone(), key_columns)?;
    let candidates = ctx.read_table(Arc::new(MemTable::try_new(
        key_schema,
        vec![vec![key_batch]],
    )?))?;
    let left: Vec<String> = keys.to_vec();
    let right: Vec<String> = keys.iter().map(|k| format!("__k_{k}")).collect();
    let left_refs: Vec<&str> = left.iter().map(String::as_str).collect();
    let right_refs: Vec<&str> = right.iter().map(String::as_str).collect();
    let found = existing
        .select(keys.iter().map(|k| col(k.as_str())).collect::<Vec<_>>())?
        .join(
            candidates,
            JoinType::LeftSemi,
            &left_refs,
            &right_refs,
            None,
        )?
        .collect()
        .await?;
    let mut out = HashSet::new();
    for batch in found {
        out.extend(row_keys(&batch, keys)?.into_iter().flatten());
    }
    Ok(out)
}
