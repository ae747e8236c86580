//! Which tables read which, as their logs say: every downstream commit carries a txn
//! `"<table>/<upstream>"` (see `smelter_lake::AppId`). Read from the tables themselves, so
//! `smelter delete --cascade` and `smelter restore` work with or without a running cluster.

use std::collections::BTreeSet;

use smelter_lake::history::entries;
use smelter_lake::{AppId, TableStore};

use crate::Result;

/// Commits read to find which tables a table reads and which read it.
const LINEAGE_COMMITS: usize = 200;

/// The tables `name`'s recent commits say it read (their upstream txns).
pub async fn upstreams(tables: &TableStore, name: &str) -> Result<Vec<String>> {
    let table = tables.open(name).await?;
    let mut found = BTreeSet::new();
    for entry in entries(&table, name, Some(LINEAGE_COMMITS)).await? {
        for consumed in &entry.consumed {
            let app_id = consumed
                .split_once('=')
                .map_or(consumed.as_str(), |(a, _)| a);
            if let Some(AppId::Upstream { table, upstream }) = AppId::parse(app_id)
                && table == name
            {
                found.insert(upstream);
            }
        }
    }
    Ok(found.into_iter().collect())
}

/// The tables whose recent commits say they read `name`.
pub async fn readers(tables: &TableStore, name: &str) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for other in tables.list().await {
        if other == name {
            continue;
        }
        let table = tables.open(&other).await?;
        let reads = entries(&table, &other, Some(LINEAGE_COMMITS))
            .await?
            .iter()
            .flat_map(|e| &e.consumed)
            .any(|c| c.starts_with(&format!("{other}/{name}=")));
        if reads {
            found.push(other);
        }
    }
    Ok(found)
}
