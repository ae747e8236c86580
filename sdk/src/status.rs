//! A cluster status as a JSON document.

use smelter_proto::ClusterStatus;

/// The status as a JSON document (stable field names, for scripts).
pub fn status_json(status: &ClusterStatus) -> serde_json::Value {
    serde_json::json!({
        "leader": status.leader,
        "leader_endpoint": status.leader_endpoint,
        "generation": status.generation,
        "workers": status.workers.iter().map(|w| serde_json::json!({
            "worker_id": w.worker_id, "flight_endpoint": w.flight_endpoint, "hostname": w.hostname,
            "tasks": w.tasks, "lease_expires_in_ms": w.lease_expires_in_ms,
            "commits_fenced": w.commits_fenced,
            "reads": w.reads.as_ref().map(|r| serde_json::json!({
                "memory": r.memory, "exchanged": r.exchanged, "exchanged_bytes": r.exchanged_bytes,
                "rejected": r.rejected, "failed": r.failed, "storage": r.storage,
                "storage_bytes": r.storage_bytes, "decode_ms": r.decode_ms, "served": r.served,
            })),
        })).collect::<Vec<_>>(),
        "tasks": status.tasks.iter().map(|t| {
            let task = t.task.clone().unwrap_or_default();
            let report = t.report.clone().unwrap_or_default();
            serde_json::json!({
                "task_id": task.task_id, "kind": task.kind().label(), "table": task.table, "partition": task.partition,
                "worker_id": t.worker_id, "generation": t.generation, "state": report.state().label(), "error": report.error,
                "releasing_from": (!t.releasing_from.is_empty()).then_some(&t.releasing_from),
                "rows_committed": report.rows_committed, "rows_quarantined": report.rows_quarantined,
                "rows_dropped": report.rows_dropped, "rows_deduplicated": report.rows_deduplicated,
                "table_version": report.table_version, "table_rows": report.table_rows, "lag": report.lag,
                "committed_offset": (task.kind() == smelter_proto::TaskKind::Ingest).then_some(report.committed_offset),
                "last_commit_unix_ms": report.last_commit_unix_ms,
            })
        }).collect::<Vec<_>>(),
        "pipelines": status.pipelines.iter().map(|p| serde_json::json!({"name": p.name, "revision": p.revision, "origin": p.origin})).collect::<Vec<_>>(),
        "source_errors": status.source_errors.iter().map(|e| serde_json::json!({"pipeline": e.pipeline, "source": e.source, "error": e.error})).collect::<Vec<_>>(),
    })
}
