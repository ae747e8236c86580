//! Crash hooks for the fault suite. `worker.failpoint = "<name>:<n>"` (for example
//! `SMELTER__WORKER__FAILPOINT=commit.after_log:5`) aborts the process the n-th time this
//! worker reaches `<name>` — no unwinding, no drain, like a power cut at that instruction.
//! Unset (the default), a hook costs one branch.
//!
//! The hooks, in commit order:
//! * `commit.after_files`: data files are in storage, the log entry is not written;
//! * `commit.evolving`: the same, for a commit that evolves its table's schema (its rows,
//!   and the table's files rewritten if a type widened; see [`crate::evolve`]);
//! * `commit.after_claim`: (arbitrated stores) the version is claimed in etcd, its log
//!   entry not yet written;
//! * `commit.after_log`: the log entry is written, its result not yet handled;
//! * `ingest.after_commit`: a bronze batch is committed, progress not yet reported;
//! * `replay.after_silver`: a quarantine replay's silver commit landed, the quarantine not
//!   yet marked (the worker's `refine::replay`);
//! * `refine.started_over`: a silver table's schema was replaced and its rows removed
//!   (`on_incompatible: new_version`), its quarantine not yet emptied (the worker's
//!   `tasks::silver_schema`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{LakeError, Result};

/// Every hook name, for validation.
pub const NAMES: &[&str] = &[
    "commit.after_files",
    "commit.evolving",
    "commit.after_claim",
    "commit.after_log",
    "ingest.after_commit",
    "replay.after_silver",
    "refine.started_over",
];

/// The armed failpoint of one worker, if any.
#[derive(Debug, Default)]
pub struct Failpoints {
    armed: Option<(String, u64)>,
    hits: AtomicU64,
}

impl Failpoints {
    /// Parses `<name>:<n>` (n ≥ 1); `None` arms nothing.
    pub fn parse(spec: Option<&str>) -> Result<Self> {
        let Some(spec) = spec.filter(|s| !s.is_empty()) else {
            return Ok(Self::default());
        };
        let bad = |message: String| {
            LakeError::Common(smelter_common::Error::Config {
                source_name: "worker.failpoint".into(),
                message: format!("`{spec}`: {message}"),
            })
        };
        let (name, count) = spec
            .split_once(':')
            .ok_or_else(|| bad("expected <name>:<n>".into()))?;
        if !NAMES.contains(&name) {
            return Err(bad(format!(
                "unknown failpoint; known: {}",
                NAMES.join(", ")
            )));
        }
        let count: u64 = count
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad("n must be a whole number from 1".into()))?;
        Ok(Self {
            armed: Some((name.to_string(), count)),
            hits: AtomicU64::new(0),
        })
    }

    /// Aborts the process if `name` is armed and this is its n-th hit, logging `detail()`
    /// (what the process leaves behind: the table, its version or files) first, so a test
    /// can check the state it finds is that one.
    pub fn hit(&self, name: &str, detail: impl FnOnce() -> String) {
        if let Some((armed, at)) = &self.armed
            && armed == name
            && self.hits.fetch_add(1, Ordering::AcqRel) + 1 == *at
        {
            tracing::error!(
                failpoint = name,
                hit = at,
                detail = %detail(),
                "failpoint reached: aborting the process"
            );
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked() {
        assert!(Failpoints::parse(None).unwrap().armed.is_none());
        assert!(
            Failpoints::parse(Some("commit.after_log:3"))
                .unwrap()
                .armed
                .is_some()
        );
        for bad in [
            "commit.after_log",
            "nope:1",
            "commit.after_log:0",
            "commit.after_log:x",
        ] {
            assert!(Failpoints::parse(Some(bad)).is_err(), "{bad}");
        }
        // Unarmed names never fire.
        Failpoints::parse(Some("commit.after_log:1"))
            .unwrap()
            .hit("commit.after_files", String::new);
    }
}
