//! The etcd coordination store against a real etcd: the same conformance suite the
//! in-memory store passes.

use smelter_common::store::EtcdStore;
use smelter_common::store::conformance::check_store;
use smelter_tests::services::Etcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_conforms() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    check_store(&store, "/smelter-conformance/").await;
}
