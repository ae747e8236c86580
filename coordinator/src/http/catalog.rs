//! `GET /tables[?layer=...]`, `GET /tables/{name}`, `GET /catalog` and
//! `GET /catalog/lineage/{table}`: the [`crate::catalog`] as JSON, within the caller's
//! grants (a table outside them is left out of lists and is 403 by name).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use smelter_common::security::Principal;

use super::relay::{Source, cluster_status};
use super::{Shared, error, respond_rows, run_sql, wants_arrow};
use crate::catalog::Catalog;

fn json(value: serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// The caller, the catalog and where its status came from (any replica answers: see
/// [`super::relay`]), or the response to give instead.
async fn open(
    shared: &Shared,
    headers: HeaderMap,
) -> Result<(Principal, Catalog, Source), Response> {
    let metadata = tonic::metadata::MetadataMap::from_headers(headers);
    let caller = shared
        .auth
        .authenticate(&metadata)
        .map_err(|status| error(StatusCode::UNAUTHORIZED, status.message()))?;
    let (status, source) = cluster_status(shared, &metadata).await?;
    Ok((
        caller,
        Catalog::build(&status, chrono::Utc::now().timestamp_millis()),
        source,
    ))
}

/// `response` with the `x-smelter-status` header saying where the catalog came from.
fn stamp(mut response: Response, source: Source) -> Response {
    response
        .headers_mut()
        .insert("x-smelter-status", source.header());
    response
}

/// The named table, or why not (404, 403).
fn visible<'a>(
    catalog: &'a Catalog,
    caller: &Principal,
    name: &str,
) -> Result<&'a crate::catalog::TableEntry, (StatusCode, String)> {
    let Some(entry) = catalog.tables.get(name) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no table {name} in any applied pipeline"),
        ));
    };
    if !caller.may_read(name) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("{} may not read {name}", caller.name),
        ));
    }
    Ok(entry)
}

pub(super) async fn tables(State(shared): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    let (caller, catalog, source) = match open(&shared, headers).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let layer = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("layer="));
    if let Some(layer) = layer.filter(|l| !matches!(*l, "bronze" | "silver" | "gold")) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("layer must be bronze, silver or gold, not {layer}"),
        );
    }
    let tables: Vec<_> = catalog
        .tables
        .values()
        .filter(|t| layer.is_none_or(|l| t.layer == l) && caller.may_read(&t.name))
        .collect();
    stamp(json(serde_json::json!({ "tables": tables })), source)
}

/// The pipeline's view of the table and, under `detail`, the table as its log has it
/// (`table_detail`: schema, files, bytes, small files, rows, properties); `detail` is
/// null, with `detail_error` saying why, while the table does not exist yet or no worker
/// answers.
pub(super) async fn table(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
    let (caller, catalog, source) = match open(&shared, headers).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let entry = match visible(&catalog, &caller, &name) {
        Ok(entry) => entry,
        Err((status, message)) => return error(status, message),
    };
    let mut body = serde_json::to_value(entry).unwrap_or_default();
    let sql = format!("SELECT * FROM table_detail('{name}')");
    match run_sql(&shared, &metadata, &sql).await.map(|b| detail(&b)) {
        Ok(Ok(detail)) => body["detail"] = detail,
        Ok(Err(message)) => {
            body["detail"] = serde_json::Value::Null;
            body["detail_error"] = message.into();
        }
        Err(response) => {
            body["detail"] = serde_json::Value::Null;
            body["detail_error"] = response_message(response).await.into();
        }
    }
    stamp(json(body), source)
}

/// The one row of `table_detail`, with its JSON columns parsed.
fn detail(batches: &[arrow::record_batch::RecordBatch]) -> Result<serde_json::Value, String> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for batch in batches {
        writer.write(batch).map_err(|e| e.to_string())?;
    }
    writer.finish().map_err(|e| e.to_string())?;
    let rows: serde_json::Value =
        serde_json::from_slice(&writer.into_inner()).map_err(|e| e.to_string())?;
    let mut row = rows
        .get(0)
        .cloned()
        .ok_or_else(|| "table_detail returned no row".to_string())?;
    for key in ["schema", "properties"] {
        if let Some(text) = row[key].as_str() {
            row[key] = serde_json::from_str(text).map_err(|e| format!("{key}: {e}"))?;
        }
    }
    Ok(row)
}

/// The message of an error response made by [`error`].
async fn response_message(response: Response) -> String {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| status.to_string())
}

pub(super) async fn catalog(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let (caller, catalog, source) = match open(&shared, headers).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let mut owners = serde_json::Map::new();
    let mut tags = serde_json::Map::new();
    for table in catalog.tables.values().filter(|t| caller.may_read(&t.name)) {
        if let Some(owner) = &table.owner {
            let list = owners
                .entry(owner.clone())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let Some(list) = list.as_array_mut() {
                list.push(table.name.clone().into());
            }
        }
        for tag in &table.tags {
            let list = tags
                .entry(tag.clone())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let Some(list) = list.as_array_mut() {
                list.push(table.name.clone().into());
            }
        }
    }
    stamp(
        json(serde_json::json!({
            "pipelines": catalog.pipelines,
            "owners": owners,
            "tags": tags,
            "edges": catalog.edges(),
            "workers": catalog.workers,
        })),
        source,
    )
}

pub(super) async fn lineage(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    uri: Uri,
) -> Response {
    let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
    let (caller, catalog, source) = match open(&shared, headers).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    if let Err((status, message)) = visible(&catalog, &caller, &name) {
        return error(status, message);
    }
    if let Some(version) = param(&uri, "version") {
        let Ok(version) = version.parse::<i64>() else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("version must be a table version, not {version:?}"),
            );
        };
        return match version_lineage(&shared, &metadata, name, version, 0).await {
            Ok(tree) => stamp(json(tree), source),
            Err(response) => response,
        };
    }
    let (upstream, downstream) = catalog.lineage(&name);
    let mut body = serde_json::json!({
        "table": name,
        "upstream": upstream,
        "downstream": downstream,
    });
    // Gold: which upstream columns feed each column, from the table's SQL.
    if name.starts_with("gold.") {
        let sql = format!("SELECT * FROM column_lineage('{name}')");
        match run_sql(&shared, &metadata, &sql).await {
            Ok(batches) => body["columns"] = column_lineage(&batches),
            Err(response) => body["columns_error"] = response_message(response).await.into(),
        }
    }
    stamp(json(body), source)
}

/// `column_lineage` rows as `{column: ["silver.events.user_id", ...]}` (an empty list for
/// a column computed from none).
fn column_lineage(batches: &[arrow::record_batch::RecordBatch]) -> serde_json::Value {
    use arrow::array::{Array, AsArray};
    let mut out = serde_json::Map::new();
    for batch in batches {
        let columns = batch.column(0).as_string::<i32>();
        let tables = batch.column(1).as_string::<i32>();
        let upstream = batch.column(2).as_string::<i32>();
        for row in 0..batch.num_rows() {
            let list = out
                .entry(columns.value(row).to_string())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if tables.is_valid(row)
                && let Some(list) = list.as_array_mut()
            {
                list.push(format!("{}.{}", tables.value(row), upstream.value(row)).into());
            }
        }
    }
    serde_json::Value::Object(out)
}

/// The value of `key` in the query string, if given.
fn param<'a>(uri: &'a Uri, key: &str) -> Option<&'a str> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// `?limit=N` within `1..=max`, `default` when absent; what is wrong otherwise (a 400).
fn limit(uri: &Uri, default: usize, max: usize) -> Result<usize, String> {
    match param(uri, "limit") {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "limit must be a number from 1 to {max}, not {text:?}"
            )),
        },
    }
}

/// The caller's view of table `name` checked, the SQL's rows as the response.
async fn table_sql(
    shared: &Shared,
    headers: HeaderMap,
    name: &str,
    sql: String,
    limit: usize,
) -> Response {
    let arrow = wants_arrow(&headers);
    let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
    let (caller, catalog, source) = match open(shared, headers).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    if let Err((status, message)) = visible(&catalog, &caller, name) {
        return error(status, message);
    }
    match run_sql(shared, &metadata, &sql).await {
        Ok(batches) => stamp(respond_rows(batches, limit, arrow), source),
        Err(response) => response,
    }
}

pub(super) async fn history(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    uri: Uri,
) -> Response {
    let limit = match limit(&uri, 100, 10_000) {
        Ok(limit) => limit,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    // Table names are `layer.name` identifiers (the catalog checked it exists).
    let sql = format!("SELECT * FROM table_history('{name}') ORDER BY version DESC");
    table_sql(&shared, headers, &name, sql, limit).await
}

pub(super) async fn preview(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    uri: Uri,
) -> Response {
    let limit = match limit(&uri, 10, 1_000) {
        Ok(limit) => limit,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let sql = format!("SELECT * FROM {name} LIMIT {limit}");
    table_sql(&shared, headers, &name, sql, limit).await
}

pub(super) async fn quality(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    uri: Uri,
) -> Response {
    let since = param(&uri, "since").map(|s| s.replace("%3A", ":").replace("%2B", "+"));
    let since_ms = match since.as_deref().map(chrono::DateTime::parse_from_rfc3339) {
        None => None,
        Some(Ok(at)) => Some(at.timestamp_millis()),
        Some(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("since must be an RFC 3339 time (2026-11-01T10:00:00Z): {e}"),
            );
        }
    };
    let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
    let (caller, catalog, source) = match open(&shared, headers).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    if let Err((status, message)) = visible(&catalog, &caller, &name) {
        return error(status, message);
    }
    let sql = format!(
        "SELECT version, CAST(timestamp AS BIGINT) AS at_ms, quality FROM table_history('{name}') \
         WHERE quality IS NOT NULL ORDER BY version"
    );
    let batches = match run_sql(&shared, &metadata, &sql).await {
        Ok(batches) => batches,
        Err(response) => return response,
    };
    match summarize(&batches, since_ms) {
        Ok(mut body) => {
            body["table"] = name.into();
            body["since"] = since.into();
            stamp(json(body), source)
        }
        Err(message) => error(StatusCode::BAD_GATEWAY, message),
    }
}

/// The figures of every commit at or after `since_ms`, and their sums (see
/// [`smelter_common::quality`]).
fn summarize(
    batches: &[arrow::record_batch::RecordBatch],
    since_ms: Option<i64>,
) -> Result<serde_json::Value, String> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    let mut summary = smelter_common::quality::QualitySummary::default();
    for batch in batches {
        let versions = batch.column(0).as_primitive::<Int64Type>();
        let at = batch.column(1).as_primitive::<Int64Type>();
        let figures = batch.column(2).as_string::<i32>();
        for row in 0..batch.num_rows() {
            let at_ms = at.is_valid(row).then(|| at.value(row));
            if since_ms.is_some_and(|since| at_ms.is_none_or(|t| t < since)) {
                continue;
            }
            let quality: serde_json::Value = serde_json::from_str(figures.value(row))
                .map_err(|e| format!("version {}: {e}", versions.value(row)))?;
            summary.add(versions.value(row), at_ms, quality);
        }
    }
    Ok(summary.into_json())
}

/// How far down a version's lineage is followed (gold, silver, bronze, and a margin).
const LINEAGE_DEPTH: usize = 4;

/// What version `version` of `name` was computed from: the source offsets it consumed
/// (bronze) and, for each upstream table, the version it read and what that version was
/// computed from in turn — down to the source offsets that fed a gold version.
fn version_lineage<'a>(
    shared: &'a Shared,
    metadata: &'a tonic::metadata::MetadataMap,
    name: String,
    version: i64,
    depth: usize,
) -> futures::future::BoxFuture<'a, Result<serde_json::Value, Response>> {
    Box::pin(async move {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::{Int32Type, Int64Type};
        let sql = format!(
            "SELECT kind, upstream, \"partition\", position FROM table_positions('{name}', {version}) \
             ORDER BY upstream, \"partition\""
        );
        let batches = run_sql(shared, metadata, &sql).await?;
        let mut sources = Vec::new();
        let mut upstream = Vec::new();
        for batch in &batches {
            let kinds = batch.column(0).as_string::<i32>();
            let names = batch.column(1).as_string::<i32>();
            let partitions = batch.column(2).as_primitive::<Int32Type>();
            let positions = batch.column(3).as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                let position = positions.value(row);
                if kinds.value(row) == "source" {
                    sources.push(serde_json::json!({
                        "topic": names.value(row),
                        "partition": partitions.is_valid(row).then(|| partitions.value(row)),
                        "offset": position,
                    }));
                } else if position >= 0 && depth < LINEAGE_DEPTH {
                    upstream.push(
                        version_lineage(
                            shared,
                            metadata,
                            names.value(row).to_string(),
                            position,
                            depth + 1,
                        )
                        .await?,
                    );
                } else {
                    upstream.push(serde_json::json!({
                        "table": names.value(row),
                        "version": position,
                    }));
                }
            }
        }
        Ok(serde_json::json!({
            "table": name,
            "version": version,
            "sources": sources,
            "upstream": upstream,
        }))
    })
}
