//! The files source: a directory of NDJSON, CSV or Parquet files (plain, `.gz` or
//! `.zst`), picked up as they arrive.
//!
//! Each file is a one-partition topic named after the file; a record's offset is its
//! index in the file (see [`super::file_records`]). A file is therefore ingested exactly once by the same txn
//! mechanism as any partition: its bronze txn version is the last line committed.
//! Writers must place files atomically (write elsewhere or under a `.tmp`/dot name, then
//! rename); files are read in name order.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use smelter_common::spec::FilesSpec;
use tokio::time::Instant;

use super::file_records::{FileRecord, file_records, is_blank, matches};
use super::{CommittedPositions, SourceReader, SourceRecord};
use crate::{Result, WorkerError};

struct OpenFile {
    topic: Arc<str>,
    lines: Vec<FileRecord>,
    next: usize,
}

/// Reads new files of one directory.
pub struct FilesReader {
    name: String,
    dir: PathBuf,
    spec: FilesSpec,
    positions: Arc<dyn CommittedPositions>,
    done: HashSet<String>,
    current: Option<OpenFile>,
    max_record_bytes: usize,
    pending_files: usize,
}

impl FilesReader {
    /// A reader over `spec.path`.
    pub fn new(
        name: &str,
        spec: &FilesSpec,
        positions: Arc<dyn CommittedPositions>,
        max_record_bytes: usize,
    ) -> Self {
        Self {
            name: name.to_string(),
            dir: PathBuf::from(&spec.path),
            spec: spec.clone(),
            positions,
            done: HashSet::new(),
            current: None,
            max_record_bytes,
            pending_files: 0,
        }
    }

    fn error(&self, message: String) -> WorkerError {
        WorkerError::Source {
            source_name: self.name.clone(),
            message,
        }
    }

    /// Candidate file names not yet done, in name order.
    async fn pending(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(self.error(format!("cannot list {}: {e}", self.dir.display()))),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| self.error(format!("cannot list {}: {e}", self.dir.display())))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_file = entry
                .file_type()
                .await
                .map(|t| t.is_file())
                .unwrap_or(false);
            if is_file && matches(&name, &self.spec) && !self.done.contains(&name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Opens the next file with unread lines, skipping files already fully committed.
    async fn advance(&mut self) -> Result<bool> {
        let pending = self.pending().await?;
        self.pending_files = pending.len();
        for name in pending {
            let start = self
                .positions
                .committed(&name, 0)
                .await?
                .map_or(0, |last| last as usize + 1);
            let path = self.dir.join(&name);
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| self.error(format!("cannot read {}: {e}", path.display())))?;
            let lines = file_records(&name, bytes, &self.spec);
            if start >= lines.len() {
                self.done.insert(name);
                continue;
            }
            tracing::info!(source = %self.name, file = %name, lines = lines.len(), start, "reading file");
            self.current = Some(OpenFile {
                topic: name.into(),
                lines,
                next: start,
            });
            return Ok(true);
        }
        Ok(false)
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
                });
            }
            if file.next >= file.lines.len() {
                self.done.insert(file.topic.to_string());
                self.current = None;
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    fn lag(&self) -> Vec<(i32, i64)> {
        // One partition: lines left in the current file plus one per waiting file.
        let in_file = self
            .current
            .as_ref()
            .map_or(0, |f| (f.lines.len() - f.next) as i64);
        vec![(0, in_file + self.pending_files as i64)]
    }

    fn finished(&self) -> bool {
        false
    }
}
