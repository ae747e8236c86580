//! Live progress of `smelter up`: a redrawn block on a terminal, one log line every few
//! seconds otherwise. Everything shown comes from the coordinator's status, i.e. what the
//! workers reported.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use smelter_proto::{ClusterStatus, TaskKind, TaskState};

/// Per-table figures aggregated over the tasks that write the table.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TableProgress {
    /// Rows in the table.
    pub rows: u64,
    /// Rows committed since start, over all tasks.
    pub committed: u64,
    /// Upstream records (ingest) or versions (refine, aggregate) not yet processed.
    pub lag: i64,
    /// Rows quarantined / dropped / removed as duplicates (silver).
    pub quarantined: u64,
    /// Rows dropped by expectations.
    pub dropped: u64,
    /// Duplicates removed.
    pub deduplicated: u64,
    /// Worst task state (failed > backoff > running > idle).
    pub state: String,
    /// First error reported, if any.
    pub error: Option<String>,
}

/// Summarises a status by target table.
pub fn by_table(status: &ClusterStatus) -> BTreeMap<String, TableProgress> {
    let mut out: BTreeMap<String, TableProgress> = BTreeMap::new();
    for task in &status.tasks {
        let (Some(assignment), Some(report)) = (&task.task, &task.report) else { continue };
        let entry = out.entry(assignment.table.clone()).or_default();
        if assignment.kind() == TaskKind::Ingest {
            entry.rows = entry.rows.max(report.table_rows);
            entry.lag += report.lag.max(0);
        } else {
            entry.rows = report.table_rows;
            entry.lag = report.lag.max(0);
        }
        entry.committed += report.rows_committed;
        entry.quarantined += report.rows_quarantined;
        entry.dropped += report.rows_dropped;
        entry.deduplicated += report.rows_deduplicated;
        let state = report.state();
        let rank = |s: &str| ["", "stopped", "idle", "starting", "running", "backoff", "failed"].iter().position(|x| *x == s).unwrap_or(0);
        if rank(state.label()) > rank(&entry.state) {
            entry.state = state.label().to_string();
        }
        if entry.error.is_none() && !report.error.is_empty() && matches!(state, TaskState::Failed | TaskState::Backoff) {
            entry.error = Some(report.error.clone());
        }
    }
    out
}

/// Draws progress to stderr.
pub struct ProgressView {
    terminal: bool,
    started: Instant,
    last_ingested: u64,
    last_at: Instant,
    drawn_lines: usize,
    last_log: Option<Instant>,
}

impl ProgressView {
    /// A view that redraws in place when `terminal`.
    pub fn new(terminal: bool) -> Self {
        let now = Instant::now();
        Self { terminal, started: now, last_ingested: 0, last_at: now, drawn_lines: 0, last_log: None }
    }

    /// Shows the latest status.
    pub fn show(&mut self, status: &ClusterStatus) {
        let tables = by_table(status);
        let ingested: u64 = tables.iter().filter(|(t, _)| t.starts_with("bronze.")).map(|(_, p)| p.committed).sum();
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let rate = (ingested.saturating_sub(self.last_ingested)) as f64 / elapsed;
        self.last_ingested = ingested;
        self.last_at = now;
        if self.terminal {
            let mut lines = vec![format!(
                "smelter up — {} worker(s), generation {}, {:.0}s, ingest {:.0} events/s",
                status.workers.len(),
                status.generation,
                self.started.elapsed().as_secs_f64(),
                rate
            )];
            lines.push(format!("  {:<32} {:>12} {:>10} {:>10} {:>10}  {}", "table", "rows", "lag", "quarant.", "dupes", "state"));
            for (table, p) in &tables {
                lines.push(format!("  {:<32} {:>12} {:>10} {:>10} {:>10}  {}", table, p.rows, p.lag, p.quarantined, p.deduplicated, p.state));
                if let Some(error) = &p.error {
                    lines.push(format!("    error: {error}"));
                }
            }
            let mut err = std::io::stderr().lock();
            if self.drawn_lines > 0 {
                let _ = write!(err, "\x1b[{}A", self.drawn_lines);
            }
            for line in &lines {
                let _ = writeln!(err, "\x1b[2K{line}");
            }
            self.drawn_lines = lines.len();
        } else if self.last_log.is_none_or(|t| t.elapsed().as_secs() >= 5) {
            self.last_log = Some(now);
            let summary: Vec<String> = tables.iter().map(|(t, p)| format!("{t}={} (lag {})", p.rows, p.lag)).collect();
            tracing::info!(events_per_sec = rate as u64, workers = status.workers.len(), "progress: {}", summary.join(", "));
        }
    }
}
