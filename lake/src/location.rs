//! Where tables live and how they are opened and created: [`TableStore`] maps `layer.name`
//! table names to storage locations under one root, a local directory or an S3-compatible
//! bucket (`s3://bucket/prefix`, see [`crate::storage`]), and says how that store makes a
//! log write atomic ([`LogKind`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder};
use futures::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use url::Url;

use crate::commit::CommitEnv;
use crate::describe::Description;
use crate::lock::LOCK_WAIT;
use crate::{LakeError, Result};

/// How a store makes a Delta log write atomic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogKind {
    /// The store refuses a second create of one key (local disk, S3 with conditional
    /// writes): a log entry is written with put-if-absent.
    #[default]
    PutIfAbsent,
    /// The store lacks put-if-absent; every log write happens under the etcd commit lock,
    /// through a claim on its version (`storage.commit_arbitration`, see [`crate::claims`]).
    Arbitrated,
}

/// Maps `layer.name` table names to storage locations under one root.
#[derive(Debug, Clone)]
pub struct TableStore {
    root: PathBuf,
    remote: Option<Remote>,
}

#[derive(Clone)]
struct Remote {
    base: Url,
    options: HashMap<String, String>,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("base", &self.base.as_str())
            .finish()
    }
}

impl TableStore {
    /// Tables live under `root`: a local directory (created if missing) or `s3://bucket/prefix`
    /// (store settings from the `AWS_*` environment).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        Self::with_options(root, HashMap::new())
    }

    /// Tables under the configured `storage.root`, with its S3 settings.
    pub fn from_config(config: &smelter_common::config::StorageConfig) -> Result<Self> {
        Self::with_options(config.root.clone(), config.s3_options())
    }

    fn with_options(root: impl Into<PathBuf>, options: HashMap<String, String>) -> Result<Self> {
        let root = root.into();
        if let Some(text) = root.to_str().filter(|t| t.starts_with("s3://")) {
            crate::storage::register_s3();
            let location = format!("{}/", text.trim_end_matches('/'));
            let unusable = |message: String| LakeError::Unsupported {
                location: location.clone(),
                message,
            };
            let base = Url::parse(&location).map_err(|e| unusable(e.to_string()))?;
            let store = crate::storage::s3_store(&base, &options)?;
            let prefix =
                ObjectPath::from_url_path(base.path()).map_err(|e| unusable(e.to_string()))?;
            return Ok(Self {
                root,
                remote: Some(Remote {
                    base,
                    options,
                    store,
                    prefix,
                }),
            });
        }
        std::fs::create_dir_all(&root).map_err(|source| LakeError::Io {
            context: format!("create {}", root.display()),
            source,
        })?;
        let root = root.canonicalize().map_err(|source| LakeError::Io {
            context: format!("resolve {}", root.display()),
            source,
        })?;
        Ok(Self { root, remote: None })
    }

    /// How this store's log writes are made atomic.
    pub fn log_kind(&self) -> LogKind {
        let arbitrated = self.remote.as_ref().is_some_and(|r| {
            r.options
                .get(crate::storage::ARBITRATED_OPTION)
                .is_some_and(|v| v == "true")
        });
        if arbitrated {
            LogKind::Arbitrated
        } else {
            LogKind::PutIfAbsent
        }
    }

    /// Whether log writes are arbitrated by the commit locks (`storage.commit_arbitration`).
    pub fn arbitrated(&self) -> bool {
        self.log_kind() == LogKind::Arbitrated
    }

    /// A store that cannot put-if-absent could let two writers both "create" one log
    /// version (docs/exactly-once.md). Such a store is refused, unless commits are
    /// arbitrated by the etcd commit locks (`storage.commit_arbitration`) and this process
    /// has them (`has_locks`). Local directories always can put-if-absent.
    pub async fn check_commit_safety(&self, has_locks: bool) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let refuse = |message: &str| LakeError::Unsupported {
            location: remote.base.to_string(),
            message: message.to_string(),
        };
        if self.arbitrated() {
            return if has_locks {
                tracing::warn!(location = %remote.base, "commits arbitrated by the etcd commit locks, not by the store");
                Ok(())
            } else {
                Err(refuse(
                    "storage.commit_arbitration needs a shared coordination store (etcd) for \
                     its commit locks, and this process has none",
                ))
            };
        }
        if crate::storage::probe(remote.store.as_ref(), &remote.prefix).await? {
            Ok(())
        } else {
            Err(refuse(
                "the store does not refuse a second create of one key (no put-if-absent / \
                 conditional write), so Delta commits could overwrite each other; Smelter \
                 will not run on it unless storage.commit_arbitration = true (etcd commit locks)",
            ))
        }
    }

    /// Whether tables live in a local directory (not an object store).
    pub fn is_local(&self) -> bool {
        self.remote.is_none()
    }

    /// The root as configured (a directory, or the `s3://` location).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of a local table: `silver.events` -> `<root>/silver/events`.
    pub fn path(&self, table: &str) -> PathBuf {
        let (layer, name) = split(table);
        self.root.join(layer).join(name)
    }

    /// URL of a table's location.
    pub fn url(&self, table: &str) -> Result<Url> {
        if let Some(remote) = &self.remote {
            let (layer, name) = split(table);
            return remote.base.join(&format!("{layer}/{name}/")).map_err(|e| {
                LakeError::Unsupported {
                    location: remote.base.to_string(),
                    message: format!("table {table}: {e}"),
                }
            });
        }
        let path = self.path(table);
        std::fs::create_dir_all(&path).map_err(|source| LakeError::Io {
            context: format!("create {}", path.display()),
            source,
        })?;
        Url::from_directory_path(&path).map_err(|()| LakeError::Io {
            context: format!("table path {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not absolute"),
        })
    }

    /// The settings tables are opened with (S3 endpoint, region, credentials); empty
    /// for a local root. A files source on `s3://` reaches its bucket with them.
    pub fn storage_options(&self) -> HashMap<String, String> {
        self.remote
            .as_ref()
            .map(|r| r.options.clone())
            .unwrap_or_default()
    }

    /// Whether the table has a Delta log yet: a commit, not just its `_delta_log` directory
    /// (which a creator makes before it writes version 0: a table opened in between is
    /// "not a Delta table").
    pub async fn exists(&self, table: &str) -> bool {
        let Some(remote) = &self.remote else {
            // Version 0 until a log cleanup deletes it, below a checkpoint that
            // `_last_checkpoint` names from then on.
            let log = self.path(table).join("_delta_log");
            return log.join(format!("{:020}.json", 0)).is_file()
                || log.join("_last_checkpoint").is_file();
        };
        let (layer, name) = split(table);
        let log = remote
            .prefix
            .clone()
            .join(layer)
            .join(name)
            .join("_delta_log");
        // A commit file, not just anything (an in-flight commit's temporary file).
        let mut entries = remote.store.list(Some(&log));
        while let Some(Ok(entry)) = entries.next().await {
            if entry.location.filename().is_some_and(|f| {
                !f.starts_with('_') && (f.ends_with(".json") || f.ends_with(".parquet"))
            }) {
                return true;
            }
        }
        false
    }

    /// Opens the latest version of an existing table.
    pub async fn open(&self, table: &str) -> Result<DeltaTable> {
        let url = self.url(table)?;
        let builder = DeltaTableBuilder::from_url(url)
            .map_err(|e| LakeError::delta(table, e))?
            .with_storage_options(self.storage_options());
        builder.load().await.map_err(|e| LakeError::delta(table, e))
    }

    /// Opens one version of an existing table.
    pub async fn open_version(&self, table: &str, version: i64) -> Result<DeltaTable> {
        let url = self.url(table)?;
        let builder = DeltaTableBuilder::from_url(url)
            .map_err(|e| LakeError::delta(table, e))?
            .with_storage_options(self.storage_options());
        builder
            .with_version(version.max(0) as u64)
            .load()
            .await
            .map_err(|e| LakeError::delta(table, e))
    }

    /// Opens the table, creating it empty with `schema` if it does not exist. Concurrent
    /// creators race on version 0; the loser simply opens what the winner made.
    pub async fn open_or_create(
        &self,
        table: &str,
        schema: &SchemaRef,
        partition_by: &[String],
        commits: &CommitEnv,
    ) -> Result<DeltaTable> {
        let described = Description::default();
        self.open_or_create_described(table, schema, partition_by, &described, commits)
            .await
    }

    /// [`Self::open_or_create`], a new table born with the catalog description
    /// `described` in its metadata (see [`crate::describe`]); an existing table is opened
    /// as it is.
    pub async fn open_or_create_described(
        &self,
        table: &str,
        schema: &SchemaRef,
        partition_by: &[String],
        described: &Description,
        commits: &CommitEnv,
    ) -> Result<DeltaTable> {
        if self.exists(table).await {
            return self.open(table).await;
        }
        let created = New {
            schema,
            partition_by,
            described,
        };
        match (&commits.arbiter, self.log_kind()) {
            (_, LogKind::PutIfAbsent) => self.create(table, created).await,
            // On an arbitrated store, version 0 is a log write like any other: under the
            // lock, through a claim.
            (Some(arbiter), LogKind::Arbitrated) => {
                let lock = arbiter.acquire(table, LOCK_WAIT).await?;
                let created = self
                    .create_claimed(table, created, arbiter, &lock, commits)
                    .await;
                arbiter.release(lock).await;
                created
            }
            (None, LogKind::Arbitrated) => Err(LakeError::Unsupported {
                location: table.to_string(),
                message: "an arbitrated store needs the commit locks to create a table".into(),
            }),
        }
    }

    /// Creates `table` on an arbitrated store: version 0 written through a claim.
    async fn create_claimed(
        &self,
        table: &str,
        created: New<'_>,
        arbiter: &crate::lock::CommitArbiter,
        lock: &crate::lock::HeldLock,
        commits: &CommitEnv,
    ) -> Result<DeltaTable> {
        use deltalake::kernel::transaction::CommitData;
        use deltalake::kernel::{Action, MetadataExt as _, Protocol, new_metadata};
        use deltalake::protocol::DeltaOperation;

        let url = self.url(table)?;
        let handle = DeltaTableBuilder::from_url(url.clone())
            .map_err(|e| LakeError::delta(table, e))?
            .with_storage_options(self.storage_options())
            .build()
            .map_err(|e| LakeError::delta(table, e))?;
        let objects = handle.log_store().object_store(None);
        let claims = crate::claims::Claims {
            store: arbiter.store(),
            guard: lock.guard(),
            table,
            objects: objects.as_ref(),
            failpoints: &commits.failpoints,
        };
        claims.complete_pending().await?;
        if self.exists(table).await {
            return self.open(table).await;
        }
        let delta = |e: deltalake::DeltaTableError| LakeError::delta(table, e);
        let delta_schema = StructType::try_from_arrow(created.schema.as_ref()).map_err(|e| {
            LakeError::generic(table, format!("schema not representable in Delta: {e}"))
        })?;
        let mut metadata = new_metadata(
            &delta_schema,
            created.partition_by.iter(),
            created.described.created_properties(),
        )
        .and_then(|m| m.with_name(table.to_string()));
        if let Some(text) = &created.described.description {
            metadata = metadata.and_then(|m| m.with_description(text.clone()));
        }
        let metadata =
            metadata.map_err(|e| LakeError::generic(table, format!("table metadata: {e}")))?;
        // Writer version 4 is the change data feed's (without table features).
        let writer = if created.described.change_data_feed {
            4
        } else {
            2
        };
        let protocol: Protocol = serde_json::from_value(serde_json::json!({
            "minReaderVersion": 1,
            "minWriterVersion": writer
        }))
        .map_err(|e| LakeError::generic(table, format!("protocol: {e}")))?;
        let operation = DeltaOperation::Create {
            mode: SaveMode::ErrorIfExists,
            location: url.clone(),
            protocol: protocol.clone(),
            metadata: metadata.clone(),
        };
        let data = CommitData::new(
            vec![Action::Protocol(protocol), Action::Metadata(metadata)],
            operation,
            HashMap::new(),
            vec![],
        );
        let bytes = data.get_bytes().map_err(|e| delta(e.into()))?;
        match claims.write(0, bytes).await? {
            None | Some(crate::claims::Refused::Taken) => self.open(table).await,
            Some(crate::claims::Refused::LockLost) => Err(LakeError::CommitConflict {
                table: table.to_string(),
                message: "the commit lock lapsed before the table's first version was claimed"
                    .into(),
            }),
        }
    }

    async fn create(&self, table: &str, new: New<'_>) -> Result<DeltaTable> {
        if self.exists(table).await {
            return self.open(table).await;
        }
        let delta_schema = StructType::try_from_arrow(new.schema.as_ref()).map_err(|e| {
            LakeError::generic(table, format!("schema not representable in Delta: {e}"))
        })?;
        let mut builder = deltalake::operations::create::CreateBuilder::new()
            .with_location(self.url(table)?.to_string())
            .with_storage_options(self.storage_options())
            .with_table_name(table)
            .with_columns(delta_schema.fields().cloned())
            .with_partition_columns(new.partition_by.to_vec())
            .with_configuration(
                new.described
                    .created_properties()
                    .into_iter()
                    .map(|(k, v)| (k, Some(v))),
            )
            // The catalog's `smelter.*` properties are not Delta's: kept, not parsed.
            .with_raise_if_key_not_exists(false)
            .with_save_mode(SaveMode::Ignore);
        if let Some(text) = &new.described.description {
            builder = builder.with_comment(text.clone());
        }
        let created = builder.await;
        match created {
            Ok(t) => Ok(t),
            // Another creator won the race: open what it made. Nothing there: the
            // failure was this creator's own, and it is the error to report.
            Err(e) if self.exists(table).await => {
                tracing::debug!(table, error = %e, "create lost a race; opening");
                self.open(table).await
            }
            Err(e) => Err(LakeError::delta(table, e)),
        }
    }

    /// Every table under the root (`<layer>/<name>` with a `_delta_log`), as sorted
    /// `layer.name` names.
    pub async fn list(&self) -> Vec<String> {
        let mut names = Vec::new();
        for layer in ["bronze", "silver", "gold"] {
            let candidates: Vec<String> = match &self.remote {
                None => std::fs::read_dir(self.root.join(layer))
                    .map(|entries| {
                        entries
                            .flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
                Some(remote) => remote
                    .store
                    .list_with_delimiter(Some(&remote.prefix.clone().join(layer)))
                    .await
                    .map(|listing| {
                        listing
                            .common_prefixes
                            .iter()
                            .filter_map(|p| p.filename().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            for name in candidates {
                let table = format!("{layer}.{name}");
                if self.exists(&table).await {
                    names.push(table);
                }
            }
        }
        names.sort();
        names
    }
}

/// What a new table is made with.
#[derive(Clone, Copy)]
struct New<'a> {
    schema: &'a SchemaRef,
    partition_by: &'a [String],
    described: &'a Description,
}

fn split(table: &str) -> (&str, &str) {
    table.split_once('.').unwrap_or(("default", table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_table_exists_once_its_first_commit_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = TableStore::new(dir.path()).unwrap();
        let log = store.path("bronze.t").join("_delta_log");
        assert!(!store.exists("bronze.t").await);
        // A creator between making the directory and writing version 0 (its commit still
        // a temporary file).
        std::fs::create_dir_all(&log).unwrap();
        std::fs::write(log.join("_commit_5d1e.json.tmp"), b"{}").unwrap();
        assert!(!store.exists("bronze.t").await);
        std::fs::write(log.join("00000000000000000000.json"), b"{}").unwrap();
        assert!(store.exists("bronze.t").await);
        // Its early entries cleaned up below a checkpoint.
        std::fs::remove_file(log.join("00000000000000000000.json")).unwrap();
        std::fs::write(log.join("_last_checkpoint"), b"{}").unwrap();
        assert!(store.exists("bronze.t").await);
    }
}
