//! Workers joining, renewing their leases, opening their assignment streams and leaving.
//!
//! Liveness is the store's business: a worker's registry key is bound to its lease, and a
//! key that vanished means the worker is gone; its tasks are reassigned at once.

use std::collections::{BTreeMap, BTreeSet};

use smelter_common::store::keys;
use smelter_proto::{HeartbeatResponse, RegisterWorkerResponse};
use tokio::sync::watch;
use tokio::time::Instant;

use super::persist::{WorkerRecord, encode};
use super::{Actor, AssignmentWatch, WorkerEntry};
use crate::{CoordinatorError, Result};

impl Actor {
    /// Registers a worker. A returning worker (`resume_id`: it lost its coordinator or its
    /// lease) keeps its id, and the tasks it still runs stay with it unless they were
    /// given to a live worker meanwhile.
    pub(super) async fn register(
        &mut self,
        flight_endpoint: String,
        hostname: String,
        resume_id: String,
        running_task_ids: Vec<String>,
    ) -> Result<RegisterWorkerResponse> {
        let worker_id = if resume_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            resume_id
        };
        if let Some(previous) = self.workers.get(&worker_id) {
            let lease = previous.lease;
            let _ = self
                .within(
                    "revoke a worker's old lease",
                    self.store.revoke_lease(lease),
                )
                .await;
        }
        let ttl = self.config.lease_ttl();
        let lease = self
            .within("grant a worker lease", self.store.grant_lease(ttl))
            .await?;
        let record = encode(&WorkerRecord {
            flight_endpoint: flight_endpoint.clone(),
            hostname: hostname.clone(),
        })?;
        self.put(&keys::worker(&worker_id), record, Some(lease))
            .await?;
        // What it still runs and nobody else was given: it keeps, and must hand off later.
        let mut running = BTreeSet::new();
        for task in running_task_ids {
            let free = self
                .owners
                .get(&task)
                .is_none_or(|owner| owner == &worker_id || !self.workers.contains_key(owner));
            if free && self.tasks.contains_key(&task) {
                self.owners.insert(task.clone(), worker_id.clone());
                running.insert(task);
            }
        }
        let kept = running.len();
        tracing::info!(worker_id = %worker_id, flight = %flight_endpoint, kept_tasks = kept, "worker registered");
        let (assignment, _) = watch::channel(self.update_for(&worker_id));
        self.workers.insert(
            worker_id.clone(),
            WorkerEntry {
                lease,
                flight_endpoint,
                hostname,
                last_heartbeat: Instant::now(),
                commits_fenced: 0,
                timings: Vec::new(),
                reads: None,
                assignment,
                delivered: running,
            },
        );
        if !self.rebalance().await {
            self.bump().await;
        }
        Ok(RegisterWorkerResponse {
            worker_id,
            lease_ttl_ms: self.config.lease_ttl_ms,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
        })
    }

    /// Renews a worker's lease (with a deadline: a slow store must not hold up the actor).
    pub(super) async fn heartbeat(
        &mut self,
        worker_id: &str,
        commits_fenced: u64,
        timings: Vec<smelter_proto::TableTimings>,
        reads: Option<smelter_proto::FileReads>,
    ) -> Result<HeartbeatResponse> {
        let lease = self
            .workers
            .get(worker_id)
            .ok_or_else(|| CoordinatorError::UnknownWorker {
                worker_id: worker_id.to_string(),
            })?
            .lease;
        match self
            .within("renew a worker lease", self.store.keep_alive(lease))
            .await
        {
            Ok(()) => {
                if let Some(entry) = self.workers.get_mut(worker_id) {
                    entry.last_heartbeat = Instant::now();
                    entry.commits_fenced = commits_fenced;
                    entry.timings = timings;
                    entry.reads = reads;
                }
                Ok(HeartbeatResponse {
                    generation: self.generation,
                })
            }
            Err(CoordinatorError::Common(smelter_common::Error::LeaseNotFound { .. })) => {
                self.remove_worker(worker_id, "lease expired").await;
                Err(CoordinatorError::UnknownWorker {
                    worker_id: worker_id.to_string(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Opens an assignment stream: a view of the worker's latest assignment. The actor
    /// replaces what it holds and never waits for a worker to read it, so a worker that
    /// stops reading delays nobody.
    pub(super) fn watch(&mut self, worker_id: &str) -> Result<AssignmentWatch> {
        let update = self.update_for(worker_id);
        let entry =
            self.workers
                .get_mut(worker_id)
                .ok_or_else(|| CoordinatorError::UnknownWorker {
                    worker_id: worker_id.to_string(),
                })?;
        entry.delivered = update.tasks.iter().map(|t| t.task_id.clone()).collect();
        entry.assignment.send_replace(update);
        Ok(entry.assignment.subscribe())
    }

    /// A worker leaves cleanly.
    pub(super) async fn deregister(&mut self, worker_id: &str) -> Result<()> {
        if let Some(entry) = self.workers.get(worker_id) {
            let lease = entry.lease;
            self.within("revoke a worker lease", self.store.revoke_lease(lease))
                .await?;
        }
        self.remove_worker(worker_id, "deregistered").await;
        Ok(())
    }

    /// Removes the workers whose registry keys are gone (their leases expired).
    pub(super) async fn expire_workers(&mut self) {
        let listed = self
            .within("list workers", self.store.list(&keys::workers_prefix()))
            .await;
        let alive: BTreeSet<String> = match listed {
            Ok(kvs) => kvs
                .iter()
                .map(|kv| keys::leaf(&kv.key).to_string())
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot list workers; keeping current membership");
                return;
            }
        };
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|w| !alive.contains(*w))
            .cloned()
            .collect();
        for worker_id in gone {
            self.remove_worker(&worker_id, "lease expired").await;
        }
    }

    /// Forgets a worker (its streams end) and places its tasks elsewhere.
    pub(super) async fn remove_worker(&mut self, worker_id: &str, reason: &str) {
        if self.workers.remove(worker_id).is_some() {
            if reason == "deregistered" {
                tracing::info!(worker_id, reason, "worker left; reassigning its tasks");
            } else {
                tracing::warn!(worker_id, reason, "worker lost; reassigning its tasks");
            }
            let _ = self.delete(&keys::assignment(worker_id)).await;
            // Whatever it was still draining starts on its new owner now.
            let released = self.releasing.len();
            self.releasing.retain(|_, r| r.from != worker_id);
            if !self.rebalance().await && released != self.releasing.len() {
                self.bump().await;
            }
        }
    }

    /// The live workers, each with the tasks of the last assignment it was sent.
    pub(super) fn delivered(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.workers
            .iter()
            .map(|(id, w)| (id.clone(), w.delivered.clone()))
            .collect()
    }
}
