//! The behaviour every [`CoordinationStore`] must show, as one suite that runs against the
//! in-memory store (unit tests) and against a real etcd (integration tests).

use std::time::{Duration, Instant};

use super::{CoordinationStore, Expect, Guard};
use crate::Error;

/// Runs every check against `store`, using keys under `prefix` only. Panics on the first
/// deviation, naming it.
pub async fn check_store(store: &dyn CoordinationStore, prefix: &str) {
    let key = |k: &str| format!("{prefix}{k}");

    // Plain writes: revisions grow, create_revision sticks, list is prefix-scoped and ordered.
    let r1 = store
        .put(&key("a"), b"1".to_vec(), None)
        .await
        .expect("put a");
    let r2 = store
        .put(&key("a"), b"2".to_vec(), None)
        .await
        .expect("put a again");
    assert!(r2 > r1, "revisions must grow ({r1} then {r2})");
    let a = store
        .get(&key("a"))
        .await
        .expect("get a")
        .expect("a exists");
    assert_eq!(
        (a.value.as_slice(), a.create_revision, a.mod_revision),
        (b"2".as_slice(), r1, r2)
    );
    store
        .put(&key("b"), b"x".to_vec(), None)
        .await
        .expect("put b");
    store
        .put(&format!("{prefix}~other"), b"y".to_vec(), None)
        .await
        .expect("put other");
    let listed: Vec<String> = store
        .list(&key(""))
        .await
        .expect("list")
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(
        listed.iter().filter(|k| !k.ends_with("~other")).count(),
        2,
        "{listed:?}"
    );
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "list is in key order: {listed:?}"
    );
    store.delete(&key("b")).await.expect("delete b");
    store
        .delete(&key("b"))
        .await
        .expect("deleting a missing key is fine");
    assert!(store.get(&key("b")).await.expect("get b").is_none());

    // Conditional writes.
    assert_eq!(
        store
            .put_if(&key("a"), Expect::Absent, b"3".to_vec(), None)
            .await
            .expect("put_if"),
        None
    );
    assert_eq!(
        store
            .put_if(&key("a"), Expect::ModRevision(r1), b"3".to_vec(), None)
            .await
            .expect("put_if"),
        None
    );
    let r3 = store
        .put_if(&key("a"), Expect::ModRevision(r2), b"3".to_vec(), None)
        .await
        .expect("put_if")
        .expect("matched");
    assert!(r3 > r2);
    assert!(
        store
            .put_if(&key("c"), Expect::Absent, b"c".to_vec(), None)
            .await
            .expect("put_if c")
            .is_some()
    );

    // Leases: bound keys live while kept alive and vanish with the lease.
    let lease = store
        .grant_lease(Duration::from_secs(2))
        .await
        .expect("grant");
    store
        .put(&key("leased"), b"w".to_vec(), Some(lease))
        .await
        .expect("put leased");
    assert_eq!(
        store
            .get(&key("leased"))
            .await
            .expect("get")
            .expect("leased exists")
            .lease,
        Some(lease)
    );
    store.keep_alive(lease).await.expect("keep alive");
    store.revoke_lease(lease).await.expect("revoke");
    assert!(
        store.get(&key("leased")).await.expect("get").is_none(),
        "revoking a lease deletes its keys"
    );
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(Error::LeaseNotFound { .. })
    ));
    assert!(matches!(
        store.put(&key("late"), b"z".to_vec(), Some(lease)).await,
        Err(Error::LeaseNotFound { .. })
    ));

    let lease = store
        .grant_lease(Duration::from_secs(1))
        .await
        .expect("grant short");
    store
        .put(&key("expiring"), b"w".to_vec(), Some(lease))
        .await
        .expect("put expiring");
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.get(&key("expiring")).await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "a lease that is not kept alive must expire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Guarded writes: they land while the guard key is the one taken, and are refused
    // once it was deleted and re-created by someone else (a new leader).
    let leader = key("leader");
    let revision = store
        .put_if(&leader, Expect::Absent, b"a".to_vec(), None)
        .await
        .expect("campaign")
        .expect("first campaign wins");
    let guard = Guard {
        key: leader.clone(),
        revision,
    };
    store
        .put_guarded(&guard, &key("guarded"), b"1".to_vec(), None)
        .await
        .expect("guarded put while leading");
    // A guarded create lands once, while the guard holds.
    assert!(
        store
            .create_guarded(&guard, &key("claim"), b"first".to_vec())
            .await
            .expect("guarded create")
            .is_some()
    );
    assert_eq!(
        store
            .create_guarded(&guard, &key("claim"), b"second".to_vec())
            .await
            .expect("guarded create of an existing key"),
        None,
        "an existing key is not created again"
    );
    store.delete(&leader).await.expect("resign");
    let successor = store
        .put_if(&leader, Expect::Absent, b"b".to_vec(), None)
        .await
        .expect("campaign again")
        .expect("successor wins");
    assert_ne!(successor, revision);
    assert!(matches!(
        store
            .put_guarded(&guard, &key("guarded"), b"2".to_vec(), None)
            .await,
        Err(Error::GuardLost { .. })
    ));
    assert!(matches!(
        store.delete_guarded(&guard, &key("guarded")).await,
        Err(Error::GuardLost { .. })
    ));
    // A lost guard refuses a create, whether or not the key exists.
    assert!(matches!(
        store
            .create_guarded(&guard, &key("claim-2"), b"x".to_vec())
            .await,
        Err(Error::GuardLost { .. })
    ));
    assert!(matches!(
        store
            .create_guarded(&guard, &key("claim"), b"x".to_vec())
            .await,
        Err(Error::GuardLost { .. })
    ));
    assert!(store.get(&key("claim-2")).await.expect("get").is_none());
    assert_eq!(
        store
            .get(&key("claim"))
            .await
            .expect("get")
            .expect("kept")
            .value,
        b"first".to_vec()
    );
    let kept = store
        .get(&key("guarded"))
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(kept.value, b"1".to_vec(), "a deposed leader wrote nothing");
}
