//! The cluster as `smelter status` shows it: the leader, workers with the time left on
//! their leases, and every task with its owner, its last report and any hand-off.

use smelter_proto::{ClusterStatus, TaskStatus, WorkerStatus};

use super::Actor;

impl Actor {
    /// Everything, as of now.
    pub(super) fn status(&self) -> ClusterStatus {
        let ttl = self.config.lease_ttl_ms as i64;
        let workers = self
            .workers
            .iter()
            .map(|(id, w)| WorkerStatus {
                worker_id: id.clone(),
                flight_endpoint: w.flight_endpoint.clone(),
                tasks: self.owners.values().filter(|o| *o == id).count() as u32,
                lease_expires_in_ms: ttl - w.last_heartbeat.elapsed().as_millis() as i64,
                hostname: w.hostname.clone(),
                commits_fenced: w.commits_fenced,
                timings: w.timings.clone(),
                reads: w.reads,
            })
            .collect();
        let tasks = self
            .tasks
            .values()
            .map(|t| TaskStatus {
                task: Some(t.clone()),
                worker_id: self.owners.get(&t.task_id).cloned().unwrap_or_default(),
                generation: self.generation,
                report: self.reports.get(&t.task_id).cloned(),
                releasing_from: self
                    .releasing
                    .get(&t.task_id)
                    .map(|r| r.from.clone())
                    .unwrap_or_default(),
            })
            .collect();
        ClusterStatus {
            leader: self.me.id.clone(),
            leader_endpoint: self.me.endpoint.clone(),
            generation: self.generation,
            workers,
            tasks,
            pipelines: self.pipelines.values().cloned().collect(),
            source_errors: self
                .discovery_errors
                .iter()
                .filter(|((pipeline, _), _)| self.pipelines.contains_key(pipeline))
                .map(|((pipeline, source), error)| smelter_proto::SourceError {
                    pipeline: pipeline.clone(),
                    source: source.clone(),
                    error: error.clone(),
                })
                .collect(),
        }
    }
}
