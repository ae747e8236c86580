//! Task reports, and the end of hand-offs: a task moving between two live workers joins
//! its new owner's assignment once the old one reports it `RELEASED` (in-flight batch
//! committed), its lease ends, or `handoff_timeout` passes.

use smelter_proto::{TaskState, TaskStatusReport};

use super::Actor;
use crate::{CoordinatorError, Result};

impl Actor {
    /// A worker's report on a task it owns, or its acknowledgement of a hand-off.
    pub(super) async fn report(&mut self, report: TaskStatusReport) -> Result<()> {
        let context = report.context.clone().unwrap_or_default();
        if report.state() == TaskState::Released {
            let from = self.releasing.get(&report.task_id).map(|r| r.from.as_str());
            if from == Some(context.worker_id.as_str()) {
                self.releasing.remove(&report.task_id);
                tracing::info!(task_id = %report.task_id, from = %context.worker_id, to = ?self.owners.get(&report.task_id), "hand-off acknowledged");
                self.bump().await;
            }
            return Ok(());
        }
        let owner = self.owners.get(&report.task_id);
        if owner != Some(&context.worker_id)
            || self.releasing.contains_key(&report.task_id)
            || !self.workers.contains_key(&context.worker_id)
        {
            return Err(CoordinatorError::NotOwner {
                task_id: report.task_id,
                worker_id: context.worker_id,
                generation: context.generation,
            });
        }
        self.reports.insert(report.task_id.clone(), report);
        Ok(())
    }

    /// Hand-offs whose old owner did not acknowledge in time start on the new owner
    /// anyway; the commit protocol fences the old owner if it still writes.
    pub(super) async fn expire_releases(&mut self) {
        let timeout = self.config.handoff_timeout();
        let late: Vec<String> = self
            .releasing
            .iter()
            .filter(|(_, r)| r.since.elapsed() >= timeout)
            .map(|(t, _)| t.clone())
            .collect();
        if late.is_empty() {
            return;
        }
        for task in &late {
            if let Some(release) = self.releasing.remove(task) {
                tracing::warn!(task_id = %task, from = %release.from, "hand-off not acknowledged in time; starting the task on its new owner");
            }
        }
        self.bump().await;
    }
}
