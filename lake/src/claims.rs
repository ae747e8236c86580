//! Version claims: how a log write is made safe on a store without put-if-absent
//! (`storage.commit_arbitration`), the way Delta's S3 multi-cluster log store uses DynamoDB.
//!
//! On such a store, "is version N taken?" followed by a plain write of N races: a holder of
//! the commit lock whose lease lapses between the two overwrites its successor's N, and
//! both believe they committed. So, under the commit lock, a writer of version N
//!
//! 1. completes every claim still pending for the table — a holder that claimed a version
//!    and then died or paused before writing it: its bytes are written at its version and
//!    the claim removed (the claim holds the bytes, or a staged object for large ones);
//! 2. claims N in the coordination store: one etcd txn creates
//!    `/smelter/commits/<table>/<N>` only if it is absent **and** only while the writer's
//!    commit-lock key is the one it took (its epoch). A writer whose lock lapsed is refused
//!    here, before anything reaches storage; a taken claim means another holder owns N;
//! 3. writes the log object of N (a plain put: the claim made it N's only writer);
//! 4. removes the claim.
//!
//! Every version is therefore written with the bytes of its one claim. A holder paused
//! after step 2 still commits N — its successor completes the claim for it and commits
//! N + 1 — and when it wakes it writes the same bytes again, which changes nothing.
//!
//! Readers need none of this: a version appears when its object is written. A claim
//! whose writer died stays pending until the table's next writer completes it.

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use smelter_common::store::{CoordinationStore, Guard, keys};

use crate::failpoint::Failpoints;
use crate::{LakeError, Result};

/// Commit entries up to this size travel in the claim itself; larger ones are staged as an
/// object beside the log first (an etcd request carries at most about 1.5 MiB).
const INLINE_LIMIT: usize = 256 * 1024;

/// What a claim holds: the entry, or where it was staged.
enum Content {
    Inline(bytes::Bytes),
    Staged(ObjectPath),
}

impl Content {
    fn encode(&self) -> Vec<u8> {
        match self {
            Content::Inline(bytes) => [b"I".as_slice(), bytes].concat(),
            Content::Staged(path) => [b"S".as_slice(), path.as_ref().as_bytes()].concat(),
        }
    }

    fn decode(value: &[u8]) -> Option<Content> {
        match value.split_first()? {
            (b'I', rest) => Some(Content::Inline(bytes::Bytes::copy_from_slice(rest))),
            (b'S', rest) => Some(Content::Staged(ObjectPath::from(
                std::str::from_utf8(rest).ok()?,
            ))),
            _ => None,
        }
    }

    async fn bytes(&self, store: &dyn ObjectStore) -> object_store::Result<bytes::Bytes> {
        match self {
            Content::Inline(bytes) => Ok(bytes.clone()),
            Content::Staged(path) => store.get(path).await?.bytes().await,
        }
    }
}

/// Why a claim was not made.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Another holder claimed this version: this writer's view of the log is stale.
    Taken,
    /// This writer's commit lock is no longer the one it took: its lease lapsed.
    LockLost,
}

/// The claims of one table's log, made under one held commit lock.
pub struct Claims<'a> {
    /// The coordination store holding the claims and the lock.
    pub store: &'a dyn CoordinationStore,
    /// The held commit lock.
    pub guard: &'a Guard,
    /// `layer.name`.
    pub table: &'a str,
    /// The table's object store, rooted at the table.
    pub objects: &'a dyn ObjectStore,
    /// Crash hooks (`commit.after_claim`).
    pub failpoints: &'a Failpoints,
}

impl Claims<'_> {
    /// Completes every pending claim of the table (see the module docs); how many it wrote.
    pub async fn complete_pending(&self) -> Result<usize> {
        let mut completed = 0;
        for kv in self.store.list(&keys::commit_claims(self.table)).await? {
            let Some(version) = keys::leaf(&kv.key).parse::<i64>().ok() else {
                continue;
            };
            let target = log_path(version);
            if self.objects.head(&target).await.is_err() {
                let content = Content::decode(&kv.value).ok_or_else(|| {
                    LakeError::generic(self.table, format!("unreadable claim on version {version}"))
                })?;
                let bytes = content
                    .bytes(self.objects)
                    .await
                    .map_err(|e| self.storage(format!("staged entry of version {version}: {e}")))?;
                self.objects
                    .put(&target, PutPayload::from_bytes(bytes))
                    .await
                    .map_err(|e| self.storage(format!("completing version {version}: {e}")))?;
                tracing::warn!(
                    table = self.table,
                    version,
                    "completed a version another holder claimed but did not write"
                );
                completed += 1;
            }
            self.release(version, &kv.value).await;
        }
        Ok(completed)
    }

    /// Writes `bytes` as version `version` of the log: claim, write, release.
    pub async fn write(&self, version: i64, bytes: bytes::Bytes) -> Result<Option<Refused>> {
        let content = if bytes.len() > INLINE_LIMIT {
            let staged = ObjectPath::from(format!(
                "_delta_log/_smelter_claims/{version:020}.{}.json",
                uuid::Uuid::new_v4()
            ));
            self.objects
                .put(&staged, PutPayload::from_bytes(bytes.clone()))
                .await
                .map_err(|e| self.storage(format!("staging version {version}: {e}")))?;
            Content::Staged(staged)
        } else {
            Content::Inline(bytes.clone())
        };
        let value = content.encode();
        let key = keys::commit_claim(self.table, version);
        match self
            .store
            .create_guarded(self.guard, &key, value.clone())
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(Some(Refused::Taken)),
            Err(smelter_common::Error::GuardLost { .. }) => return Ok(Some(Refused::LockLost)),
            Err(error) => return Err(error.into()),
        }
        self.failpoints.hit("commit.after_claim", || {
            format!("table={} version={version}", self.table)
        });
        self.objects
            .put(&log_path(version), PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| self.storage(format!("writing version {version}: {e}")))?;
        self.release(version, &value).await;
        Ok(None)
    }

    /// Removes a claim whose version is written (and its staged object). A failure only
    /// leaves a claim the next writer finds complete and removes.
    async fn release(&self, version: i64, value: &[u8]) {
        if let Err(error) = self
            .store
            .delete(&keys::commit_claim(self.table, version))
            .await
        {
            tracing::debug!(table = self.table, version, %error, "claim not removed; the next writer will");
            return;
        }
        if let Some(Content::Staged(path)) = Content::decode(value) {
            let _ = self.objects.delete(&path).await;
        }
    }

    fn storage(&self, message: String) -> LakeError {
        LakeError::Storage {
            location: self.table.to_string(),
            message,
        }
    }
}

/// The object of log version `version`, relative to the table root.
fn log_path(version: i64) -> ObjectPath {
    deltalake::logstore::commit_uri_from_version(Some(version.max(0) as u64))
}

#[cfg(test)]
mod tests;
