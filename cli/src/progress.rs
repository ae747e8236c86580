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
        let (Some(assignment), Some(report)) = (&task.task, &task.report) else {
            continue;
        };
        // The maintenance task writes no table of its own: one line per pipeline, for its
        // state and errors.
        let key = if assignment.kind() == TaskKind::Maintain {
            format!("({} maintenance)", assignment.pipeline)
        } else {
            assignment.table.clone()
        };
        let entry = out.entry(key).or_default();
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
        let rank = |s: &str| {
            [
                "", "stopped", "idle", "starting", "running", "backoff", "failed",
            ]
            .iter()
            .position(|x| *x == s)
            .unwrap_or(0)
        };
        if rank(state.label()) > rank(&entry.state) {
            entry.state = state.label().to_string();
        }
        if entry.error.is_none()
            && !report.error.is_empty()
            && matches!(state, TaskState::Failed | TaskState::Backoff)
        {
            entry.error = Some(report.error.clone());
        }
    }
    out
}

/// Draws progress to stderr.
pub struct ProgressView {
    terminal: bool,
    started: Instant,
    /// (when, bronze rows committed) of recent frames, for a rate over a few seconds.
    samples: std::collections::VecDeque<(Instant, u64)>,
    drawn_lines: usize,
    last_log: Option<Instant>,
}

impl ProgressView {
    /// A view that redraws in place when `terminal`.
    pub fn new(terminal: bool) -> Self {
        let now = Instant::now();
        Self {
            terminal,
            started: now,
            samples: std::collections::VecDeque::new(),
            drawn_lines: 0,
            last_log: None,
        }
    }

    /// Shows the latest status.
    pub fn show(&mut self, status: &ClusterStatus) {
        let tables = by_table(status);
        let ingested: u64 = tables
            .iter()
            .filter(|(t, _)| t.starts_with("bronze."))
            .map(|(_, p)| p.committed)
            .sum();
        let now = Instant::now();
        // Workers report once a second; a rate over a 5 s window does not alias with that.
        self.samples.push_back((now, ingested));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t).as_secs_f64() > 5.0)
        {
            self.samples.pop_front();
        }
        let rate = match self.samples.front() {
            Some((t, n)) if now.duration_since(*t).as_secs_f64() > 0.5 => {
                ingested.saturating_sub(*n) as f64 / now.duration_since(*t).as_secs_f64()
            }
            _ => 0.0,
        };
        if self.terminal {
            let mut lines = vec![format!(
                "smelter up — {} worker(s), generation {}, {:.0}s, ingest {:.0} events/s",
                status.workers.len(),
                status.generation,
                self.started.elapsed().as_secs_f64(),
                rate
            )];
            lines.push(format!(
                "  {:<32} {:>12} {:>10} {:>10} {:>10}  {}",
                "table", "rows", "lag", "quarant.", "dupes", "state"
            ));
            for (table, p) in &tables {
                lines.push(format!(
                    "  {:<32} {:>12} {:>10} {:>10} {:>10}  {}",
                    table, p.rows, p.lag, p.quarantined, p.deduplicated, p.state
                ));
                if let Some(error) = &p.error {
                    lines.push(format!("    error: {error}"));
                }
            }
            let mut err = std::io::stderr().lock();
            if self.drawn_lines > 0 {
                // Back to the top of the previous frame, and clear everything below it.
                let _ = write!(err, "\x1b[{}A\x1b[J", self.drawn_lines);
            }
            for line in &lines {
                let _ = writeln!(err, "{line}");
            }
            self.drawn_lines = lines.len();
        } else if self.last_log.is_none_or(|t| t.elapsed().as_secs() >= 5) {
            self.last_log = Some(now);
            let summary: Vec<String> = tables
                .iter()
                .filter(|(t, _)| !t.starts_with('('))
                .map(|(t, p)| format!("{t}={} (lag {})", p.rows, p.lag))
                .collect();
            tracing::info!(
                events_per_sec = rate as u64,
                workers = status.workers.len(),
                "progress: {}",
                summary.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use smelter_proto::{TaskAssignment, TaskStatus, TaskStatusReport};

    use super::*;

    fn ingest(partition: i32, worker: &str, committed: u64) -> TaskStatus {
        // Workers report each partition's own rows, lag and offset.
        TaskStatus {
            task: Some(TaskAssignment {
                task_id: format!("p/ingest/events/{partition}"),
                kind: TaskKind::Ingest as i32,
                table: "bronze.events".into(),
                partition,
                ..Default::default()
            }),
            worker_id: worker.into(),
            generation: 1,
            releasing_from: String::new(),
            report: Some(TaskStatusReport {
                rows_committed: committed,
                table_rows: 500,
                state: TaskState::Running as i32,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn partitions_add_up_per_table() {
        let status = ClusterStatus {
            tasks: vec![
                ingest(0, "a", 100),
                ingest(1, "a", 200),
                ingest(2, "b", 200),
            ],
            ..Default::default()
        };
        let tables = by_table(&status);
        assert_eq!(tables["bronze.events"].committed, 500);
        assert_eq!(tables["bronze.events"].rows, 500);
        assert_eq!(tables["bronze.events"].state, "running");
    }
}
