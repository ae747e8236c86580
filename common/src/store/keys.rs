//! The key layout of the coordination store, in one place.
//!
//! ```text
//! /smelter/pipelines/<pipeline>          pipeline spec (JSON: yaml, origin, revision)
//! /smelter/workers/<worker_id>           worker registration, bound to the worker's lease
//! /smelter/assignments/<worker_id>       the worker's current assignment (JSON)
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
    format!("{ROOT}assignments/{worker_id}")
}

/// The last path segment of a key (worker id, pipeline name).
pub fn leaf(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}
