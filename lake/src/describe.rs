//! A table's catalog entry kept in the table itself: what the spec says of it (owner, tags,
//! description, column descriptions) written into its Delta metadata, so that it travels
//! with the table and any Delta reader (Spark, the `deltalake` package, Unity) sees it:
//!
//! * the description in `metaData.description`;
//! * the owner as table property [`OWNER_PROPERTY`], the tags as [`TAGS_PROPERTY`]
//!   (comma-separated, in the spec's order), the columns that identify a row (a gold
//!   table's `keys`) as [`KEY_PROPERTY`] (comma-separated, in order: what Flight SQL's
//!   GetPrimaryKeys answers), and a gold table's SQL as [`SQL_PROPERTY`] (what column
//!   lineage is read from);
//! * the history retention (`retention.history`) as Delta's own [`HISTORY_PROPERTY`], so
//!   that maintenance's log cleanup keeps that much history (time travel refuses to go
//!   further: `crate::history::oldest_available`);
//! * how long checkpoints keep the tombstones of removed files, as Delta's own
//!   [`TOMBSTONES_PROPERTY`]: twice the maintenance's vacuum delay where maintenance
//!   runs (see [`tombstones_for`]). Delta's default is a week: with compaction every
//!   few seconds, every checkpoint would carry a week of the small files it replaced, and
//!   opening the table would grow slower with every pass;
//! * each column's description as property `smelter.column.<column>.comment`. Not as the
//!   field's `comment` metadata, Spark's place for it: that would change the Arrow schema
//!   the writers' batches are checked against, and every writer's batch would be refused.
//!
//! [`describe`] commits a metadata-only version (operation `SET TBLPROPERTIES`,
//! `dataChange = false`) through the rewrite path — under the commit lock, arbitrated
//! stores included — and only when something differs: on a table that already says it,
//! it writes nothing. Properties it did not set (Delta's own `delta.*`, a user's) stay as
//! they are. Writers whose snapshot predates the change bring it forward before their next
//! commit (see [`crate::commit`]).

use std::collections::{BTreeMap, HashMap};

use deltalake::DeltaTable;
use deltalake::kernel::{Metadata, MetadataExt as _};
use deltalake::protocol::DeltaOperation;

use crate::commit::{CommitEnv, Rewrite, RewriteOutcome, rewrite};
use crate::log::refresh;
use crate::{LakeError, Result};

/// The table property holding the table's owner.
pub const OWNER_PROPERTY: &str = "smelter.owner";
/// The table property holding the table's tags, comma-separated.
pub const TAGS_PROPERTY: &str = "smelter.tags";
/// The table property holding the columns that identify a row, comma-separated.
pub const KEY_PROPERTY: &str = "smelter.primaryKey";
/// The table property holding the SQL that defines a gold table.
pub const SQL_PROPERTY: &str = "smelter.sql";
/// Prefix of the properties Smelter's catalog owns (set, changed and removed by
/// [`describe`]).
const CATALOG_PREFIX: &str = "smelter.";

/// The property holding the description of `column`.
pub fn column_property(column: &str) -> String {
    format!("smelter.column.{column}.comment")
}

/// What the catalog says of a table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Description {
    /// Who owns it.
    pub owner: Option<String>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// What it holds.
    pub description: Option<String>,
    /// What each column holds, by column name.
    pub columns: BTreeMap<String, String>,
    /// The columns that identify a row, in order.
    pub keys: Vec<String>,
    /// The SQL that defines the table (gold), for column lineage.
    pub sql: Option<String>,
    /// How far back the table's history is kept: time travel reaches no further, and log
    /// entries older than this are cleaned up by maintenance (Delta's
    /// [`HISTORY_PROPERTY`]).
    pub history: Option<std::time::Duration>,
    /// How long checkpoints keep the `remove` tombstones of files rewrites took out
    /// (Delta's [`TOMBSTONES_PROPERTY`]; see [`tombstones_for`]).
    pub tombstones: Option<std::time::Duration>,
    /// Whether the table records Delta's change data feed. Set when the table is created
    /// only ([`Self::created_properties`]): turning it on later needs a protocol upgrade,
    /// which a description does not make.
    pub change_data_feed: bool,
}

/// Delta's table property turning on the change data feed.
pub const CHANGE_DATA_FEED_PROPERTY: &str = "delta.enableChangeDataFeed";

/// Delta's table property bounding how long log entries are kept.
pub const HISTORY_PROPERTY: &str = "delta.logRetentionDuration";

/// Delta's table property bounding how long checkpoints keep the tombstones of removed
/// files (and the default retention of other engines' VACUUM).
pub const TOMBSTONES_PROPERTY: &str = "delta.deletedFileRetentionDuration";

/// How long tombstones are kept on a table whose files rewrites took out are vacuumed
/// `vacuum_after` after: twice that. The vacuum finds the files it deletes by their
/// tombstones (`crate::vacuum`), so a tombstone must outlive its file's vacuum delay by
/// at least one maintenance pass; the second delay is that margin, generous for a pass
/// that comes late. A file whose tombstone expired before any vacuum saw it stays in
/// storage unreferenced — never deleted early, only not reclaimed.
pub fn tombstones_for(vacuum_after: std::time::Duration) -> std::time::Duration {
    vacuum_after.saturating_mul(2)
}

/// `duration` as a Delta interval (`interval 2592000 seconds`).
pub fn interval(duration: std::time::Duration) -> String {
    format!("interval {} seconds", duration.as_secs().max(1))
}

/// The duration of a Delta interval written by [`interval`] (or by hand, in any unit
/// delta-rs reads).
pub fn parse_interval(text: &str) -> Option<std::time::Duration> {
    let mut words = text.split_whitespace();
    if words.next()? != "interval" {
        return None;
    }
    let n: u64 = words.next()?.parse().ok()?;
    let seconds = match words.next()?.trim_end_matches('s') {
        "second" => 1,
        "minute" => 60,
        "hour" => 3_600,
        "day" => 86_400,
        "week" => 7 * 86_400,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(n * seconds))
}

impl Description {
    /// The table properties this description sets.
    pub fn properties(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(owner) = &self.owner {
            out.insert(OWNER_PROPERTY.to_string(), owner.clone());
        }
        if !self.tags.is_empty() {
            out.insert(TAGS_PROPERTY.to_string(), self.tags.join(","));
        }
        if !self.keys.is_empty() {
            out.insert(KEY_PROPERTY.to_string(), self.keys.join(","));
        }
        for (column, comment) in &self.columns {
            out.insert(column_property(column), comment.clone());
        }
        if let Some(sql) = &self.sql {
            out.insert(SQL_PROPERTY.to_string(), sql.clone());
        }
        if let Some(history) = self.history {
            out.insert(HISTORY_PROPERTY.to_string(), interval(history));
        }
        if let Some(tombstones) = self.tombstones {
            out.insert(TOMBSTONES_PROPERTY.to_string(), interval(tombstones));
        }
        out
    }

    /// The properties a table with this description is created with: [`Self::properties`]
    /// and the change data feed.
    pub fn created_properties(&self) -> BTreeMap<String, String> {
        let mut out = self.properties();
        if self.change_data_feed {
            out.insert(CHANGE_DATA_FEED_PROPERTY.to_string(), "true".to_string());
        }
        out
    }

    /// What `metadata` says, read back.
    pub fn of(metadata: &Metadata) -> Self {
        Self::from_properties(
            metadata.description().map(str::to_string),
            metadata.configuration(),
        )
    }

    /// What a table with this description and these properties says.
    pub fn from_properties<'a>(
        description: Option<String>,
        properties: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Self {
        let mut out = Self {
            description,
            ..Self::default()
        };
        for (key, value) in properties {
            if key == OWNER_PROPERTY {
                out.owner = Some(value.clone());
            } else if key == TAGS_PROPERTY {
                out.tags = value.split(',').map(str::to_string).collect();
            } else if key == KEY_PROPERTY {
                out.keys = value.split(',').map(str::to_string).collect();
            } else if key == SQL_PROPERTY {
                out.sql = Some(value.clone());
            } else if key == HISTORY_PROPERTY {
                out.history = parse_interval(value);
            } else if key == TOMBSTONES_PROPERTY {
                out.tombstones = parse_interval(value);
            } else if key == CHANGE_DATA_FEED_PROPERTY {
                out.change_data_feed = value.eq_ignore_ascii_case("true");
            } else if let Some(column) = key
                .strip_prefix("smelter.column.")
                .and_then(|k| k.strip_suffix(".comment"))
            {
                out.columns.insert(column.to_string(), value.clone());
            }
        }
        out
    }
}

/// How often a description is derived again when another metadata change lands under it.
const PLANS: usize = 3;

/// Writes `description` into the table's metadata if it says something else (see the
/// module docs): the version written, or `None` when the table already said it.
pub async fn describe(
    table: &mut DeltaTable,
    name: &str,
    description: &Description,
    env: &CommitEnv,
) -> Result<Option<i64>> {
    for _ in 0..PLANS {
        refresh(table, name).await?;
        let current = table
            .snapshot()
            .map_err(|e| LakeError::delta(name, e))?
            .metadata()
            .clone();
        let Some((metadata, changed)) = described(&current, description)
            .map_err(|e| LakeError::generic(name, format!("table metadata: {e}")))?
        else {
            return Ok(None);
        };
        let outcome = rewrite(
            table,
            name,
            Rewrite {
                removes: Vec::new(),
                groups: Vec::new(),
                copied: Vec::new(),
                readds: Vec::new(),
                changes: Vec::new(),
                operation: DeltaOperation::SetTableProperties {
                    properties: changed,
                },
                data_change: false,
                txns: Vec::new(),
                metadata: Default::default(),
                table_metadata: Some(metadata),
            },
            env,
        )
        .await?;
        match outcome {
            RewriteOutcome::Committed { version, .. } => {
                tracing::info!(table = name, version, "catalog description written");
                return Ok(Some(version));
            }
            RewriteOutcome::Superseded { .. } => {
                tracing::debug!(table = name, "metadata changed meanwhile; describing again");
            }
            RewriteOutcome::AlreadyCommitted => unreachable!("a description moves no txn"),
        }
    }
    Err(LakeError::CommitConflict {
        table: name.to_string(),
        message: format!("the table's metadata changed under {PLANS} descriptions in a row"),
    })
}

/// `current` saying `description`, with the properties that changed (a removed one as an
/// empty value), or `None` if it says it already.
fn described(
    current: &Metadata,
    description: &Description,
) -> deltalake::DeltaResult<Option<(Metadata, HashMap<String, String>)>> {
    let wanted = description.properties();
    let config = current.configuration();
    let mut changed = HashMap::new();
    let mut metadata = current.clone();
    for (key, _) in config
        .iter()
        .filter(|(k, _)| k.starts_with(CATALOG_PREFIX) && !wanted.contains_key(*k))
    {
        changed.insert(key.clone(), String::new());
        metadata = metadata.remove_config_key(key)?;
    }
    for (key, value) in &wanted {
        if config.get(key) != Some(value) {
            changed.insert(key.clone(), value.clone());
            metadata = metadata.add_config_key(key.clone(), value.clone())?;
        }
    }
    let text = description.description.clone().unwrap_or_default();
    if current.description().unwrap_or_default() != text {
        changed.insert("description".into(), text.clone());
        metadata = metadata.with_description(text)?;
    }
    Ok((!changed.is_empty()).then_some((metadata, changed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::kernel::{DataType, StructField, StructType};

    fn metadata(config: &[(&str, &str)]) -> Metadata {
        let schema = StructType::try_new([StructField::new("id", DataType::LONG, true)]).unwrap();
        deltalake::kernel::new_metadata(&schema, Vec::<String>::new(), config.iter().copied())
            .unwrap()
    }

    #[test]
    fn a_description_round_trips_and_changes_only_what_differs() {
        let wanted = Description {
            owner: Some("growth-analytics".into()),
            tags: vec!["pii".into(), "clickstream".into()],
            description: Some("Parsed events".into()),
            columns: BTreeMap::from([("id".into(), "The event's id".into())]),
            keys: vec!["id".into()],
            sql: Some("SELECT id FROM silver.t".into()),
            history: Some(std::time::Duration::from_secs(30 * 86_400)),
            tombstones: Some(tombstones_for(std::time::Duration::from_secs(30))),
            change_data_feed: false,
        };
        let current = metadata(&[
            ("delta.checkpointInterval", "10"),
            ("smelter.owner", "someone-else"),
            (
                "smelter.column.gone.comment",
                "a column no longer described",
            ),
        ]);
        let (updated, changed) = described(&current, &wanted).unwrap().unwrap();
        assert_eq!(Description::of(&updated), wanted);
        // Delta's own properties stay; the catalog's are set, changed or removed.
        assert_eq!(
            updated.configuration().get("delta.checkpointInterval"),
            Some(&"10".to_string())
        );
        assert_eq!(changed["smelter.owner"], "growth-analytics");
        assert_eq!(changed["smelter.column.gone.comment"], "");
        assert_eq!(changed["description"], "Parsed events");
        assert_eq!(
            changed[TOMBSTONES_PROPERTY], "interval 60 seconds",
            "tombstones outlive the vacuum delay twice over"
        );
        assert_eq!(updated.id(), current.id(), "the table keeps its id");
        assert!(
            described(&updated, &wanted).unwrap().is_none(),
            "a table that says it already is left alone"
        );
    }
}
