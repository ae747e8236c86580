//! The operator's HTTP surface of a coordinator replica, on `coordinator.http_listen`:
//!
//! * `GET /` and `GET /status`: the status page — pipelines, and every table with its
//!   version, rows, time since its last commit, lag, quality counters and the state of
//!   its tasks, refreshed every two seconds by its script from `/catalog` and `/tables`.
//! * `GET /health`: the process answers (liveness).
//! * `GET /ready`: a leader is known, this replica or another (readiness); 503 otherwise.
//! * `GET /metrics`: Prometheus text. The leader reports every task's counters (rows in,
//!   quarantined, dropped, deduplicated), lag, table version and rows, last commit time,
//!   state, and every worker's tasks and fenced commits; histograms of commit durations
//!   and commit-lock waits per worker and table, and of gold refreshes per task; followers
//!   report that they follow.
//! * `GET /tables[?layer=...]`, `GET /tables/{name}`, `GET /catalog`,
//!   `GET /catalog/lineage/{table}`: the applied pipelines' tables with owner, tags,
//!   description, upstreams and the writing tasks' latest figures ([`crate::catalog`]),
//!   within the caller's grants.
//! * `GET /tables/{name}/history[?limit=N]`, `GET /tables/{name}/preview[?limit=N]` and
//!   `GET /tables/{name}/quality[?since=T]`: the table's commits, its first rows, and the
//!   data-quality figures refine recorded in its commits (per rule, summed since T), read
//!   by a worker like `POST /query`.
//! * `POST /query` `{"sql": "...", "limit": 1000}`: the rows as JSON, or as an Arrow IPC
//!   stream with `Accept: application/vnd.apache.arrow.stream`. The leader hands the SQL to
//!   a worker over Flight SQL with the caller's token, so the worker's read-only rules,
//!   limits and grants apply as to any client; its refusals keep their meaning (400 bad
//!   SQL, 401, 403, 408 past the time limit, 413 past the row limit).
//!
//! Every replica serves it, and answers every read: a follower relays the leader's status,
//! and while no leader answers (an election under way) it answers from the last status it
//! saw, saying so in an `x-smelter-status` header ([`relay`]). With `security.tls_cert` the listener speaks TLS only, with the
//! same certificate as gRPC (no client certificates: probes cannot present one); with
//! tokens configured, `/metrics` needs a bearer token (any role), and `/health` and
//! `/ready` stay open for the kubelet. Errors are JSON with a message.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use smelter_common::security::Authenticator;
use smelter_proto::ClusterStatus;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::actor::Command;
use crate::service::Role;

mod catalog;
mod relay;

/// What the handlers read.
#[derive(Clone)]
struct Shared {
    role: watch::Receiver<Role>,
    auth: Arc<Authenticator>,
    /// Connections to the workers' Flight SQL (for `/query`), dialled once per worker
    /// with the cluster's TLS (its CA, this replica's certificate); each call carries its
    /// caller's token.
    workers: smelter_sdk::Channels,
    /// The connection to the leader's gRPC (a follower's reads), likewise.
    leader: smelter_sdk::Channels,
    /// Turns over the workers `/query` goes to.
    turn: Arc<std::sync::atomic::AtomicUsize>,
    /// The last cluster status this replica saw (see [`relay`]).
    last: relay::LastStatus,
}

/// The body of `POST /query`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    1_000
}

/// The leader's status, or the response to give instead.
async fn leader_status(shared: &Shared) -> Result<Option<ClusterStatus>, Response> {
    let commands = match &*shared.role.borrow() {
        Role::Leader(commands) => Some(commands.clone()),
        Role::Follower { .. } => None,
    };
    let Some(commands) = commands else {
        return Ok(None);
    };
    let (reply, answer) = oneshot::channel();
    if commands.send(Command::Status { reply }).await.is_err() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the leader is stepping down",
        ));
    }
    answer.await.map(Some).map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the leader is stepping down",
        )
    })
}

/// The HTTP status that carries a Flight SQL refusal.
fn http_status(code: tonic::Code) -> StatusCode {
    match code {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::DeadlineExceeded => StatusCode::REQUEST_TIMEOUT,
        tonic::Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

async fn query(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let arrow = wants_arrow(&headers);
    let metadata = tonic::metadata::MetadataMap::from_headers(headers);
    if let Err(status) = shared.auth.authenticate(&metadata) {
        return error(StatusCode::UNAUTHORIZED, status.message());
    }
    let request: QueryRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"sql\": \"...\", \"limit\": N}}: {e}"),
            );
        }
    };
    match run_sql(&shared, &metadata, &request.sql).await {
        Ok(batches) => respond_rows(batches, request.limit, arrow),
        Err(response) => response,
    }
}

/// Whether the client asked for an Arrow IPC stream.
fn wants_arrow(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/vnd.apache.arrow.stream"))
}

/// [`rows`], or a 500 saying why not.
fn respond_rows(
    batches: Vec<arrow::record_batch::RecordBatch>,
    limit: usize,
    arrow: bool,
) -> Response {
    match rows(batches, limit, arrow) {
        Ok(response) => response,
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Runs `sql` on a worker over Flight SQL with the caller's token (the caller is already
/// authenticated): its rows, or the response to give instead (503 without a leader or a
/// worker; the worker's refusals with their meaning).
async fn run_sql(
    shared: &Shared,
    metadata: &tonic::metadata::MetadataMap,
    sql: &str,
) -> Result<Vec<arrow::record_batch::RecordBatch>, Response> {
    let (status, _) = relay::cluster_status(shared, metadata).await?;
    let endpoints: Vec<&str> = status
        .workers
        .iter()
        .map(|w| w.flight_endpoint.as_str())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no worker to run the query",
        ));
    }
    let turn = shared
        .turn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let endpoint = endpoints[turn % endpoints.len()];
    // Connections to workers that left are closed.
    shared.workers.retain(|e| endpoints.contains(&e));
    let token =
        smelter_common::security::auth::presented_token(metadata).map(|t| t.expose().to_string());
    // One span per statement handed to a worker: part of the HTTP caller's trace when it
    // sent `traceparent`, and carried to the worker's Flight SQL spans in the call's
    // headers.
    let span = tracing::info_span!("http_sql", %sql, worker = endpoint);
    let header = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
    smelter_common::telemetry::continue_trace(&span, header("traceparent"), header("tracestate"));
    let trace_headers = smelter_common::telemetry::trace_headers(&span);
    let batches = async {
        let mut redialled = false;
        loop {
            let channel = shared.workers.get(endpoint).await?;
            let mut client = smelter_sdk::QueryClient::over(channel, token.as_deref());
            for (key, value) in &trace_headers {
                client.set_header(key, value);
            }
            match client.query(sql).await {
                // A kept connection that broke (the worker restarted at the same address)
                // is dialled again once; the statement is read-only, so asking twice is
                // harmless.
                Err(e) if !redialled && connection_failed(&e) => {
                    shared.workers.forget(endpoint);
                    redialled = true;
                }
                answer => return answer,
            }
        }
    };
    match batches.instrument(span).await {
        Ok(batches) => Ok(batches),
        Err(smelter_sdk::SdkError::Rejected(status)) => {
            Err(error(http_status(status.code()), status.message()))
        }
        Err(other) => Err(error(StatusCode::BAD_GATEWAY, other.to_string())),
    }
}

/// Whether `error` says the connection failed rather than the server refusing the call.
fn connection_failed(error: &smelter_sdk::SdkError) -> bool {
    match error {
        smelter_sdk::SdkError::Rejected(status) => status.code() == tonic::Code::Unavailable,
        smelter_sdk::SdkError::Unreachable { .. }
        | smelter_sdk::SdkError::Transport(_)
        | smelter_sdk::SdkError::Flight(_) => true,
        smelter_sdk::SdkError::Timeout(_) => false,
    }
}

/// At most `limit` rows of `batches`, as JSON or an Arrow IPC stream.
fn rows(
    batches: Vec<arrow::record_batch::RecordBatch>,
    limit: usize,
    ipc: bool,
) -> Result<Response, arrow::error::ArrowError> {
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut left = limit;
    let mut kept = Vec::new();
    for batch in batches {
        if left == 0 {
            break;
        }
        let take = batch.num_rows().min(left);
        left -= take;
        kept.push(batch.slice(0, take));
    }
    if ipc {
        let Some(schema) = kept.first().map(|b| b.schema()) else {
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema)?;
        for batch in &kept {
            writer.write(batch)?;
        }
        writer.finish()?;
        return Ok((
            [(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")],
            writer.into_inner()?,
        )
            .into_response());
    }
    let columns: Vec<String> = kept
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default();
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for batch in &kept {
        writer.write(batch)?;
    }
    writer.finish()?;
    let bytes = writer.into_inner();
    let rows: serde_json::Value = if bytes.is_empty() {
        serde_json::Value::Array(Vec::new())
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| arrow::error::ArrowError::JsonError(e.to_string()))?
    };
    let body = serde_json::json!({
        "columns": columns,
        "rows": rows,
        "truncated": total > limit,
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The status page: static HTML whose script reads `/catalog` and `/tables` every two
/// seconds (with the bearer token given as `#token=...`, where tokens are configured).
async fn status_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("status.html"),
    )
        .into_response()
}

async fn health() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

async fn ready(State(shared): State<Shared>) -> Response {
    let leader = match &*shared.role.borrow() {
        Role::Leader(_) => Some("this replica".to_string()),
        Role::Follower { leader } => leader.as_ref().map(|l| l.endpoint.clone()),
    };
    match leader {
        Some(leader) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "status": "ready", "leader": leader }).to_string(),
        )
            .into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no leader known yet"),
    }
}

async fn metrics(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let metadata = tonic::metadata::MetadataMap::from_headers(headers);
    if let Err(status) = shared.auth.authenticate(&metadata) {
        return error(StatusCode::UNAUTHORIZED, status.message());
    }
    let status = match leader_status(&shared).await {
        Ok(status) => status,
        Err(response) => return response,
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(status.as_ref(), chrono::Utc::now().timestamp_millis()),
    )
        .into_response()
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: its help, type and samples.
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: &'a str,
    samples: Vec<(String, f64)>,
}

impl Family<'_> {
    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            let _ = writeln!(out, "{}{labels} {value}", self.name);
        }
    }
}

/// The Prometheus text for a status (`None`: this replica follows), with freshness
/// measured at `now_ms` (Unix millis).
pub fn render(status: Option<&ClusterStatus>, now_ms: i64) -> String {
    let mut out = String::new();
    let leads = status.is_some();
    Family {
        name: "smelter_coordinator_leader",
        help: "Whether this coordinator replica leads (1) or follows (0).",
        kind: "gauge",
        samples: vec![(String::new(), if leads { 1.0 } else { 0.0 })],
    }
    .write(&mut out);
    let Some(status) = status else {
        return out;
    };
    Family {
        name: "smelter_generation",
        help: "Assignment generation: raised by every change of placement.",
        kind: "gauge",
        samples: vec![(String::new(), status.generation as f64)],
    }
    .write(&mut out);
    Family {
        name: "smelter_workers",
        help: "Workers holding a live lease.",
        kind: "gauge",
        samples: vec![(String::new(), status.workers.len() as f64)],
    }
    .write(&mut out);
    let worker =
        |w: &smelter_proto::WorkerStatus| format!("{{worker=\"{}\"}}", label(&w.worker_id));
    Family {
        name: "smelter_worker_tasks",
        help: "Tasks assigned to each worker.",
        kind: "gauge",
        samples: status
            .workers
            .iter()
            .map(|w| (worker(w), f64::from(w.tasks)))
            .collect(),
    }
    .write(&mut out);
    Family {
        name: "smelter_worker_commits_fenced_total",
        help: "Commit attempts of each worker refused because its commit lock had lapsed.",
        kind: "counter",
        samples: status
            .workers
            .iter()
            .map(|w| (worker(w), w.commits_fenced as f64))
            .collect(),
    }
    .write(&mut out);
    file_reads(&mut out, status);

    let tasks: Vec<(String, smelter_proto::TaskStatusReport, &str)> = status
        .tasks
        .iter()
        .map(|t| {
            let task = t.task.clone().unwrap_or_default();
            let labels = format!(
                "{{task=\"{}\",kind=\"{}\",table=\"{}\",worker=\"{}\"}}",
                label(&task.task_id),
                task.kind()
                    .as_str_name()
                    .trim_start_matches("TASK_KIND_")
                    .to_ascii_lowercase(),
                label(&task.table),
                label(&t.worker_id)
            );
            // A task the leader placed but whose worker has not reported on it yet.
            let state = t.report.as_ref().map_or("assigned", |r| r.state().label());
            (labels, t.report.clone().unwrap_or_default(), state)
        })
        .collect();
    let per_task = |f: fn(&smelter_proto::TaskStatusReport) -> f64| -> Vec<(String, f64)> {
        tasks.iter().map(|(l, r, _)| (l.clone(), f(r))).collect()
    };
    for (name, help, kind, value) in [
        (
            "smelter_task_rows_committed_total",
            "Rows each task committed since it started.",
            "counter",
            (|r| r.rows_committed as f64) as fn(&smelter_proto::TaskStatusReport) -> f64,
        ),
        (
            "smelter_task_rows_quarantined_total",
            "Rows each task sent to quarantine since it started.",
            "counter",
            |r| r.rows_quarantined as f64,
        ),
        (
            "smelter_task_rows_dropped_total",
            "Rows each task dropped by expectations since it started.",
            "counter",
            |r| r.rows_dropped as f64,
        ),
        (
            "smelter_task_rows_deduplicated_total",
            "Rows each task removed as duplicates since it started.",
            "counter",
            |r| r.rows_deduplicated as f64,
        ),
        (
            "smelter_task_lag",
            "Work not yet done: source records (ingest) or upstream versions (refine, aggregate).",
            "gauge",
            |r| r.lag as f64,
        ),
        (
            "smelter_task_table_version",
            "Latest version of the target table the task committed or saw.",
            "gauge",
            |r| r.table_version as f64,
        ),
        (
            "smelter_task_table_rows",
            "Rows in the target table at that version.",
            "gauge",
            |r| r.table_rows as f64,
        ),
        (
            "smelter_task_last_commit_timestamp_seconds",
            "Time of the task's last successful commit (0: none yet).",
            "gauge",
            |r| r.last_commit_unix_ms as f64 / 1000.0,
        ),
    ] {
        Family {
            name,
            help,
            kind,
            samples: per_task(value),
        }
        .write(&mut out);
    }
    Family {
        name: "smelter_task_state",
        help: "Each task's reported state (assigned: not reported yet, starting, running, idle, backoff, failed, ...), as a label.",
        kind: "gauge",
        samples: tasks
            .iter()
            .map(|(labels, _, state)| {
                let labels = format!("{},state=\"{state}\"}}", labels.trim_end_matches('}'));
                (labels, 1.0)
            })
            .collect(),
    }
    .write(&mut out);
    timings(&mut out, status);
    tables(&mut out, &crate::catalog::Catalog::build(status, now_ms));
    out
}

/// The samples of one histogram with `labels` (`key="value",...`): cumulative buckets,
/// sum and count, each sample's name suffix first (`_bucket{...}`).
/// Where each worker's reads of data files found their rows (memory, the exchange,
/// storage), what the exchange refused, and the bytes read from storage.
fn file_reads(out: &mut String, status: &ClusterStatus) {
    let reads = |w: &smelter_proto::WorkerStatus| w.reads.unwrap_or_default();
    let mut by_source = Vec::new();
    for w in &status.workers {
        let r = reads(w);
        for (source, n) in [
            ("memory", r.memory),
            ("exchange", r.exchanged),
            ("storage", r.storage),
        ] {
            let labels = format!("{{worker=\"{}\",source=\"{source}\"}}", label(&w.worker_id));
            by_source.push((labels, n as f64));
        }
    }
    Family {
        name: "smelter_worker_file_reads_total",
        help: "Reads of upstream data files by each worker's tasks, by where the rows came from.",
        kind: "counter",
        samples: by_source,
    }
    .write(out);
    let per_worker = |f: fn(&smelter_proto::FileReads) -> u64| -> Vec<(String, f64)> {
        status
            .workers
            .iter()
            .map(|w| {
                (
                    format!("{{worker=\"{}\"}}", label(&w.worker_id)),
                    f(&reads(w)) as f64,
                )
            })
            .collect()
    };
    for (name, help, pick) in [
        (
            "smelter_worker_exchange_rejected_total",
            "Rows fetched over the exchange and refused: not the checksum or row count the commit recorded.",
            (|r| r.rejected) as fn(&smelter_proto::FileReads) -> u64,
        ),
        (
            "smelter_worker_exchange_failed_total",
            "Exchange fetches that failed or timed out (the file was read instead).",
            |r| r.failed,
        ),
        (
            "smelter_worker_exchange_served_total",
            "Files each worker sent to other workers over the exchange.",
            |r| r.served,
        ),
        (
            "smelter_worker_exchange_received_bytes_total",
            "Bytes each worker received over the exchange.",
            |r| r.exchanged_bytes,
        ),
        (
            "smelter_worker_storage_read_bytes_total",
            "Bytes of data files each worker's tasks read from storage.",
            |r| r.storage_bytes,
        ),
    ] {
        Family {
            name,
            help,
            kind: "counter",
            samples: per_worker(pick),
        }
        .write(out);
    }
}

fn histogram_samples(labels: &str, histogram: &smelter_proto::Histogram) -> Vec<(String, f64)> {
    let mut out = Vec::with_capacity(histogram.bounds.len() + 3);
    let mut cumulative = 0;
    for (i, bound) in histogram.bounds.iter().enumerate() {
        cumulative += histogram.counts.get(i).copied().unwrap_or(0);
        out.push((
            format!("_bucket{{{labels},le=\"{bound}\"}}"),
            cumulative as f64,
        ));
    }
    out.push((
        format!("_bucket{{{labels},le=\"+Inf\"}}"),
        histogram.count as f64,
    ));
    out.push((format!("_sum{{{labels}}}"), histogram.sum));
    out.push((format!("_count{{{labels}}}"), histogram.count as f64));
    out
}

/// Histograms: each worker's commit durations and commit-lock waits per table (from its
/// heartbeats), and each gold task's refresh durations (from its reports).
fn timings(out: &mut String, status: &ClusterStatus) {
    let per_worker_table =
        |pick: fn(&smelter_proto::TableTimings) -> Option<&smelter_proto::Histogram>| {
            status
                .workers
                .iter()
                .flat_map(|w| {
                    w.timings.iter().filter_map(move |t| {
                        let labels = format!(
                            "worker=\"{}\",table=\"{}\"",
                            label(&w.worker_id),
                            label(&t.table)
                        );
                        pick(t).map(|h| histogram_samples(&labels, h))
                    })
                })
                .flatten()
                .collect::<Vec<_>>()
        };
    Family {
        name: "smelter_commit_duration_seconds",
        help: "Commits of each worker to each table, first attempt to outcome.",
        kind: "histogram",
        samples: per_worker_table(|t| t.commit_seconds.as_ref()),
    }
    .write(out);
    Family {
        name: "smelter_commit_lock_wait_seconds",
        help: "Waits of each worker for each table's commit lock (stores shared through etcd).",
        kind: "histogram",
        samples: per_worker_table(|t| t.lock_wait_seconds.as_ref()),
    }
    .write(out);
    Family {
        name: "smelter_commit_failed_attempts_total",
        help: "Commit attempts of each worker to each table that failed and were decided again from the log.",
        kind: "counter",
        samples: status
            .workers
            .iter()
            .flat_map(|w| {
                w.timings.iter().map(move |t| {
                    (
                        format!(
                            "{{worker=\"{}\",table=\"{}\"}}",
                            label(&w.worker_id),
                            label(&t.table)
                        ),
                        t.failed_attempts as f64,
                    )
                })
            })
            .collect(),
    }
    .write(out);
    Family {
        name: "smelter_gold_refresh_duration_seconds",
        help: "Refreshes of each gold table committed by its task: read, compute and commit.",
        kind: "histogram",
        samples: status
            .tasks
            .iter()
            .filter_map(|t| {
                let task = t.task.as_ref()?;
                let refreshes = t.report.as_ref()?.refresh_seconds.as_ref()?;
                let labels = format!(
                    "task=\"{}\",table=\"{}\"",
                    label(&task.task_id),
                    label(&task.table)
                );
                Some(histogram_samples(&labels, refreshes))
            })
            .flatten()
            .collect(),
    }
    .write(out);
}

/// Per-table families: freshness, SLA state and failing checks.
fn tables(out: &mut String, catalog: &crate::catalog::Catalog) {
    let table = |name: &str| format!("{{table=\"{}\"}}", label(name));
    Family {
        name: "smelter_table_seconds_since_commit",
        help: "Time since the table's last commit, as its writers reported it.",
        kind: "gauge",
        samples: catalog
            .tables
            .values()
            .filter_map(|t| {
                t.freshness_ms
                    .map(|ms| (table(&t.name), ms as f64 / 1000.0))
            })
            .collect(),
    }
    .write(out);
    Family {
        name: "smelter_table_stale",
        help: "Whether the table is past its checks.freshness_sla (1) or within it (0).",
        kind: "gauge",
        samples: catalog
            .tables
            .values()
            .filter_map(|t| {
                t.stale
                    .map(|stale| (table(&t.name), f64::from(u8::from(stale))))
            })
            .collect(),
    }
    .write(out);
    Family {
        name: "smelter_table_checks_failing",
        help: "Table checks the writer's last pass failed, one sample per check.",
        kind: "gauge",
        samples: catalog
            .tables
            .values()
            .flat_map(|t| {
                t.failed_checks.iter().map(|failed| {
                    let check = failed.split_once(": ").map_or(failed.as_str(), |(c, _)| c);
                    let labels = format!(
                        "{{table=\"{}\",check=\"{}\"}}",
                        label(&t.name),
                        label(check)
                    );
                    (labels, 1.0)
                })
            })
            .collect(),
    }
    .write(out);
}

/// Serves the HTTP surface on `listener` until `shutdown`; over TLS with `tls`.
/// `flight_tls`: how `/query` dials the workers' Flight SQL, and a follower the leader.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    flight_tls: Option<smelter_sdk::TlsOptions>,
    role: watch::Receiver<Role>,
    auth: Arc<Authenticator>,
    shutdown: CancellationToken,
) {
    let shared = Shared {
        role,
        auth,
        workers: smelter_sdk::Channels::new(flight_tls.clone()),
        leader: smelter_sdk::Channels::new(flight_tls),
        turn: Arc::default(),
        last: relay::LastStatus::default(),
    };
    let router = Router::new()
        .route("/", get(status_page))
        .route("/status", get(status_page))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/query", axum::routing::post(query))
        .route("/tables", get(catalog::tables))
        .route("/tables/{name}", get(catalog::table))
        .route("/tables/{name}/history", get(catalog::history))
        .route("/tables/{name}/preview", get(catalog::preview))
        .route("/tables/{name}/quality", get(catalog::quality))
        .route("/catalog", get(catalog::catalog))
        .route("/catalog/lineage/{table}", get(catalog::lineage))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(shared);
    let Some(tls) = tls else {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server stopped");
        }
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // Each connection is a task of this set: dropped (aborted) with the server.
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "HTTP accept failed");
                    continue;
                }
            },
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        connections.spawn(async move {
            let stream = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %peer, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_followers_say_so() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let text = render(None, 0);
        assert!(text.contains("smelter_coordinator_leader 0"), "{text}");
        assert!(!text.contains("smelter_task_"), "{text}");
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let histogram = smelter_proto::Histogram {
            bounds: vec![0.01, 0.1],
            counts: vec![2, 1, 1],
            sum: 3.5,
            count: 4,
        };
        let status = ClusterStatus {
            workers: vec![smelter_proto::WorkerStatus {
                worker_id: "w1".into(),
                timings: vec![smelter_proto::TableTimings {
                    table: "bronze.events".into(),
                    commit_seconds: Some(histogram.clone()),
                    lock_wait_seconds: None,
                    failed_attempts: 2,
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(Some(&status), 0);
        for sample in [
            "# TYPE smelter_commit_duration_seconds histogram",
            "smelter_commit_duration_seconds_bucket{worker=\"w1\",table=\"bronze.events\",le=\"0.01\"} 2",
            "smelter_commit_duration_seconds_bucket{worker=\"w1\",table=\"bronze.events\",le=\"0.1\"} 3",
            "smelter_commit_duration_seconds_bucket{worker=\"w1\",table=\"bronze.events\",le=\"+Inf\"} 4",
            "smelter_commit_duration_seconds_sum{worker=\"w1\",table=\"bronze.events\"} 3.5",
            "smelter_commit_duration_seconds_count{worker=\"w1\",table=\"bronze.events\"} 4",
            "# TYPE smelter_commit_failed_attempts_total counter",
            "smelter_commit_failed_attempts_total{worker=\"w1\",table=\"bronze.events\"} 2",
        ] {
            assert!(text.contains(sample), "{sample} missing from:\n{text}");
        }
        assert!(
            !text.contains("smelter_commit_lock_wait_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn failing_checks_and_stale_tables_are_samples() {
        let status = ClusterStatus {
            pipelines: vec![smelter_proto::PipelineDefinition {
                name: "clickstream".into(),
                spec_yaml: include_str!("../../../examples/clickstream.yaml").into(),
                origin: "clickstream.yaml".into(),
                revision: 1,
                paused: false,
            }],
            tasks: vec![smelter_proto::TaskStatus {
                task: Some(smelter_proto::TaskAssignment {
                    task_id: "clickstream/refine/silver.events".into(),
                    table: "silver.events".into(),
                    ..Default::default()
                }),
                report: Some(smelter_proto::TaskStatusReport {
                    last_commit_unix_ms: 1_000,
                    failed_checks: vec!["unique(event_id): 2 repeated keys among 9 rows".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(Some(&status), 1_000 + 301_000);
        for sample in [
            "smelter_table_seconds_since_commit{table=\"silver.events\"} 301",
            "smelter_table_stale{table=\"silver.events\"} 1",
            "smelter_table_checks_failing{table=\"silver.events\",check=\"unique(event_id)\"} 1",
        ] {
            assert!(text.contains(sample), "{sample} missing from:\n{text}");
        }
    }
}
