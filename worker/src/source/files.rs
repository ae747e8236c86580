//! The files source: files landing in a directory or an object-store prefix (NDJSON, CSV
//! or Parquet; plain, `.gz` or `.zst`), picked up as they arrive, Auto Loader style.
//!
//! * **Exactly once per file.** A file is a one-partition topic named after its path
//!   under the landing place; a record's offset is its index in the file (see
//!   [`super::file_records`]). Its bronze txn (`<pipeline>/<file>/0`) is the last record
//!   committed, so a file read in part resumes after it; the commit holding its last
//!   record also writes `<pipeline>/<file>/end` ([`smelter_lake::AppId::SourceEnd`]), so a
//!   finished file is never opened again, after a restart or a rebalance either.
//! * **Partitions of work.** Files are spread over `partitions` by a hash of their name
//!   ([`smelter_common::spec::FileSelector::partition`]); this reader reads the files of
//!   the partitions it owns, so several workers read one prefix in parallel and no file
//!   is read by two of them. Every record is still at partition 0 of its file's topic:
//!   positions do not depend on the partition count.
//! * **Listing with a cursor.** After a first full listing, the store is asked only for
//!   names greater than the greatest selected name seen (S3's `start-after`; names still
//!   in flight, `.tmp` or hidden, are not selected: they are renamed, maybe to a smaller
//!   name, and other files do not move the cursor past this source's); every
//!   `full_listing_every` listings the whole path is listed again, for a file that landed
//!   behind the cursor. Writers must place files atomically (write elsewhere or under a
//!   `.tmp`/dot name, then rename; one PUT on S3).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use smelter_common::spec::{FileSelector, FilesSpec};
use tokio::time::Instant;

use super::file_records::{FileRecord, file_records, is_blank, last_offset};
use super::landing::Landing;
use super::{CommittedPositions, SourceReader, SourceRecord};
use crate::{Result, WorkerError};

struct OpenFile {
    topic: Arc<str>,
    lines: Vec<FileRecord>,
    next: usize,
    /// The offset of the file's last record (blank lines hold none).
    last: Option<i64>,
}

/// What a reader has done, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilesStats {
    /// Listings made, and how many of them listed the whole path.
    pub listings: u64,
    /// Of which full.
    pub full_listings: u64,
    /// Names the listings returned, over all listings.
    pub names_listed: u64,
    /// Files opened and read.
    pub files_read: u64,
    /// Files skipped because bronze records them as read to their end.
    pub files_finished: u64,
}

/// Reads the new files of the owned partitions of one files source.
pub struct FilesReader {
    name: String,
    spec: FilesSpec,
    selector: FileSelector,
    owned: HashSet<i32>,
    s3_options: HashMap<String, String>,
    landing: Option<Landing>,
    positions: Arc<dyn CommittedPositions>,
    /// The greatest selected name listed so far: the next listing starts after it.
    cursor: Option<String>,
    /// Selected names of owned partitions already queued, read or found finished.
    known: HashSet<String>,
    /// Names waiting to be read, in name order, with the last offset bronze held of each
    /// when it was listed.
    queue: BTreeMap<String, Option<i64>>,
    /// Files being fetched, in name order.
    reading: FuturesOrdered<Fetch>,
    /// Listings in a row that found nothing, and when the next may run.
    idle_listings: u32,
    next_listing: Option<Instant>,
    current: Option<OpenFile>,
    max_record_bytes: usize,
    stats: FilesStats,
}

/// Files fetched at once by one reader.
const READ_AHEAD: usize = 8;

/// The pause after a listing that found nothing, doubling with each such listing up to
/// [`LIST_IDLE_MAX`].
const LIST_IDLE_MIN: Duration = Duration::from_millis(200);
const LIST_IDLE_MAX: Duration = Duration::from_secs(5);

/// A file being fetched: its name, the position bronze held of it, its bytes.
type Fetch = Pin<Box<dyn Future<Output = (String, Option<i64>, Result<Vec<u8>>)> + Send>>;

impl FilesReader {
    /// A reader over the files of `partitions` of `spec`.
    pub fn new(
        name: &str,
        spec: &FilesSpec,
        partitions: &[i32],
        positions: Arc<dyn CommittedPositions>,
        s3_options: &HashMap<String, String>,
        max_record_bytes: usize,
    ) -> Result<Self> {
        let selector = spec
            .selector()
            .map_err(|message| WorkerError::SourceInvalid {
                source_name: name.to_string(),
                message,
            })?;
        Ok(Self {
            name: name.to_string(),
            spec: spec.clone(),
            selector,
            owned: partitions.iter().copied().collect(),
            s3_options: s3_options.clone(),
            landing: None,
            positions,
            cursor: None,
            known: HashSet::new(),
            queue: BTreeMap::new(),
            reading: FuturesOrdered::new(),
            idle_listings: 0,
            next_listing: None,
            current: None,
            max_record_bytes,
            stats: FilesStats::default(),
        })
    }

    /// What this reader has done so far.
    pub fn stats(&self) -> FilesStats {
        self.stats
    }

    /// Lists new names and queues those of owned partitions that bronze does not record
    /// as finished; returns how many it queued.
    async fn discover(&mut self) -> Result<usize> {
        if self.landing.is_none() {
            self.landing = Landing::open(&self.name, &self.spec.path, &self.s3_options)?;
        }
        let Some(landing) = &self.landing else {
            return Ok(0); // a local directory that does not exist yet
        };
        let every = u64::from(self.spec.full_listing_every.max(1));
        let full = self.cursor.is_none() || self.stats.listings.is_multiple_of(every);
        let after = if full { None } else { self.cursor.as_deref() };
        let names = landing.list(after).await?;
        self.stats.listings += 1;
        self.stats.full_listings += u64::from(full);
        self.stats.names_listed += names.len() as u64;
        let mut new = Vec::new();
        for name in names {
            if !self.selector.selects(&name) {
                continue; // in flight (renamed later, maybe below), or not this source's
            }
            if self.cursor.as_deref().is_none_or(|c| name.as_str() > c) {
                self.cursor = Some(name.clone());
            }
            if !self.known.contains(&name) && self.owned.contains(&self.selector.partition(&name)) {
                new.push(name);
            }
        }
        if new.is_empty() {
            return Ok(0);
        }
        let states = self.positions.topic_states(&new).await?;
        let queued = self.queue.len();
        for (name, state) in new.into_iter().zip(states) {
            if state.ended.is_some() {
                self.stats.files_finished += 1;
            } else {
                self.queue.insert(name.clone(), state.committed);
            }
            self.known.insert(name);
        }
        Ok(self.queue.len() - queued)
    }

    /// Opens the next queued file with unread records. Up to [`READ_AHEAD`] files are
    /// fetched at once (an object store answers each GET after a round trip); they are
    /// opened in name order.
    async fn advance(&mut self) -> Result<bool> {
        if self.queue.is_empty()
            && self.reading.is_empty()
            && self.next_listing.is_none_or(|at| Instant::now() >= at)
        {
            // Listings that find nothing back off (up to `LIST_IDLE_MAX` apart), so that
            // idle readers do not keep a store busy listing a large prefix.
            let found = self.discover().await?;
            self.idle_listings = if found > 0 { 0 } else { self.idle_listings + 1 };
            let wait = LIST_IDLE_MIN
                .saturating_mul(1 << self.idle_listings.min(8))
                .min(LIST_IDLE_MAX);
            self.next_listing = (found == 0).then(|| Instant::now() + wait);
        }
        loop {
            while self.reading.len() < READ_AHEAD {
                let (Some(landing), Some((name, committed))) =
                    (self.landing.clone(), self.queue.pop_first())
                else {
                    break;
                };
                self.reading.push_back(Box::pin(async move {
                    let bytes = landing.read(&name).await;
                    (name, committed, bytes)
                }));
            }
            let Some((name, committed, bytes)) = self.reading.next().await else {
                return Ok(false);
            };
            let bytes = bytes?;
            self.stats.files_read += 1;
            // Where bronze stood when the file was listed: if another reader has moved it
            // since (a rebalance), the commit's compare-and-set refuses and the reader is
            // opened again. -1 after a restore went back before the file: from its start.
            let start = committed.map_or(0, |last| usize::try_from(last + 1).unwrap_or(0));
            let lines = file_records(&name, bytes, &self.spec);
            let last = last_offset(&lines);
            if start >= lines.len() || last.is_none_or(|last| start as i64 > last) {
                continue; // everything in it is in bronze (or it holds nothing)
            }
            tracing::debug!(source = %self.name, file = %name, lines = lines.len(), start, "reading file");
            self.current = Some(OpenFile {
                topic: name.into(),
                lines,
                next: start,
                last,
            });
            return Ok(true);
        }
    }
}

#[async_trait]
impl SourceReader for FilesReader {
    async fn poll(&mut self, max_records: usize, max_wait: Duration) -> Result<Vec<SourceRecord>> {
        let deadline = Instant::now() + max_wait;
        loop {
            if self.current.is_none() && !self.advance().await? {
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                tokio::time::sleep(Duration::from_millis(200).min(deadline - Instant::now())).await;
                continue;
            }
            let Some(file) = self.current.as_mut() else {
                continue;
            };
            let mut out = Vec::new();
            while file.next < file.lines.len() && out.len() < max_records {
                let offset = file.next;
                file.next += 1;
                let record = std::mem::replace(&mut file.lines[offset], Ok(Vec::new()));
                if is_blank(&record) {
                    continue; // blank lines carry no record
                }
                let (payload, error) = match record {
                    // Unreadable (a CSV row with the wrong field count, a broken file):
                    // flagged in bronze, quarantined downstream.
                    Err(reason) => (None, Some(reason)),
                    Ok(line) if line.len() > self.max_record_bytes => (
                        None,
                        Some(format!(
                            "record of {} bytes exceeds the limit of {} bytes",
                            line.len(),
                            self.max_record_bytes
                        )),
                    ),
                    Ok(line) => (Some(line), None),
                };
                out.push(SourceRecord {
                    topic: Arc::clone(&file.topic),
                    partition: 0,
                    offset: offset as i64,
                    key: None,
                    timestamp_us: None,
                    headers: None,
                    payload,
                    error,
                    ends_topic: file.last == Some(offset as i64),
                });
            }
            if file.next >= file.lines.len() {
                self.current = None;
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    fn lag(&self) -> Vec<(i32, i64)> {
        // Per owned partition: records left in the open file plus one per queued file.
        let mut lag: HashMap<i32, i64> = self.owned.iter().map(|p| (*p, 0)).collect();
        if let Some(file) = &self.current {
            *lag.entry(self.selector.partition(&file.topic)).or_default() +=
                (file.lines.len() - file.next) as i64;
        }
        for name in self.queue.keys() {
            *lag.entry(self.selector.partition(name)).or_default() += 1;
        }
        if let Some(first) = self.owned.iter().min() {
            *lag.entry(*first).or_default() += self.reading.len() as i64; // being fetched
        }
        let mut lag: Vec<(i32, i64)> = lag.into_iter().collect();
        lag.sort_unstable();
        lag
    }

    fn finished(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::source::TopicState;

    /// Bronze as far as a reader can tell: the committed offset and the recorded end of
    /// some files.
    #[derive(Default)]
    struct Bronze {
        committed: BTreeMap<String, i64>,
        ended: BTreeMap<String, i64>,
    }

    #[async_trait]
    impl CommittedPositions for Bronze {
        async fn committed(&self, _topic: &str, _partition: i32) -> Result<Option<i64>> {
            unreachable!("a files reader asks for its files' states, listing by listing")
        }

        async fn topic_states(&self, topics: &[String]) -> Result<Vec<TopicState>> {
            Ok(topics
                .iter()
                .map(|t| TopicState {
                    committed: self.committed.get(t).copied(),
                    ended: self.ended.get(t).copied(),
                })
                .collect())
        }
    }

    fn spec(dir: &std::path::Path, extra: &str) -> FilesSpec {
        serde_yaml::from_str(&format!("{{ path: '{}', {extra} }}", dir.display())).unwrap()
    }

    fn write(dir: &std::path::Path, name: &str, lines: usize) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let body: String = (0..lines).map(|i| format!("{{\"i\":{i}}}\n")).collect();
        std::fs::write(path, body).unwrap();
    }

    /// Polls until a poll comes back empty; the records by topic.
    async fn drain(reader: &mut FilesReader) -> BTreeMap<String, Vec<SourceRecord>> {
        drain_waiting(reader, Duration::from_millis(50)).await
    }

    /// [`drain`], each poll waiting up to `wait` (longer than a listing's idle pause, to
    /// see files that land meanwhile).
    async fn drain_waiting(
        reader: &mut FilesReader,
        wait: Duration,
    ) -> BTreeMap<String, Vec<SourceRecord>> {
        let mut out: BTreeMap<String, Vec<SourceRecord>> = BTreeMap::new();
        loop {
            let records = reader.poll(1_000, wait).await.unwrap();
            if records.is_empty() {
                return out;
            }
            for r in records {
                out.entry(r.topic.to_string()).or_default().push(r);
            }
        }
    }

    fn reader(spec: &FilesSpec, partitions: &[i32], bronze: Bronze) -> FilesReader {
        FilesReader::new(
            "landing",
            spec,
            partitions,
            Arc::new(bronze),
            &HashMap::new(),
            1 << 20,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn partitions_split_the_files_and_later_listings_ask_only_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..200 {
            write(dir.path(), &format!("f-{i:03}.ndjson"), 1 + i % 3);
        }
        write(dir.path(), ".hidden.ndjson", 1);
        write(dir.path(), "a-0.ndjson.tmp", 1); // in flight
        write(dir.path(), "a-sub/nested.ndjson", 1); // below the path: no pattern, not read
        let spec = spec(dir.path(), "partitions: 2, full_listing_every: 1000");
        let mut readers = [
            reader(&spec, &[0], Bronze::default()),
            reader(&spec, &[1], Bronze::default()),
        ];
        let mut seen: Vec<BTreeMap<String, Vec<SourceRecord>>> = Vec::new();
        for r in readers.iter_mut() {
            seen.push(drain(r).await);
        }
        let names =
            |m: &BTreeMap<String, Vec<SourceRecord>>| m.keys().cloned().collect::<BTreeSet<_>>();
        let (a, b) = (names(&seen[0]), names(&seen[1]));
        assert!(a.is_disjoint(&b), "a file read by two partitions");
        let all: BTreeSet<String> = (0..200).map(|i| format!("f-{i:03}.ndjson")).collect();
        assert_eq!(a.union(&b).cloned().collect::<BTreeSet<_>>(), all);
        assert!(
            a.len() > 60 && b.len() > 60,
            "spread {} / {}",
            a.len(),
            b.len()
        );
        for records in seen.iter().flat_map(|m| m.values()) {
            let ends: Vec<bool> = records.iter().map(|r| r.ends_topic).collect();
            let last = ends.len() - 1;
            assert_eq!(ends, (0..=last).map(|i| i == last).collect::<Vec<_>>());
        }

        // Two new files with greater names: the next listing returns just them.
        let before = readers[0].stats();
        assert_eq!(before.full_listings, 1);
        write(dir.path(), "f-200.ndjson", 2);
        write(dir.path(), "f-201.ndjson", 2);
        let mut new = BTreeSet::new();
        for r in readers.iter_mut() {
            // Long enough to outlast the pause after the one idle listing of the drain.
            new.extend(drain_waiting(r, Duration::from_secs(2)).await.into_keys());
        }
        assert_eq!(
            new,
            BTreeSet::from(["f-200.ndjson".to_string(), "f-201.ndjson".to_string()])
        );
        let after = readers[0].stats();
        assert_eq!(after.full_listings, 1, "no full listing");
        assert!(after.listings > before.listings);
        assert_eq!(
            after.names_listed - before.names_listed,
            2,
            "{before:?} -> {after:?}"
        );
    }

    #[tokio::test]
    async fn a_file_behind_the_cursor_is_found_by_the_next_full_listing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.ndjson", 1);
        let mut reader = reader(
            &spec(dir.path(), "full_listing_every: 3"),
            &[0],
            Bronze::default(),
        );
        assert_eq!(drain(&mut reader).await.len(), 1);
        write(dir.path(), "a.ndjson", 1); // lands behind the cursor ("b.ndjson")
        let mut found = BTreeMap::new();
        while found.is_empty() {
            found = drain(&mut reader).await;
            assert!(
                reader.stats().listings < 10,
                "never found: {:?}",
                reader.stats()
            );
        }
        assert_eq!(found.into_keys().collect::<Vec<_>>(), vec!["a.ndjson"]);
        assert_eq!(reader.stats().full_listings, 2, "{:?}", reader.stats());
    }

    #[tokio::test]
    async fn finished_files_are_never_opened_and_partly_read_ones_resume() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.ndjson", "b.ndjson", "c.ndjson"] {
            write(dir.path(), name, 4);
        }
        write(dir.path(), "d.ndjson", 2);
        // `d` was read, then a restore went back before it: position and end are -1.
        let bronze = Bronze {
            committed: BTreeMap::from([
                ("a.ndjson".into(), 3),
                ("b.ndjson".into(), 1),
                ("d.ndjson".into(), -1),
            ]),
            ended: BTreeMap::from([("a.ndjson".into(), 3)]),
        };
        let mut reader = reader(&spec(dir.path(), "format: ndjson"), &[0], bronze);
        let read = drain(&mut reader).await;
        let offsets: BTreeMap<&str, Vec<i64>> = read
            .iter()
            .map(|(k, v)| (k.as_str(), v.iter().map(|r| r.offset).collect()))
            .collect();
        assert_eq!(
            offsets,
            BTreeMap::from([
                ("b.ndjson", vec![2, 3]),
                ("c.ndjson", vec![0, 1, 2, 3]),
                ("d.ndjson", vec![0, 1])
            ])
        );
        let stats = reader.stats();
        assert_eq!(
            (stats.files_finished, stats.files_read),
            (1, 3),
            "{stats:?}"
        );
    }

    #[tokio::test]
    async fn a_pattern_reads_nested_names_and_the_last_record_ends_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "2026/12/05/x.ndjson", 2);
        write(dir.path(), "2026/12/06/y.ndjson", 1);
        write(dir.path(), "2026/12/06/notes.txt", 1);
        write(dir.path(), "top.ndjson", 1);
        std::fs::write(dir.path().join("2026/12/06/blank-tail.ndjson"), "{}\n\n\n").unwrap();
        let mut reader = reader(
            &spec(dir.path(), "pattern: '2026/**/*.ndjson'"),
            &[0],
            Bronze::default(),
        );
        let read = drain(&mut reader).await;
        assert_eq!(
            read.keys().map(String::as_str).collect::<Vec<_>>(),
            vec![
                "2026/12/05/x.ndjson",
                "2026/12/06/blank-tail.ndjson",
                "2026/12/06/y.ndjson"
            ]
        );
        let tail = &read["2026/12/06/blank-tail.ndjson"];
        assert_eq!(tail.len(), 1);
        assert!(
            tail[0].ends_topic,
            "the last record ends the file even before blank lines"
        );
    }
}
