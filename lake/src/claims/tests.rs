//! A holder of the commit lock paused between starting its log write and finishing it,
//! on a store without put-if-absent: the race that check-then-write loses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use deltalake::DeltaTable;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use smelter_common::store::{CoordinationStore, MemoryStore, keys};
use tokio::sync::Notify;

use crate::arbitrated::ArbitratedLogStore;
use crate::lock::CommitArbiter;
use crate::testing::TestTable;
use crate::{AppId, CommitEnv, CommitOutcome, LogKind, TxnUpdate, WriteMode, commit, log};

/// An object store whose first put of one path waits until the test opens the gate: the
/// writer is "paused" mid-write, as SIGSTOP would pause it.
#[derive(Debug)]
struct Gate {
    inner: Arc<dyn ObjectStore>,
    path: Path,
    armed: AtomicBool,
    reached: Notify,
    open: Notify,
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gate({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Gate {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if *location == self.path && self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.open.notified().await;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A handle on the table at `dir` whose log store is the arbitrated one (no put-if-absent),
/// over `objects`.
async fn arbitrated(dir: &std::path::Path, objects: Arc<dyn ObjectStore>) -> DeltaTable {
    let location = url::Url::from_directory_path(dir).unwrap();
    let inner = deltalake::logstore::default_logstore(
        objects,
        Arc::new(LocalFileSystem::new()),
        &location,
        &Default::default(),
    );
    let mut table = DeltaTable::new(Arc::new(ArbitratedLogStore::new(inner)));
    table.load().await.unwrap();
    table
}

fn env(store: &Arc<dyn CoordinationStore>, who: &str) -> CommitEnv {
    CommitEnv {
        arbiter: Some(CommitArbiter::new(
            store.clone(),
            Duration::from_secs(5),
            who.into(),
        )),
        log: LogKind::Arbitrated,
        ..Default::default()
    }
}

async fn put(
    table: &mut DeltaTable,
    batch: RecordBatch,
    app: &AppId,
    env: &CommitEnv,
) -> CommitOutcome {
    commit(
        table,
        "silver.t",
        vec![batch],
        WriteMode::Append,
        &[],
        vec![TxnUpdate::new(app, None, 0)],
        env,
    )
    .await
    .unwrap()
}

/// Writer A holds the lock, starts writing version 1 and is paused past its lease; B takes
/// the lock and commits; A wakes and finishes. Each commit must land once, at its own
/// version: two appends, two versions, two rows. With check-then-write, A's paused put
/// overwrote B's version 1 — both answered "committed at 1" and B's row was lost.
#[tokio::test]
async fn a_holder_paused_mid_write_cannot_overwrite_its_successor() {
    let store: Arc<dyn CoordinationStore> = Arc::new(MemoryStore::new());
    let (env_a, env_b) = (env(&store, "a"), env(&store, "b"));
    let t = TestTable::create("silver.t", &CommitEnv::default()).await;
    let dir = t.store.path("silver.t");
    let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&dir).unwrap());
    let gate = Arc::new(Gate {
        inner: local.clone(),
        path: Path::from("_delta_log/00000000000000000001.json"),
        armed: AtomicBool::new(true),
        reached: Notify::new(),
        open: Notify::new(),
    });
    let mut a = arbitrated(&dir, gate.clone()).await;
    let mut b = arbitrated(&dir, local).await;
    let (app_a, app_b) = (AppId::source("p", "a", 0), AppId::source("p", "b", 0));

    let writer_a = {
        let batch = t.batch(1);
        let app_a = app_a.clone();
        tokio::spawn(async move {
            let outcome = put(&mut a, batch, &app_a, &env_a).await;
            (outcome, env_a)
        })
    };
    gate.reached.notified().await;
    // A is paused mid-write; its lease lapses (the lock key goes with it).
    let held = store
        .get(&keys::commit_lock("silver.t"))
        .await
        .unwrap()
        .expect("A holds the lock");
    store.revoke_lease(held.lease.unwrap()).await.unwrap();
    let outcome_b = put(&mut b, t.batch(2), &app_b, &env_b).await;
    gate.open.notify_one();
    let (outcome_a, _env_a) = writer_a.await.unwrap();

    let CommitOutcome::Committed { version: va } = outcome_a else {
        panic!("A: {outcome_a:?}")
    };
    let CommitOutcome::Committed { version: vb } = outcome_b else {
        panic!("B: {outcome_b:?}")
    };
    assert_ne!(va, vb, "A and B both claim to have committed version {va}");
    let mut reader = t.store.open("silver.t").await.unwrap();
    log::refresh(&mut reader, "silver.t").await.unwrap();
    assert_eq!(log::version(&reader), 2);
    assert_eq!(log::row_count(&reader), 2, "one row from each writer");
    assert_eq!(log::txn_version(&reader, &app_a).await.unwrap(), Some(0));
    assert_eq!(log::txn_version(&reader, &app_b).await.unwrap(), Some(0));
    // Nothing left pending.
    assert!(
        store
            .list(&keys::commit_claims("silver.t"))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A writer whose lock lapsed before it claimed its version writes nothing at all.
#[tokio::test]
async fn a_lapsed_holder_claims_nothing() {
    let store: Arc<dyn CoordinationStore> = Arc::new(MemoryStore::new());
    let t = TestTable::create("silver.t", &CommitEnv::default()).await;
    let dir = t.store.path("silver.t");
    let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&dir).unwrap());
    let arbiter = CommitArbiter::new(store.clone(), Duration::from_secs(5), "a".into());
    let lock = arbiter
        .acquire("silver.t", crate::lock::LOCK_WAIT)
        .await
        .unwrap();
    store
        .revoke_lease(
            store
                .get(&keys::commit_lock("silver.t"))
                .await
                .unwrap()
                .unwrap()
                .lease
                .unwrap(),
        )
        .await
        .unwrap();
    let claims = super::Claims {
        store: store.as_ref(),
        guard: lock.guard(),
        table: "silver.t",
        objects: local.as_ref(),
        failpoints: &Default::default(),
    };
    let refused = claims
        .write(1, bytes::Bytes::from_static(b"{}\n"))
        .await
        .unwrap();
    assert_eq!(refused, Some(super::Refused::LockLost));
    assert!(
        local
            .head(&Path::from("_delta_log/00000000000000000001.json"))
            .await
            .is_err(),
        "nothing reached storage"
    );
}

/// Rewrites on a store without put-if-absent: a compaction and a delete, each under the
/// commit lock with an epoch, land among appends through claims like any commit; a delete
/// planned before a compaction took its files is superseded and plans again. Before, a
/// compaction wrote through delta-rs outside the lock and arbitrated stores refused it.
#[tokio::test]
async fn compaction_and_delete_land_on_an_arbitrated_store_under_the_lock() {
    use crate::commit::{Rewrite, RewriteOutcome, rewrite};
    use crate::compact::{CompactOptions, compact};
    use crate::delete::{SqlPredicate, delete};

    let store: Arc<dyn CoordinationStore> = Arc::new(MemoryStore::new());
    let (writer, maintainer) = (env(&store, "writer"), env(&store, "maintainer"));
    let t = TestTable::create("silver.t", &CommitEnv::default()).await;
    let dir = t.store.path("silver.t");
    let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&dir).unwrap());
    let mut w = arbitrated(&dir, local.clone()).await;
    let mut m = arbitrated(&dir, local.clone()).await;
    let app = AppId::source("p", "t", 0);
    for n in 0..6 {
        let previous = (n > 0).then_some(n - 1);
        let outcome = commit(
            &mut w,
            "silver.t",
            vec![t.batch(n)],
            WriteMode::Append,
            &[],
            vec![TxnUpdate::new(&app, previous, n)],
            &writer,
        )
        .await
        .unwrap();
        assert!(matches!(outcome, CommitOutcome::Committed { .. }));
    }
    let options = CompactOptions {
        target_file_bytes: 1 << 20,
        min_small_files: 2,
        zorder_by: Vec::new(),
        tiered: false,
        copy_row_groups: None,
    };
    let compaction = compact(&mut m, "silver.t", options, &maintainer)
        .await
        .unwrap();
    assert_eq!(compaction.files_removed, 6);
    assert_eq!(compaction.files_added, 1);
    assert_eq!(compaction.version, Some(7));

    // A rewrite planned against the six small files, committed after the compaction took
    // them: nothing is written.
    let small_file = first_file_of_version(&m, 1).await;
    let stale = rewrite(
        &mut m,
        "silver.t",
        Rewrite {
            removes: vec![small_file],
            groups: Vec::new(),
            copied: Vec::new(),
            readds: Vec::new(),
            changes: Vec::new(),
            operation: deltalake::protocol::DeltaOperation::Delete { predicate: None },
            data_change: true,
            txns: Vec::new(),
            metadata: Default::default(),
            table_metadata: None,
        },
        &maintainer,
    )
    .await
    .unwrap();
    assert!(
        matches!(stale, RewriteOutcome::Superseded { .. }),
        "{stale:?}"
    );

    // An append after the compaction, then a delete of two rows (one in the compacted
    // file, one in the new one), then another append: the txn chain goes on.
    async fn append(
        w: &mut DeltaTable,
        batch: RecordBatch,
        app: &AppId,
        n: i64,
        env: &CommitEnv,
    ) -> CommitOutcome {
        commit(
            w,
            "silver.t",
            vec![batch],
            WriteMode::Append,
            &[],
            vec![TxnUpdate::new(app, Some(n - 1), n)],
            env,
        )
        .await
        .unwrap()
    }
    assert!(matches!(
        append(&mut w, t.batch(6), &app, 6, &writer).await,
        CommitOutcome::Committed { version: 8 }
    ));
    let schema = log::arrow_schema(&m, "silver.t").unwrap();
    let predicate = SqlPredicate::new("n = 2 OR n = 6", &schema, "silver.t").unwrap();
    let deleted = delete(&mut m, "silver.t", &predicate, &maintainer)
        .await
        .unwrap();
    assert_eq!(deleted.rows_deleted, 2);
    assert_eq!(deleted.version, Some(9));
    assert_eq!((deleted.files_removed, deleted.files_added), (2, 1));
    assert!(matches!(
        append(&mut w, t.batch(7), &app, 7, &writer).await,
        CommitOutcome::Committed { version: 10 }
    ));

    let mut reader = t.store.open("silver.t").await.unwrap();
    log::refresh(&mut reader, "silver.t").await.unwrap();
    assert_eq!(log::row_count(&reader), 6, "8 appended, 2 deleted");
    assert_eq!(log::txn_version(&reader, &app).await.unwrap(), Some(7));
    // Every commit but the table's creation carries an epoch, in increasing order.
    let mut epochs = Vec::new();
    for version in 1..=10 {
        let actions = crate::changes::commit_actions(&reader, "silver.t", version)
            .await
            .unwrap()
            .unwrap();
        let epoch = actions.iter().find_map(|a| match a {
            deltalake::kernel::Action::Txn(t) if t.app_id == crate::app_id::EPOCH => {
                Some(t.version)
            }
            _ => None,
        });
        epochs.push(epoch.unwrap_or_else(|| panic!("version {version} has no epoch")));
    }
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    // Bad predicates are refused before anything is read.
    for (sql, expected) in [("nope = 1", "nope"), ("n + 1", "not a condition")] {
        let error = SqlPredicate::new(sql, &schema, "silver.t").err().unwrap();
        assert!(error.to_string().contains(expected), "{sql}: {error}");
    }
}

/// The path of the file version `version` added.
async fn first_file_of_version(table: &DeltaTable, version: i64) -> String {
    crate::changes::commit_actions(table, "silver.t", version)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .find_map(|a| match a {
            deltalake::kernel::Action::Add(add) => Some(add.path),
            _ => None,
        })
        .unwrap()
}
