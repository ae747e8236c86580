//! Object storage for tables on S3-compatible stores (AWS S3, MinIO, SeaweedFS, moto).
//!
//! delta-rs commits a log entry with a put-if-absent (`PutMode::Create`); on S3 that is a
//! conditional write (`If-None-Match: *`), enabled here with `S3ConditionalPut::ETagMatch`.
//! Smelter never relies on unsafe renames (docs/exactly-once.md): before a worker runs on a store
//! it [`probe`]s that a second create of the same key is refused, and it refuses to run
//! otherwise.
//!
//! Store settings travel with every table open as delta-rs storage options (`aws_endpoint`,
//! `aws_region`, `aws_allow_http`, credentials from the usual `AWS_*` variables), so the
//! factory registered with delta-rs holds no settings of its own.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use deltalake::{DeltaResult, DeltaTableError};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;

use crate::arbitrated::ArbitratedLogStore;
use crate::{LakeError, Result};

/// Builds the S3 client for `url` (bucket = host) with `options`.
pub fn s3_store(url: &Url, options: &HashMap<String, String>) -> Result<Arc<dyn ObjectStore>> {
    let error = |message: String| LakeError::Unsupported {
        location: url.to_string(),
        message,
    };
    let bucket = url
        .host_str()
        .ok_or_else(|| error("an s3:// location needs a bucket".into()))?;
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch);
    for (key, value) in options.iter().filter(|(k, _)| !k.starts_with("smelter_")) {
        let key = AmazonS3ConfigKey::from_str(key)
            .map_err(|e| error(format!("storage option `{key}`: {e}")))?;
        builder = builder.with_config(key, value);
    }
    Ok(Arc::new(builder.build().map_err(|e| error(e.to_string()))?))
}

struct S3Stores;

impl ObjectStoreFactory for S3Stores {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, ObjectPath)> {
        let store =
            s3_store(url, &config.raw).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
        let path = ObjectPath::from_url_path(url.path())
            .map_err(|e| DeltaTableError::Generic(e.to_string()))?;
        Ok((store, path))
    }
}

struct S3LogStores;

impl LogStoreFactory for S3LogStores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        let inner = default_logstore(prefixed_store, root_store, location, options);
        if options
            .raw
            .get(ARBITRATED_OPTION)
            .is_some_and(|v| v == "true")
        {
            return Ok(Arc::new(ArbitratedLogStore::new(inner)));
        }
        // The default log store commits with put-if-absent, which the store was probed for.
        Ok(inner)
    }
}

/// Storage option (not an object-store setting) that selects [`ArbitratedLogStore`].
pub const ARBITRATED_OPTION: &str = "smelter_commit_arbitration";

/// Teaches delta-rs the `s3://` scheme (idempotent; the factories are stateless).
pub fn register_s3() {
    if let Ok(scheme) = Url::parse("s3://") {
        object_store_factories().insert(scheme.clone(), Arc::new(S3Stores));
        logstore_factories().insert(scheme, Arc::new(S3LogStores));
    }
}

/// Whether `store` refuses a second create of one key (put-if-absent), tried under
/// `prefix/_smelter_probe/`.
pub async fn probe(store: &dyn ObjectStore, prefix: &ObjectPath) -> Result<bool> {
    let key = prefix
        .clone()
        .join("_smelter_probe")
        .join(uuid::Uuid::new_v4().to_string());
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let first = store
        .put_opts(&key, PutPayload::from_static(b"1"), create())
        .await;
    let supported = match first {
        Ok(_) => {
            let second = store
                .put_opts(&key, PutPayload::from_static(b"2"), create())
                .await;
            matches!(second, Err(object_store::Error::AlreadyExists { .. }))
        }
        Err(object_store::Error::NotImplemented { .. })
        | Err(object_store::Error::NotSupported { .. }) => false,
        Err(e) => {
            return Err(LakeError::Storage {
                location: key.to_string(),
                message: format!("cannot write the put-if-absent probe: {e}"),
            });
        }
    };
    let _ = store.delete(&key).await;
    Ok(supported)
}
