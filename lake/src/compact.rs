//! Compaction: small files bin-packed into larger ones in a maintenance commit.
//!
//! A compaction is a [`rewrite`](crate::commit::rewrite) with `dataChange = false`: the
//! same rows in fewer files, which readers of new data (refine, incremental gold) skip. It
//! takes the commit lock like every other commit, so it never races a streaming writer's
//! log write and works on arbitrated stores too; appends that land while it reads and
//! writes are untouched (it removes only the files it read). If another rewrite took one
//! of its files meanwhile (a delete), it writes nothing and plans again.
//!
//! A full compaction (`smelter compact`, Delta's OPTIMIZE) packs every small file. The
//! maintenance task's is **tiered** ([`CompactOptions::tiered`]): a file's tier is how
//! many times the fan-in (`min_small_files`) it is smaller than the target, and only a
//! tier of one partition holding at least fan-in files is packed — into files about
//! fan-in times larger, a tier up. Packing every small file each pass would rewrite the
//! output of every earlier pass again until it reached the target: a streaming table
//! compacted every few seconds had each byte rewritten once per pass (in the in-process
//! bench, maintenance every 2 s more than doubled the pipeline's CPU). Tiered, a byte is
//! rewritten at most once per tier, log_fan-in(target / the writers' file size) times,
//! and a partition keeps fewer than fan-in small files per tier.
//!
//! A compaction commits in slices: bins are committed a few at a time, each slice holding
//! at most about `target_file_bytes` of input (and at least one bin), so what it holds in
//! memory — the decoded rows of a rewritten bin, the bytes of a copied one — is bounded by
//! the target file size, not by how many small files the table has gathered; and on a
//! slow store each slice lands as soon as it is written rather than at the end of the
//! whole pass.
//!
//! Maintenance also copies a bin's row groups into the new file instead of decoding and
//! encoding its rows, when they are large enough ([`CompactOptions::copy_row_groups`],
//! [`crate::concat`]): the same rows, a fraction of the work. `smelter compact` and
//! Z-ordered bins always rewrite rows.

use std::collections::BTreeMap;

use deltalake::DeltaTable;
use deltalake::protocol::DeltaOperation;

use crate::changes::{self, DataFile};
use crate::commit::{CommitEnv, Rewrite, RewriteOutcome, rewrite};
use crate::concat::concat;
use crate::heads::LiveFile;
use crate::log::{self, arrow_schema, refresh};
use crate::{LakeError, Result};

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Compaction {
    /// The table version of the last compaction commit, if one was made.
    pub version: Option<i64>,
    /// Commits made: one per slice of bins (see [`compact`]).
    pub commits: u64,
    /// Small files replaced.
    pub files_removed: u64,
    /// Files written in their place.
    pub files_added: u64,
}

/// When and how to compact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactOptions {
    /// Files smaller than this are small; bins are filled up to it.
    pub target_file_bytes: u64,
    /// Compact only when the table has at least this many small files (at least 2).
    pub min_small_files: usize,
    /// Write each bin's rows in Z-order over these columns (see [`crate::zorder`]).
    pub zorder_by: Vec<String>,
    /// Pack only tiers of similar-sized files, `min_small_files` at a time (see the
    /// module docs), instead of every small file.
    pub tiered: bool,
    /// Copy the row groups of a bin instead of rewriting its rows where that is exact
    /// and each of its row groups has at least this many compressed bytes
    /// ([`crate::concat`], usually [`crate::concat::COPY_MIN_ROW_GROUP_BYTES`]); never
    /// with `zorder_by`.
    pub copy_row_groups: Option<i64>,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            target_file_bytes: 128 * 1024 * 1024,
            min_small_files: 2,
            zorder_by: Vec::new(),
            tiered: false,
            copy_row_groups: None,
        }
    }
}

/// The tier of a small file of `size` bytes: 1 within a factor `fan_in` of `target`, 2
/// within `fan_in`², and so on.
fn tier(size: u64, target: u64, fan_in: u64) -> u32 {
    let mut tier = 1;
    let mut bound = target / fan_in.max(2);
    while size < bound {
        tier += 1;
        bound /= fan_in.max(2);
    }
    tier
}

/// How many times a compaction plans again after another rewrite took its files.
const PLANS: usize = 3;

/// Small files of one table, grouped into bins of one partition each (see [`plan`]).
#[derive(Debug, Default)]
pub struct Plan {
    /// Each bin becomes one file.
    pub bins: Vec<Vec<DataFile>>,
    /// Small files in the table (compacted or not).
    pub small_files: usize,
}

/// Rewrites the table's small files into larger ones, one commit per slice of bins (see
/// the module docs), when it has at least `options.min_small_files` of them, in Z-order
/// over `options.zorder_by` if given.
pub async fn compact(
    table: &mut DeltaTable,
    name: &str,
    options: CompactOptions,
    env: &CommitEnv,
) -> Result<Compaction> {
    let mut done = Compaction::default();
    let mut superseded = 0;
    'plans: loop {
        // The head follows the commits since the loaded snapshot (their entries only);
        // the snapshot itself comes forward only when the metadata moved, since the new
        // files follow its schema. A snapshot update would list the whole log each pass.
        let head = env.heads.head(table, name).await?;
        if !head.metadata_as_of(log::version(table)) {
            refresh(table, name).await?;
        }
        let plan = plan(table, name, &options, env).await?;
        let size = |f: &DataFile| head.file(&f.path).map_or(0, |l| l.size().max(0) as u64);
        for slice in slices(plan.bins, options.target_file_bytes, size) {
            match compact_slice(table, name, &options, env, &slice).await? {
                RewriteOutcome::Committed {
                    version,
                    files_added,
                } => {
                    let files_removed: u64 = slice.iter().map(|bin| bin.len() as u64).sum();
                    tracing::info!(
                        table = name,
                        version,
                        files_removed,
                        files_added,
                        "compacted"
                    );
                    done.version = Some(version);
                    done.commits += 1;
                    done.files_removed += files_removed;
                    done.files_added += files_added as u64;
                }
                RewriteOutcome::Superseded { path } => {
                    superseded += 1;
                    if superseded == PLANS {
                        return Err(LakeError::CommitConflict {
                            table: name.to_string(),
                            message: format!(
                                "other rewrites took the files of {PLANS} compaction plans"
                            ),
                        });
                    }
                    tracing::info!(table = name, %path, "compaction superseded by another rewrite; planning again");
                    continue 'plans;
                }
                RewriteOutcome::AlreadyCommitted => unreachable!("a compaction moves no txn"),
            }
        }
        return Ok(done);
    }
}

/// `bins` in commits: consecutive bins holding at most `budget` bytes of input together
/// (each file's bytes as `size` says), and at least one bin each.
fn slices(
    bins: Vec<Vec<DataFile>>,
    budget: u64,
    size: impl Fn(&DataFile) -> u64,
) -> Vec<Vec<Vec<DataFile>>> {
    let mut out: Vec<Vec<Vec<DataFile>>> = Vec::new();
    let mut bytes = 0;
    for bin in bins {
        let size: u64 = bin.iter().map(&size).sum();
        match out.last_mut() {
            Some(slice) if bytes + size <= budget => slice.push(bin),
            _ => {
                out.push(vec![bin]);
                bytes = 0;
            }
        }
        bytes += size;
    }
    out
}

/// Writes the bins of one slice (copied where [`CompactOptions::copy_row_groups`] allows,
/// rewritten otherwise) and commits them as one `OPTIMIZE`.
async fn compact_slice(
    table: &mut DeltaTable,
    name: &str,
    options: &CompactOptions,
    env: &CommitEnv,
    bins: &[Vec<DataFile>],
) -> Result<RewriteOutcome> {
    let schema = arrow_schema(table, name)?;
    let head = env.heads.head(table, name).await?;
    let mut groups = Vec::with_capacity(bins.len());
    let mut copied = Vec::new();
    let mut removes = Vec::new();
    for bin in bins {
        if let Some(least) = options
            .copy_row_groups
            .filter(|_| options.zorder_by.is_empty())
        {
            let live: Option<Vec<&LiveFile>> = bin.iter().map(|f| head.file(&f.path)).collect();
            if let Some(live) = live
                && let Some(add) = concat(table, name, schema.fields(), &live, least).await?
            {
                copied.push(add);
                removes.extend(bin.iter().map(|f| f.path.clone()));
                continue;
            }
        }
        let mut rows = Vec::new();
        for file in bin {
            for batch in changes::read(table, name, file, None, &env.recent).await? {
                rows.push(changes::conform(&batch, file, &schema)?);
            }
            removes.push(file.path.clone());
        }
        if options.zorder_by.is_empty() {
            groups.push(rows);
        } else {
            groups.push(vec![crate::zorder::sort(&rows, &options.zorder_by, name)?]);
        }
    }
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: options.target_file_bytes as i64,
    };
    rewrite(
        table,
        name,
        Rewrite {
            removes,
            groups,
            copied,
            readds: Vec::new(),
            changes: Vec::new(),
            operation,
            data_change: false,
            txns: Vec::new(),
            metadata: Default::default(),
            table_metadata: None,
        },
        env,
    )
    .await
}

/// The bins a compaction of `table` (as its head stands) would write: files smaller than
/// the target, without deletion vectors, grouped by partition (and by tier, tiered: only
/// groups of at least `min_small_files`) and packed in path order (oldest first for the
/// writers' names) until a bin reaches the target. Bins of one file are left alone.
pub async fn plan(
    table: &mut DeltaTable,
    name: &str,
    options: &CompactOptions,
    env: &CommitEnv,
) -> Result<Plan> {
    let head = env.heads.head(table, name).await?;
    let small: Vec<(DataFile, u64)> = head
        .files()
        .filter(|f| (f.size() as u64) < options.target_file_bytes && !f.has_deletion_vector())
        .map(|file| {
            let data = DataFile {
                path: file.path().to_string(),
                partition_values: file.partition_values().clone(),
                rows: file.rows(),
                offer: None,
            };
            (data, file.size().max(0) as u64)
        })
        .collect();
    Ok(pack(small, options))
}

/// [`plan`] over the table's small files and their sizes.
fn pack(small: Vec<(DataFile, u64)>, options: &CompactOptions) -> Plan {
    type Group = (Vec<(String, Option<String>)>, u32);
    let fan_in = options.min_small_files.max(2);
    let mut plan = Plan {
        bins: Vec::new(),
        small_files: small.len(),
    };
    if small.len() < fan_in {
        return plan;
    }
    let mut groups: BTreeMap<Group, Vec<(DataFile, u64)>> = BTreeMap::new();
    for (file, size) in small {
        let mut partition: Vec<_> = file
            .partition_values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        partition.sort();
        let tier = if options.tiered {
            tier(size, options.target_file_bytes, fan_in as u64)
        } else {
            0
        };
        groups
            .entry((partition, tier))
            .or_default()
            .push((file, size));
    }
    for (_, mut files) in groups {
        if options.tiered && files.len() < fan_in {
            continue;
        }
        files.sort_by(|a, b| a.0.path.cmp(&b.0.path));
        let mut bin: Vec<DataFile> = Vec::new();
        let mut bytes = 0;
        for (file, size) in files {
            if !bin.is_empty() && bytes + size > options.target_file_bytes {
                if bin.len() > 1 {
                    plan.bins.push(std::mem::take(&mut bin));
                }
                bin.clear();
                bytes = 0;
            }
            bytes += size;
            bin.push(file);
        }
        if bin.len() > 1 {
            plan.bins.push(bin);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn files(sizes: &[u64]) -> Vec<(DataFile, u64)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, size)| {
                let file = DataFile {
                    path: format!("part-{i:05}.parquet"),
                    ..DataFile::default()
                };
                (file, *size)
            })
            .collect()
    }

    #[test]
    fn tiers_are_powers_of_the_fan_in_below_the_target() {
        assert_eq!(tier(100 * MB, 128 * MB, 16), 1);
        assert_eq!(tier(8 * MB, 128 * MB, 16), 1);
        assert_eq!(tier(8 * MB - 1, 128 * MB, 16), 2);
        assert_eq!(tier(400 * 1024, 128 * MB, 16), 3);
        assert_eq!(tier(0, 128 * MB, 16), 7);
    }

    #[test]
    fn tiered_compaction_leaves_an_earlier_pass_alone_until_its_tier_fills() {
        let options = CompactOptions {
            target_file_bytes: 128 * MB,
            min_small_files: 4,
            tiered: true,
            ..CompactOptions::default()
        };
        // An earlier pass's output (4 MB) beside 4 fresh 400 KB files: only the fresh ones
        // are packed; a full compaction would rewrite the 4 MB again.
        let sizes = [4 * MB, 400 << 10, 400 << 10, 400 << 10, 400 << 10];
        let plan = pack(files(&sizes), &options);
        assert_eq!(plan.small_files, 5);
        assert_eq!(plan.bins.len(), 1);
        let packed: Vec<&str> = plan.bins[0].iter().map(|f| f.path.as_str()).collect();
        assert_eq!(packed.len(), 4);
        assert!(!packed.contains(&"part-00000.parquet"), "{packed:?}");
        let full = pack(
            files(&sizes),
            &CompactOptions {
                tiered: false,
                ..options.clone()
            },
        );
        assert_eq!(full.bins[0].len(), 5);

        // Three fresh files are not a tier's worth: nothing to do, tiered.
        assert!(pack(files(&sizes[..4]), &options).bins.is_empty());
        // Four outputs of that size fill their tier in turn.
        assert_eq!(
            pack(files(&[2 * MB, 2 * MB, 2 * MB, 2 * MB]), &options).bins[0].len(),
            4
        );
    }

    #[test]
    fn slices_hold_at_most_the_budget_and_at_least_one_bin() {
        let sizes: std::collections::HashMap<String, u64> = files(&[3, 3, 5, 1, 1, 9, 2])
            .into_iter()
            .map(|(f, s)| (f.path, s * MB))
            .collect();
        let all: Vec<DataFile> = files(&[0; 7]).into_iter().map(|(f, _)| f).collect();
        // Bins of 6, 6, 3 and 9 MB.
        let bins = vec![
            all[0..2].to_vec(),
            all[2..4].to_vec(),
            vec![all[4].clone(), all[6].clone()],
            vec![all[5].clone()],
        ];
        let size = |f: &DataFile| sizes[&f.path];
        let shape = |budget: u64| -> Vec<Vec<usize>> {
            slices(bins.clone(), budget * MB, size)
                .iter()
                .map(|slice| slice.iter().map(Vec::len).collect())
                .collect()
        };
        // 6 + 6 MB fill 12; then 3 + 9.
        assert_eq!(shape(12), [vec![2, 2], vec![2, 1]]);
        // A bin larger than the budget still goes, alone.
        assert_eq!(shape(4), [vec![2], vec![2], vec![2], vec![1]]);
        assert_eq!(shape(100), [vec![2, 2, 2, 1]]);
        assert!(slices(Vec::new(), MB, size).is_empty());
    }

    #[tokio::test]
    async fn a_compaction_commits_one_slice_at_a_time() {
        use crate::commit::{CommitEnv, WriteMode};
        use crate::testing::{TestTable, commit_for_test};
        let env = CommitEnv::default();
        let test = TestTable::create("t", &env).await;
        let mut table = test.store.open("t").await.unwrap();
        for n in 0..6 {
            commit_for_test(&mut table, "t", test.batch(n), WriteMode::Append, &[]).await;
        }
        let largest = env
            .heads
            .head(&mut table, "t")
            .await
            .unwrap()
            .files()
            .map(|f| f.size() as u64)
            .max()
            .unwrap();
        // Room for two files per bin and per slice: three bins, three commits.
        let options = CompactOptions {
            target_file_bytes: largest * 5 / 2,
            ..CompactOptions::default()
        };
        let done = compact(&mut table, "t", options, &env).await.unwrap();
        assert_eq!(
            done,
            Compaction {
                version: Some(9),
                commits: 3,
                files_removed: 6,
                files_added: 3,
            }
        );
        let reopened = test.store.open("t").await.unwrap();
        let history = crate::history::commits(&reopened, "t").await.unwrap();
        let optimizes: Vec<i64> = history
            .iter()
            .filter(|c| c.operation.as_deref() == Some("OPTIMIZE"))
            .map(|c| c.version)
            .collect();
        assert_eq!(optimizes, [7, 8, 9]);
        assert_eq!(crate::log::row_count(&reopened), 6);
    }
}

/// Compaction of real tables, by copying row groups and by rewriting rows.
#[cfg(test)]
mod copy_tests {
    use arrow::array::{Array, Int64Array};
    use deltalake::parquet::file::metadata::{
        PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader,
    };

    use super::*;
    use crate::testing::four_position_files;

    const NAME: &str = "bronze.events";

    /// A bronze-like table given four commits of 300 rows (one file each, every 7th row
    /// flagged), compacted with `copy_row_groups`: its one file's Parquet metadata (page
    /// indexes required), its statistics, and its offsets, sorted.
    async fn compacted(copy: Option<i64>) -> (ParquetMetaData, serde_json::Value, Vec<i64>) {
        let dir = tempfile::tempdir().unwrap();
        let env = CommitEnv::default();
        let mut table = four_position_files(dir.path(), NAME, &env).await;
        let options = CompactOptions {
            copy_row_groups: copy,
            ..CompactOptions::default()
        };
        let compaction = compact(&mut table, NAME, options, &env).await.unwrap();
        assert_eq!((compaction.files_removed, compaction.files_added), (4, 1));
        table.update_state().await.unwrap();
        let snapshot = table.snapshot().unwrap();
        let files: Vec<_> = snapshot.log_data().iter().collect();
        assert_eq!(files.len(), 1);
        let stats: serde_json::Value = serde_json::from_str(&files[0].stats().unwrap()).unwrap();
        let bytes = changes::file_bytes(&table, NAME, files[0].path().as_ref())
            .await
            .unwrap();
        let metadata = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Required)
            .parse_and_finish(&bytes)
            .unwrap();
        let file = changes::snapshot(&table, NAME).unwrap().remove(0);
        let mut offsets = Vec::new();
        for batch in changes::read(&table, NAME, &file, None, &env.recent)
            .await
            .unwrap()
        {
            let column = batch.column_by_name("offset").unwrap();
            let column = column.as_any().downcast_ref::<Int64Array>().unwrap();
            assert_eq!(column.null_count(), 0);
            offsets.extend(column.values().iter().copied());
        }
        // Bins are packed in path order (random names here), not commit order.
        offsets.sort_unstable();
        (metadata, stats, offsets)
    }

    /// The copy keeps each input's row group and page index, the same rows, and statistics equal to those delta-rs computes from the rows of a rewrite.
    #[tokio::test]
    async fn copied_row_groups_keep_the_rows_and_a_rewrites_statistics() {
        let (copied, copied_stats, copied_offsets) = compacted(Some(0)).await;
        let (rewritten, rewritten_stats, rewritten_offsets) = compacted(None).await;
        assert_eq!(copied.num_row_groups(), 4);
        assert_eq!(rewritten.num_row_groups(), 1);
        let expected: Vec<i64> = (0..1200).collect();
        assert!(copied_offsets == expected, "copied rows differ");
        assert!(rewritten_offsets == expected, "rewritten rows differ");
        // Page locations moved with the chunks: each lies inside its chunk.
        let offsets = copied.offset_index().expect("offset index carried over");
        for (group, row_group) in copied.row_groups().iter().enumerate() {
            for (column, chunk) in row_group.columns().iter().enumerate() {
                let start = chunk
                    .dictionary_page_offset()
                    .unwrap_or(chunk.data_page_offset());
                let end = start + chunk.compressed_size();
                for page in &offsets[group][column].page_locations {
                    assert!(
                        page.offset >= start && page.offset < end,
                        "{group}/{column}"
                    );
                }
            }
        }
        assert!(copied.column_index().is_some(), "column index carried over");
        for key in ["numRecords", "minValues", "maxValues", "nullCount"] {
            assert_eq!(copied_stats[key], rewritten_stats[key], "{key}");
        }
        assert_eq!(copied_stats["numRecords"], 1200);
        assert_eq!(copied_stats["nullCount"]["error"], 1200 - 1200 / 7 - 1);
    }

    /// A bin with a row group under the least size is rewritten from its rows.
    #[tokio::test]
    async fn small_row_groups_are_rewritten_instead_of_copied() {
        let (metadata, stats, offsets) = compacted(Some(i64::MAX)).await;
        assert_eq!(metadata.num_row_groups(), 1);
        assert!(offsets == (0..1200).collect::<Vec<_>>(), "rows differ");
        assert_eq!(stats["numRecords"], 1200);
    }
}
