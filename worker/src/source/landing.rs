//! Where a files source's files land: a local directory or a prefix of an S3-compatible
//! bucket, both behind `object_store`, so listing with a cursor and reading whole files
//! work the same on either.
//!
//! Names are relative to the landing path and `/`-separated (`2026/12/06/a.ndjson.gz`).
//! A listing after a cursor asks the store only for names greater than it (S3's
//! `start-after`; on local disk the directory is walked and filtered, which costs no
//! request).

use std::collections::HashMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::{Result, WorkerError};

/// A landing directory or prefix (cheap to clone: the store is shared).
#[derive(Clone)]
pub struct Landing {
    source: String,
    shown: String,
    store: Arc<dyn ObjectStore>,
    prefix: Option<ObjectPath>,
}

impl Landing {
    /// The landing place at `path` (a directory, `file://...` or `s3://bucket/prefix`,
    /// reached with `s3_options`), or `None` while a local directory does not exist yet.
    pub fn open(
        source: &str,
        path: &str,
        s3_options: &HashMap<String, String>,
    ) -> Result<Option<Self>> {
        let error = |message: String| WorkerError::SourceInvalid {
            source_name: source.to_string(),
            message: format!("files path `{path}`: {message}"),
        };
        if path.starts_with("s3://") {
            let url = url::Url::parse(path).map_err(|e| error(e.to_string()))?;
            let store = smelter_lake::storage::s3_store(&url, s3_options)
                .map_err(|e| error(e.to_string()))?;
            let prefix = ObjectPath::from_url_path(url.path()).map_err(|e| error(e.to_string()))?;
            return Ok(Some(Self {
                source: source.to_string(),
                shown: path.to_string(),
                store,
                prefix: (!prefix.as_ref().is_empty()).then_some(prefix),
            }));
        }
        let dir = path.strip_prefix("file://").unwrap_or(path);
        if !std::path::Path::new(dir).is_dir() {
            return Ok(None);
        }
        let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| error(e.to_string()))?;
        Ok(Some(Self {
            source: source.to_string(),
            shown: dir.to_string(),
            store: Arc::new(store),
            prefix: None,
        }))
    }

    fn error(&self, message: String) -> WorkerError {
        WorkerError::Source {
            source_name: self.source.clone(),
            message: format!("{}: {message}", self.shown),
        }
    }

    fn location(&self, name: &str) -> ObjectPath {
        match &self.prefix {
            Some(prefix) => ObjectPath::from(format!("{prefix}/{name}")),
            None => ObjectPath::from(name),
        }
    }

    fn name<'a>(&self, location: &'a ObjectPath) -> Option<&'a str> {
        match &self.prefix {
            Some(prefix) => location
                .as_ref()
                .strip_prefix(prefix.as_ref())?
                .strip_prefix('/'),
            None => Some(location.as_ref()),
        }
    }

    /// The names under the landing path, greater than `after` if given, in name order.
    pub async fn list(&self, after: Option<&str>) -> Result<Vec<String>> {
        let listing = match after {
            Some(after) => self
                .store
                .list_with_offset(self.prefix.as_ref(), &self.location(after)),
            None => self.store.list(self.prefix.as_ref()),
        };
        let objects: Vec<_> = listing
            .try_collect()
            .await
            .map_err(|e| self.error(format!("cannot list: {e}")))?;
        let mut names: Vec<String> = objects
            .iter()
            .filter_map(|o| self.name(&o.location))
            .filter(|n| after.is_none_or(|after| *n > after))
            .map(str::to_string)
            .collect();
        names.sort();
        Ok(names)
    }

    /// The whole file `name`.
    pub async fn read(&self, name: &str) -> Result<Vec<u8>> {
        let got = self
            .store
            .get(&self.location(name))
            .await
            .map_err(|e| self.error(format!("cannot read {name}: {e}")))?;
        let bytes = got
            .bytes()
            .await
            .map_err(|e| self.error(format!("cannot read {name}: {e}")))?;
        Ok(bytes.to_vec())
    }
}
