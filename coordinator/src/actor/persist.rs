//! What the leader keeps in the coordination store, and how a new leader reads it back.
//!
//! Every leader writes through the leadership guard (see [`super::Actor`]); a new leader
//! rebuilds its whole state from these records ([`load`]), so a failover moves no task:
//!
//! | key | record |
//! |---|---|
//! | `/smelter/pipelines/<name>` | [`StoredPipeline`]: the spec text and its revision |
//! | `/smelter/partitions/<pipeline>/<source>` | discovered Kafka partition count |
//! | `/smelter/workers/<id>` (lease-bound) | [`WorkerRecord`]: endpoint and hostname |
//! | `/smelter/assignments/<id>` | [`AssignmentRecord`]: generation and task ids |
//! | `/smelter/generation` | the latest generation |

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use smelter_common::store::{CoordinationStore, LeaseId, keys};
use smelter_proto::PipelineDefinition;

use crate::Result;

/// A registered worker, as stored under its lease.
#[derive(Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Where it serves Flight SQL.
    pub flight_endpoint: String,
    /// Its hostname (pod name).
    pub hostname: String,
}

/// The tasks last assigned to a worker, and under which generation.
#[derive(Serialize, Deserialize)]
pub struct AssignmentRecord {
    /// The generation of the assignment.
    pub generation: u64,
    /// Task ids.
    pub tasks: Vec<String>,
}

/// A declared pipeline.
#[derive(Serialize, Deserialize)]
pub struct StoredPipeline {
    /// Pipeline name.
    pub name: String,
    /// The spec as applied.
    pub spec_yaml: String,
    /// Where the spec came from (file name).
    pub origin: String,
    /// Increases with every apply, pause and resume.
    pub revision: u64,
    /// Paused pipelines' tasks do not run.
    #[serde(default)]
    pub paused: bool,
}

impl From<StoredPipeline> for PipelineDefinition {
    fn from(stored: StoredPipeline) -> Self {
        PipelineDefinition {
            name: stored.name,
            spec_yaml: stored.spec_yaml,
            origin: stored.origin,
            revision: stored.revision,
            paused: stored.paused,
        }
    }
}

/// A live worker found in the store.
pub struct StoredWorker {
    /// Its lease.
    pub lease: LeaseId,
    /// Its registration.
    pub record: WorkerRecord,
    /// The tasks of its last stored assignment.
    pub tasks: BTreeSet<String>,
}

/// Everything a new leader continues from.
#[derive(Default)]
pub struct Stored {
    /// Declared pipelines, by store key (for messages).
    pub pipelines: Vec<(String, PipelineDefinition)>,
    /// Discovered partition counts, by (pipeline, source).
    pub partitions: BTreeMap<(String, String), u32>,
    /// Live workers, by id.
    pub workers: BTreeMap<String, StoredWorker>,
    /// The highest generation stored.
    pub generation: u64,
}

/// Reads the leader's records back.
pub async fn load(store: &dyn CoordinationStore) -> Result<Stored> {
    let mut stored = Stored::default();
    for kv in store.list(&keys::partitions_prefix()).await? {
        let (pipeline, source) = keys::partitions_of(&kv.key);
        if let Ok(count) = String::from_utf8_lossy(&kv.value).parse::<u32>() {
            stored
                .partitions
                .insert((pipeline.to_string(), source.to_string()), count);
        }
    }
    for kv in store.list(&keys::pipelines_prefix()).await? {
        match serde_json::from_slice::<StoredPipeline>(&kv.value) {
            Ok(pipeline) => stored.pipelines.push((kv.key, pipeline.into())),
            Err(error) => {
                tracing::error!(key = %kv.key, %error, "unreadable stored pipeline; skipped")
            }
        }
    }
    for kv in store.list(&keys::workers_prefix()).await? {
        let (Ok(record), Some(lease)) =
            (serde_json::from_slice::<WorkerRecord>(&kv.value), kv.lease)
        else {
            continue;
        };
        stored.workers.insert(
            keys::leaf(&kv.key).to_string(),
            StoredWorker {
                lease,
                record,
                tasks: BTreeSet::new(),
            },
        );
    }
    for kv in store.list(&keys::assignments_prefix()).await? {
        let Ok(record) = serde_json::from_slice::<AssignmentRecord>(&kv.value) else {
            continue;
        };
        stored.generation = stored.generation.max(record.generation);
        if let Some(worker) = stored.workers.get_mut(keys::leaf(&kv.key)) {
            worker.tasks.extend(record.tasks);
        }
    }
    if let Some(kv) = store.get(&keys::generation()).await?
        && let Ok(generation) = String::from_utf8_lossy(&kv.value).parse::<u64>()
    {
        stored.generation = stored.generation.max(generation);
    }
    Ok(stored)
}

/// A record as JSON. The records are plain structs of strings and numbers, so this cannot
/// fail; a failure would be a bug, reported as one.
pub fn encode(record: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(|e| {
        smelter_common::Error::Encoding {
            what: "coordinator record".into(),
            message: e.to_string(),
        }
        .into()
    })
}
