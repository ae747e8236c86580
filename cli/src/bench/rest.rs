//! The REST API's cost, measured at the end of the in-process end-to-end run, against the
//! tables that run wrote: how long `GET /tables/{name}` (the catalog entry and the table's
//! detail from its log) and `POST /query` (a dashboard's gold query, run by a worker over
//! Flight SQL) take, and the CPU each costs — reported as the share of the pipeline's own
//! CPU per second (from the same run) that serving one such request a second takes.
//!
//! The CPU counter is the bench process's, which also runs the HTTP client: the share is an
//! upper bound. The pipeline keeps running while the requests are served (idle: its tasks
//! poll their sources and upstreams), so the process's CPU per second over a quiet window
//! of [`IDLE_WINDOW`] just before is subtracted from each kind's CPU over its wall time;
//! the gross figures are reported too. Every answer must be a 200 with the rows the tables hold; anything else
//! fails the benchmark instead of giving a figure.

use std::time::Instant;

use serde::Serialize;

use super::measure::cpu_seconds;
use crate::{CliError, Result};

/// Requests of each kind timed (after one unmeasured warm-up of each).
const REQUESTS: usize = 40;

/// How long the process's CPU is measured without requests.
const IDLE_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// The table whose entry is read.
const TABLE: &str = "gold.hourly_metrics";

/// The query posted.
const QUERY: &str = "SELECT hour, event_type, events, users, revenue FROM gold.hourly_metrics \
                     ORDER BY hour DESC, event_type LIMIT 96";

/// The REST figures of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestFigures {
    /// Requests of each kind timed.
    pub requests: usize,
    /// `GET /tables/{name}`: median and slowest, milliseconds.
    pub table_p50_ms: f64,
    /// Slowest `GET /tables/{name}`, milliseconds.
    pub table_max_ms: f64,
    /// `POST /query`: median, milliseconds.
    pub query_p50_ms: f64,
    /// Slowest `POST /query`, milliseconds.
    pub query_max_ms: f64,
    /// Rows each query returned.
    pub query_rows: usize,
    /// CPU of one `GET /tables/{name}` (server and client), milliseconds, net of the
    /// process's idle CPU over the same time.
    pub table_cpu_ms: f64,
    /// CPU of one `POST /query` (server, worker and client), milliseconds, net of idle.
    pub query_cpu_ms: f64,
    /// The process's CPU per second without requests (the idle pipeline), CPU-s/s.
    pub idle_cpu_per_second: f64,
    /// `table_cpu_ms` before subtracting idle.
    pub table_gross_cpu_ms: f64,
    /// `query_cpu_ms` before subtracting idle.
    pub query_gross_cpu_ms: f64,
    /// The pipeline's CPU per second of the run, CPU-seconds per second.
    pub pipeline_cpu_per_second: f64,
    /// `table_cpu_ms / 1000 / pipeline_cpu_per_second`: what one `GET /tables/{name}` a
    /// second costs, as a share of the pipeline's CPU.
    pub table_fraction_at_1_per_second: f64,
    /// The same for one `POST /query` a second.
    pub query_fraction_at_1_per_second: f64,
}

fn failed(what: &str, message: impl std::fmt::Display) -> CliError {
    CliError::Bench(format!("REST {what}: {message}"))
}

/// One request's JSON answer, failing on anything but a 200.
async fn answer(request: reqwest::RequestBuilder, what: &str) -> Result<serde_json::Value> {
    let response = request.send().await.map_err(|e| failed(what, e))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| failed(what, e))?;
    if !status.is_success() {
        return Err(failed(
            what,
            format!("{status}: {}", String::from_utf8_lossy(&body)),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| failed(what, e))
}

fn median_and_max(mut times: Vec<f64>) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[times.len() - 1])
}

/// Measures the REST API at `http` (see the module docs); `pipeline_cpu_per_second` is the
/// run's CPU-seconds over its wall seconds; `gold_rows` the rows the hourly table holds.
pub async fn measure(
    http: &str,
    pipeline_cpu_per_second: f64,
    gold_rows: usize,
) -> Result<RestFigures> {
    let client = reqwest::Client::new();
    let table = || client.get(format!("{http}/tables/{TABLE}"));
    let query = || {
        client
            .post(format!("{http}/query"))
            .header("Content-Type", "application/json")
            .body(serde_json::json!({ "sql": QUERY, "limit": 1000 }).to_string())
    };
    answer(table(), "warm-up").await?;
    answer(query(), "warm-up").await?;
    let idle_started = Instant::now();
    let idle_cpu = cpu_seconds(None).unwrap_or(0.0);
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_cpu_per_second =
        (cpu_seconds(None).unwrap_or(0.0) - idle_cpu) / idle_started.elapsed().as_secs_f64();
    let cpu_before = cpu_seconds(None).unwrap_or(0.0);
    let tables_started = Instant::now();
    let mut table_times = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let entry = answer(table(), "GET /tables/{name}").await?;
        table_times.push(started.elapsed().as_secs_f64() * 1000.0);
        if entry["detail"].is_null() {
            return Err(failed("GET /tables/{name}", format!("no detail: {entry}")));
        }
    }
    let cpu_between = cpu_seconds(None).unwrap_or(0.0);
    let tables_took = tables_started.elapsed().as_secs_f64();
    let queries_started = Instant::now();
    let mut query_times = Vec::with_capacity(REQUESTS);
    let mut query_rows = 0;
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let rows = answer(query(), "POST /query").await?;
        query_times.push(started.elapsed().as_secs_f64() * 1000.0);
        query_rows = rows["rows"].as_array().map_or(0, Vec::len);
    }
    let cpu_after = cpu_seconds(None).unwrap_or(0.0);
    let queries_took = queries_started.elapsed().as_secs_f64();
    let expected = gold_rows.min(96);
    if query_rows != expected {
        return Err(failed(
            "POST /query",
            format!("{query_rows} rows, the table gives {expected}"),
        ));
    }
    let (table_p50_ms, table_max_ms) = median_and_max(table_times);
    let (query_p50_ms, query_max_ms) = median_and_max(query_times);
    let per_request = |cpu: f64| cpu * 1000.0 / REQUESTS as f64;
    let table_gross_cpu_ms = per_request(cpu_between - cpu_before);
    let query_gross_cpu_ms = per_request(cpu_after - cpu_between);
    let net =
        |gross_ms: f64, took: f64| (gross_ms - per_request(idle_cpu_per_second * took)).max(0.0);
    let table_cpu_ms = net(table_gross_cpu_ms, tables_took);
    let query_cpu_ms = net(query_gross_cpu_ms, queries_took);
    let share = |cpu_ms: f64| {
        if pipeline_cpu_per_second > 0.0 {
            cpu_ms / 1000.0 / pipeline_cpu_per_second
        } else {
            0.0
        }
    };
    Ok(RestFigures {
        requests: REQUESTS,
        table_p50_ms,
        table_max_ms,
        query_p50_ms,
        query_max_ms,
        query_rows,
        table_cpu_ms,
        query_cpu_ms,
        idle_cpu_per_second,
        table_gross_cpu_ms,
        query_gross_cpu_ms,
        pipeline_cpu_per_second,
        table_fraction_at_1_per_second: share(table_cpu_ms),
        query_fraction_at_1_per_second: share(query_cpu_ms),
    })
}
