//! A table's commit history, read back from its `_delta_log` version by version.
//!
//! The verifier replays the raw actions to check the commit protocol; the benchmark reads
//! the summaries ([`Commit`]) to learn when each version landed, which txn versions it
//! carried (so which upstream positions it covers) and how many files and bytes it added.
//! Both read the log itself, never the writers' bookkeeping.

use deltalake::DeltaTable;
use deltalake::kernel::Action;

use crate::app_id::AppId;
use crate::{LakeError, Result};
use crate::{changes, log};

/// The actions of one log version, or `None` where the version is missing from the log.
pub type LogEntry = (i64, Option<Vec<Action>>);

/// Every version from the first one still kept (older ones may have been cleaned up) to
/// the table's latest, in order.
pub async fn read_log(table: &DeltaTable, name: &str) -> Result<Vec<LogEntry>> {
    let delta = |e| LakeError::delta(name, e);
    let latest = log::version(table);
    let log_store = table.log_store();
    let mut first = 0;
    while first <= latest
        && log_store
            .read_commit_entry(first as u64)
            .await
            .map_err(delta)?
            .is_none()
    {
        first += 1;
    }
    let mut entries = Vec::with_capacity((latest - first + 1).max(0) as usize);
    for version in first..=latest {
        entries.push((
            version,
            changes::commit_actions(table, name, version).await?,
        ));
    }
    Ok(entries)
}

/// What one commit did, in brief.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commit {
    /// Log version.
    pub version: i64,
    /// The writer's commit time (commitInfo), milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    /// The operation (`WRITE`, `OPTIMIZE`, ...).
    pub operation: Option<String>,
    /// Txn actions: (appId, version).
    pub txns: Vec<(String, i64)>,
    /// Data files added with `dataChange = true`.
    pub files_added: usize,
    /// Their bytes.
    pub bytes_added: u64,
    /// Data files added without a data change (a compaction's, a rewrite's).
    pub files_rewritten: usize,
    /// Data files removed.
    pub files_removed: usize,
    /// Where the commit's time went, milliseconds per stage (see
    /// [`crate::timings::STAGES_KEY`]); empty for commits that did not say.
    pub stages: std::collections::BTreeMap<String, f64>,
    /// The commitInfo's Smelter entries (keys starting `smelter.`), as written.
    pub smelter_info: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The summaries of every kept version of `table`.
pub async fn commits(table: &DeltaTable, name: &str) -> Result<Vec<Commit>> {
    let log = read_log(table, name).await?;
    Ok(log
        .into_iter()
        .filter_map(|(version, actions)| {
            let mut commit = Commit {
                version,
                ..Commit::default()
            };
            for action in actions? {
                match action {
                    Action::CommitInfo(info) => {
                        commit.timestamp_ms = info.timestamp;
                        commit.operation = info.operation;
                        if let Some(stages) = info.info.get(crate::timings::STAGES_KEY) {
                            commit.stages = crate::timings::stages_of(stages);
                        }
                        commit.smelter_info = info
                            .info
                            .into_iter()
                            .filter(|(k, _)| k.starts_with("smelter."))
                            .collect();
                    }
                    Action::Txn(txn) => commit.txns.push((txn.app_id, txn.version)),
                    Action::Add(add) if add.data_change => {
                        commit.files_added += 1;
                        commit.bytes_added += add.size.max(0) as u64;
                    }
                    Action::Add(_) => commit.files_rewritten += 1,
                    Action::Remove(_) => commit.files_removed += 1,
                    _ => {}
                }
            }
            Some(commit)
        })
        .collect())
}

/// One version as `smelter history` and `table_history(...)` show it: what the commit
/// did and what it consumed, read from its actions alone.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Entry {
    /// Log version.
    pub version: i64,
    /// The writer's commit time (commitInfo), milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    /// What it was, in Smelter's words: `ingest`, `refine`, `aggregate`, `compact`,
    /// `restore`, `delete`, `vacuum`, `create`, `describe` (the catalog description,
    /// [`crate::describe`]), `overwrite`, or Delta's operation name
    /// for commits Smelter did not make.
    pub operation: String,
    /// Delta's operation name (`WRITE`, `OPTIMIZE`, ...).
    pub delta_operation: Option<String>,
    /// Rows in the data files it added (from their statistics).
    pub rows_added: u64,
    /// Data files added (data changes and rewrites alike).
    pub files_added: usize,
    /// Data files removed.
    pub files_removed: usize,
    /// Bytes added.
    pub bytes_added: u64,
    /// What it consumed: each txn but the epoch, as `appId=version` (source offsets for
    /// ingest, upstream versions for refine and aggregate).
    pub consumed: Vec<String>,
    /// The commit lock's epoch it was written under, if any.
    pub epoch: Option<i64>,
    /// Who wrote it (host, process id, Flight address), where the writer said.
    pub writer: Option<String>,
    /// What a refine pass did to its rows (see [`crate::commit::QUALITY_KEY`]).
    pub quality: Option<serde_json::Value>,
    /// Where the commit's time went, milliseconds per stage (see
    /// [`crate::timings::STAGES_KEY`]).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stages: std::collections::BTreeMap<String, f64>,
}

/// Smelter's name for a commit with these txns and Delta operation.
fn operation_kind(txns: &[(String, i64)], delta: Option<&str>, overwrite: bool) -> String {
    // Rewrites first: a restore moves positions too, but it ingests or refines nothing.
    match delta.unwrap_or_default() {
        "OPTIMIZE" => return "compact".into(),
        "RESTORE" => return "restore".into(),
        "DELETE" => return "delete".into(),
        _ => {}
    }
    let apps: Vec<AppId> = txns.iter().filter_map(|(a, _)| AppId::parse(a)).collect();
    if apps.iter().any(|a| matches!(a, AppId::Source { .. })) {
        return "ingest".into();
    }
    if apps.iter().any(|a| matches!(a, AppId::Replay { .. })) {
        return "replay".into();
    }
    if let Some(table) = apps.iter().find_map(|a| match a {
        AppId::Upstream { table, .. } => Some(table),
        _ => None,
    }) {
        return if table.starts_with("gold.") {
            "aggregate".into()
        } else {
            "refine".into()
        };
    }
    match delta.unwrap_or_default() {
        "OPTIMIZE" => "compact".into(),
        "RESTORE" => "restore".into(),
        "DELETE" => "delete".into(),
        "VACUUM START" | "VACUUM END" => "vacuum".into(),
        "CREATE TABLE" => "create".into(),
        "SET TBLPROPERTIES" => "describe".into(),
        "WRITE" if overwrite => "overwrite".into(),
        "" => "unknown".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// Rows recorded in an add action's statistics.
fn rows_in(stats: Option<&str>) -> u64 {
    stats
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| v.get("numRecords").and_then(serde_json::Value::as_u64))
        .unwrap_or(0)
}

/// The entries of every kept version of `table`, newest first, at most `limit` of them.
pub async fn entries(table: &DeltaTable, name: &str, limit: Option<usize>) -> Result<Vec<Entry>> {
    let latest = log::version(table);
    let limit = limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut version = latest;
    while version >= 0 && out.len() < limit {
        // Older versions may have been cleaned up: the history ends at the first gap.
        let Some(actions) = changes::commit_actions(table, name, version).await? else {
            break;
        };
        out.push(entry(version, actions));
        version -= 1;
    }
    Ok(out)
}

fn entry(version: i64, actions: Vec<Action>) -> Entry {
    let mut entry = Entry {
        version,
        timestamp_ms: None,
        operation: String::new(),
        delta_operation: None,
        rows_added: 0,
        files_added: 0,
        files_removed: 0,
        bytes_added: 0,
        consumed: Vec::new(),
        epoch: None,
        writer: None,
        quality: None,
        stages: Default::default(),
    };
    let mut txns = Vec::new();
    let mut overwrite = false;
    for action in actions {
        match action {
            Action::CommitInfo(info) => {
                entry.timestamp_ms = info.timestamp;
                entry.writer = info
                    .info
                    .get(crate::commit::WRITER_KEY)
                    .and_then(|w| w.as_str())
                    .map(str::to_string);
                entry.quality = info.info.get(crate::commit::QUALITY_KEY).cloned();
                if let Some(stages) = info.info.get(crate::timings::STAGES_KEY) {
                    entry.stages = crate::timings::stages_of(stages);
                }
                overwrite = info
                    .operation_parameters
                    .as_ref()
                    .and_then(|p| p.get("mode"))
                    .is_some_and(|m| m.as_str() == Some("Overwrite"));
                entry.delta_operation = info.operation;
            }
            Action::Txn(txn) if txn.app_id == crate::app_id::EPOCH => {
                entry.epoch = Some(txn.version);
            }
            Action::Txn(txn) => txns.push((txn.app_id, txn.version)),
            Action::Add(add) => {
                entry.files_added += 1;
                entry.bytes_added += add.size.max(0) as u64;
                entry.rows_added += rows_in(add.stats.as_deref());
            }
            Action::Remove(_) => entry.files_removed += 1,
            _ => {}
        }
    }
    entry.operation = operation_kind(&txns, entry.delta_operation.as_deref(), overwrite);
    entry.consumed = txns.iter().map(|(a, v)| format!("{a}={v}")).collect();
    entry
}

/// The oldest version whose commit is still in the log (time travel cannot go further).
pub async fn oldest_version(table: &DeltaTable, name: &str) -> Result<i64> {
    let latest = log::version(table);
    let log_store = table.log_store();
    let mut first = 0;
    while first < latest
        && log_store
            .read_commit_entry(first as u64)
            .await
            .map_err(|e| LakeError::delta(name, e))?
            .is_none()
    {
        first += 1;
    }
    Ok(first)
}

/// The oldest version time travel can read, and why no older one: the log no longer
/// holds it, it is past the table's history retention, or a vacuum deleted files it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oldest {
    /// The version.
    pub version: i64,
    /// What bounds it, for an error message: `no longer in the log`, `beyond the table's
    /// history retention (interval 2592000 seconds)`, `its files were vacuumed`.
    pub because: String,
}

/// The oldest version of `table` time travel can read at `now_ms` (see [`Oldest`]): the
/// latest of the oldest version in the log, the first version committed within the
/// history retention (when the table declares one, `delta.logRetentionDuration`), and
/// the first version whose files no vacuum has deleted (the maintenance record's
/// `readable_from`).
pub async fn oldest_available(table: &DeltaTable, name: &str, now_ms: i64) -> Result<Oldest> {
    let mut oldest = Oldest {
        version: oldest_version(table, name).await?,
        because: "older versions are no longer in the log".into(),
    };
    let window = table.snapshot().ok().and_then(|s| {
        s.metadata()
            .configuration()
            .get(crate::describe::HISTORY_PROPERTY)
            .cloned()
    });
    if let Some((text, duration)) =
        window.and_then(|t| crate::describe::parse_interval(&t).map(|d| (t, d)))
    {
        let cut = now_ms - duration.as_millis() as i64;
        // The first version committed at or after the cut: the one before it was
        // committed before the window began.
        let first = match version_at(table, name, cut - 1).await? {
            Some(before) => before + 1,
            None => oldest.version,
        };
        let first = first.min(log::version(table));
        if first > oldest.version {
            oldest = Oldest {
                version: first,
                because: format!(
                    "older versions are beyond the table's history retention ({text})"
                ),
            };
        }
    }
    let record = crate::maintenance_record::read(table, name).await?;
    if let Some(readable) = record
        .and_then(|r| r.readable_from)
        .filter(|v| *v > oldest.version)
    {
        oldest = Oldest {
            version: readable,
            because: "older versions' data files were vacuumed".into(),
        };
    }
    Ok(oldest)
}

/// The latest version committed at or before `at_ms` (commitInfo time), or `None` if the
/// oldest kept version is later.
pub async fn version_at(table: &DeltaTable, name: &str, at_ms: i64) -> Result<Option<i64>> {
    let mut version = log::version(table);
    while version >= 0 {
        let Some(actions) = changes::commit_actions(table, name, version).await? else {
            return Ok(None);
        };
        let time = actions.iter().find_map(|a| match a {
            Action::CommitInfo(info) => info.timestamp,
            _ => None,
        });
        if time.is_some_and(|t| t <= at_ms) {
            return Ok(Some(version));
        }
        version -= 1;
    }
    Ok(None)
}

/// Milliseconds since the epoch of an RFC 3339 timestamp, a `YYYY-MM-DD HH:MM:SS[.f]`
/// (UTC) or a date (its midnight, UTC).
pub fn parse_timestamp(text: &str) -> Option<i64> {
    use chrono::{NaiveDate, NaiveDateTime};
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(at.timestamp_millis());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(text, format) {
            return Some(at.and_utc().timestamp_millis());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc().timestamp_millis())
}

/// Every txn position of `table` as of `version` (the epoch aside), from the kept log: what
/// the table had consumed at that version — source offsets for bronze, upstream versions
/// for silver and gold. An error names the versions there are when `version` is not one.
pub async fn positions_at(
    table: &DeltaTable,
    name: &str,
    version: i64,
) -> Result<Vec<(AppId, i64)>> {
    let log = read_log(table, name).await?;
    let first = log.first().map_or(0, |(v, _)| *v);
    let latest = log::version(table);
    if version < first || version > latest {
        return Err(LakeError::Invalid {
            table: name.to_string(),
            message: format!("no version {version}: the versions kept are {first} to {latest}"),
        });
    }
    let mut positions: std::collections::BTreeMap<AppId, i64> = Default::default();
    let mut seen: std::collections::BTreeSet<AppId> = Default::default();
    for (at, actions) in &log {
        for action in actions.iter().flatten() {
            if let Action::Txn(txn) = action
                && let Some(app_id) = AppId::parse(&txn.app_id)
                && app_id != AppId::Epoch
            {
                seen.insert(app_id.clone());
                if *at <= version {
                    positions.insert(app_id, txn.version);
                }
            }
        }
    }
    if first > 0 {
        // Positions last moved before the first kept entry: from the snapshot there.
        let mut before = table.clone();
        before
            .load_version(first as u64 - 1)
            .await
            .map_err(|e| LakeError::delta(name, e))?;
        for app_id in seen {
            if !positions.contains_key(&app_id)
                && let Some(v) = log::txn_version(&before, &app_id).await?
            {
                positions.insert(app_id, v);
            }
        }
    }
    Ok(positions.into_iter().collect())
}
