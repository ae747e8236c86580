//! The key layout of the coordination store, in one place.
//!
//! ```text
//! /smelter/pipelines/<pipeline>          pipeline spec (JSON: yaml, origin, revision)
//! /smelter/workers/<worker_id>           worker registration, bound to the worker's lease
//! /smelter/assignments/<worker_id>       the worker's current assignment (JSON)
//! /smelter/leader                        the leading coordinator (JSON), bound to its lease
//! /smelter/generation                    the latest assignment generation
//! /smelter/partitions/<pipeline>/<source> discovered partition count of a Kafka source
//! /smelter/locks/<table>                 a table's commit lock, bound to the holder's lease
//! ```

/// Root of every Smelter key.
pub const ROOT: &str = "/smelter/";

/// Prefix of pipeline spec keys.
pub fn pipelines_prefix() -> String {
    format!("{ROOT}pipelines/")
}

/// Key of one pipeline's spec.
pub fn pipeline(name: &str) -> String {
    format!("{}{name}", pipelines_prefix())
}

/// Prefix of worker registration keys.
pub fn workers_prefix() -> String {
    format!("{ROOT}workers/")
}

/// Key of one worker's registration.
pub fn worker(worker_id: &str) -> String {
    format!("{}{worker_id}", workers_prefix())
}

/// Key of one worker's assignment.
pub fn assignment(worker_id: &str) -> String {
    format!("{}{worker_id}", assignments_prefix())
}

/// Key the coordinator replicas campaign for; its holder is the leader.
pub fn leader() -> String {
    format!("{ROOT}leader")
}

/// Key of the latest assignment generation, so a new leader continues the count.
pub fn generation() -> String {
    format!("{ROOT}generation")
}

/// Prefix of discovered partition counts.
pub fn partitions_prefix() -> String {
    format!("{ROOT}partitions/")
}

/// Key of the discovered partition count of one Kafka source.
pub fn partitions(pipeline: &str, source: &str) -> String {
    format!("{}{pipeline}/{source}", partitions_prefix())
}

/// (pipeline, source) of a [`partitions`] key.
pub fn partitions_of(key: &str) -> (&str, &str) {
    let rest = key.strip_prefix(ROOT).unwrap_or(key);
    let rest = rest.strip_prefix("partitions/").unwrap_or(rest);
    rest.split_once('/').unwrap_or((rest, ""))
}

/// Prefix of assignment keys.
pub fn assignments_prefix() -> String {
    format!("{ROOT}assignments/")
}

/// Key of one table's commit lock; its create revision is the holder's epoch.
pub fn commit_lock(table: &str) -> String {
    format!("{ROOT}locks/{table}")
}

/// Prefix of one table's version claims (stores without put-if-absent).
pub fn commit_claims(table: &str) -> String {
    format!("{ROOT}commits/{table}/")
}

/// Key of the claim on one version of a table's log; zero-padded so claims list in
/// version order.
pub fn commit_claim(table: &str, version: i64) -> String {
    format!("{}{version:020}", commit_claims(table))
}

/// The last path segment of a key (worker id, pipeline name).
pub fn leaf(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}
