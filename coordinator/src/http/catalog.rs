//! `GET /tables[?layer=...]`, `GET /tables/{name}`, `GET /catalog` and
//! `GET /catalog/lineage/{table}`: the [`crate::catalog`] as JSON, within the caller's
//! grants (a table outside them is left out of lists and is 403 by name).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use smelter_common::security::Principal;

use super::{Shared, error, leader_status};
use crate::catalog::Catalog;

fn json(value: serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// The caller and the catalog, or the response to give instead.
async fn open(shared: &Shared, headers: HeaderMap) -> Result<(Principal, Catalog), Response> {
    let metadata = tonic::metadata::MetadataMap::from_headers(headers);
    let caller = shared
        .auth
        .authenticate(&metadata)
        .map_err(|status| error(StatusCode::UNAUTHORIZED, status.message()))?;
    match leader_status(shared).await? {
        Some(status) => Ok((caller, Catalog::build(&status))),
        None => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica does not lead; ask the leader",
        )),
    }
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
    let (caller, catalog) = match open(&shared, headers).await {
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
    json(serde_json::json!({ "tables": tables }))
}

pub(super) async fn table(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let (caller, catalog) = match open(&shared, headers).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    match visible(&catalog, &caller, &name) {
        Ok(entry) => json(serde_json::to_value(entry).unwrap_or_default()),
        Err((status, message)) => error(status, message),
    }
}

pub(super) async fn catalog(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let (caller, catalog) = match open(&shared, headers).await {
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
    json(serde_json::json!({
        "pipelines": catalog.pipelines,
        "owners": owners,
        "tags": tags,
    }))
}

pub(super) async fn lineage(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    uri: Uri,
) -> Response {
    let (caller, catalog) = match open(&shared, headers).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    if let Err((status, message)) = visible(&catalog, &caller, &name) {
        return error(status, message);
    }
    if uri.query().unwrap_or_default().contains("version=") {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "lineage of one version (the upstream versions and offsets it consumed) is not \
             served yet: `smelter history` shows them per version",
        );
    }
    let (upstream, downstream) = catalog.lineage(&name);
    json(serde_json::json!({
        "table": name,
        "upstream": upstream,
        "downstream": downstream,
    }))
}
