//! The txn appIds of Smelter's commits: the heart of exactly-once.
//!
//! Every commit names what it consumed in Delta `txn` actions, and the table's latest
//! version of each appId is where its writer resumes (docs/exactly-once.md):
//!
//! | appId | version | written by |
//! |---|---|---|
//! | `<pipeline>/<topic>/<partition>` | last source offset in the table | ingest (bronze) |
//! | `<table>/<upstream table>` | upstream Delta version consumed | refine, aggregate |
//! | `smelter/epoch` | the commit-lock epoch of the writer | every commit under a lock |
//! | `smelter/replay/<quarantine table>` | the quarantine version replayed | a quarantine replay, in silver and in the quarantine |
//!
//! This module is the only place that spells or reads them.

use std::fmt;

/// What one txn appId stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AppId {
    /// A source partition ingested into bronze; its txn version is the last offset.
    Source {
        /// The pipeline.
        pipeline: String,
        /// The source's topic (the Kafka topic, the generator's topic, a file's name).
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// A source partition read to its end (a file of a files source): its txn version is
    /// the offset of its last record, written in the commit that holds that record. A
    /// reader skips such a file without opening it; a restore that goes back before it
    /// sets it to -1 (not finished).
    SourceEnd {
        /// The pipeline.
        pipeline: String,
        /// The source's topic (a file's name).
        topic: String,
    },
    /// An upstream table read by a downstream table; its txn version is the upstream
    /// Delta version consumed.
    Upstream {
        /// The table written (`layer.name`).
        table: String,
        /// The table read (`layer.name`).
        upstream: String,
    },
    /// The writer epoch: the commit lock's revision (see [`crate::lock`]).
    Epoch,
    /// A replay of a quarantine table's records into its silver table: in silver, the
    /// quarantine version whose records were refined again; in the quarantine, the version
    /// whose replayed records were taken out (the worker's `refine::replay`).
    Replay {
        /// The quarantine table (`layer.name_quarantine`).
        quarantine: String,
    },
}

/// The prefix of [`AppId::Replay`].
const REPLAY_PREFIX: &str = "smelter/replay/";

/// The last part of [`AppId::SourceEnd`].
const END: &str = "end";

/// The spelling of [`AppId::Epoch`].
pub const EPOCH: &str = "smelter/epoch";

impl AppId {
    /// The appId of a source partition.
    pub fn source(pipeline: &str, topic: &str, partition: i32) -> Self {
        AppId::Source {
            pipeline: pipeline.to_string(),
            topic: topic.to_string(),
            partition,
        }
    }

    /// The appId that marks `topic` (a file) as read to its end.
    pub fn source_end(pipeline: &str, topic: &str) -> Self {
        AppId::SourceEnd {
            pipeline: pipeline.to_string(),
            topic: topic.to_string(),
        }
    }

    /// The appId of `table` consuming `upstream`.
    pub fn upstream(table: &str, upstream: &str) -> Self {
        AppId::Upstream {
            table: table.to_string(),
            upstream: upstream.to_string(),
        }
    }

    /// Reads an appId as written in a table's log; `None` for one Smelter did not write.
    pub fn parse(text: &str) -> Option<Self> {
        if text == EPOCH {
            return Some(AppId::Epoch);
        }
        if let Some(quarantine) = text.strip_prefix(REPLAY_PREFIX) {
            return (!quarantine.is_empty() && !quarantine.contains('/')).then(|| AppId::Replay {
                quarantine: quarantine.to_string(),
            });
        }
        // `<pipeline>/<topic>/<partition|end>`: a topic may hold `/` (a file in a
        // subdirectory), a pipeline name never does.
        if let Some((pipeline, rest)) = text.split_once('/')
            && let Some((topic, last)) = rest.rsplit_once('/')
            && !pipeline.is_empty()
            && !topic.is_empty()
        {
            if last == END {
                return Some(AppId::source_end(pipeline, topic));
            }
            return Some(AppId::source(pipeline, topic, last.parse().ok()?));
        }
        match text.split_once('/') {
            Some((table, upstream)) if table.contains('.') && upstream.contains('.') => {
                Some(AppId::upstream(table, upstream))
            }
            _ => None,
        }
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppId::Source {
                pipeline,
                topic,
                partition,
            } => write!(f, "{pipeline}/{topic}/{partition}"),
            AppId::SourceEnd { pipeline, topic } => write!(f, "{pipeline}/{topic}/{END}"),
            AppId::Upstream { table, upstream } => write!(f, "{table}/{upstream}"),
            AppId::Epoch => f.write_str(EPOCH),
            AppId::Replay { quarantine } => write!(f, "{REPLAY_PREFIX}{quarantine}"),
        }
    }
}

impl From<&AppId> for String {
    fn from(app_id: &AppId) -> Self {
        app_id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        for (app_id, text) in [
            (
                AppId::source("clickstream", "events", 3),
                "clickstream/events/3",
            ),
            (
                AppId::source("p-1", "events-2026.ndjson", 0),
                "p-1/events-2026.ndjson/0",
            ),
            (
                AppId::upstream("silver.events", "bronze.events"),
                "silver.events/bronze.events",
            ),
            (
                AppId::upstream("silver.events_quarantine", "bronze.events"),
                "silver.events_quarantine/bronze.events",
            ),
            (
                AppId::source("files", "2026/12/06/a.ndjson.gz", 0),
                "files/2026/12/06/a.ndjson.gz/0",
            ),
            (
                AppId::source_end("files", "2026/12/06/a.ndjson.gz"),
                "files/2026/12/06/a.ndjson.gz/end",
            ),
            (AppId::Epoch, "smelter/epoch"),
            (
                AppId::Replay {
                    quarantine: "silver.events_quarantine".into(),
                },
                "smelter/replay/silver.events_quarantine",
            ),
        ] {
            assert_eq!(app_id.to_string(), text);
            assert_eq!(AppId::parse(text), Some(app_id), "{text}");
        }
    }

    #[test]
    fn foreign_app_ids_are_not_smelters() {
        for text in [
            "",
            "spark-streaming-query",
            "a/b",
            "p/t/x",
            "p/t/",
            "/t/1",
            "silver.t/",
        ] {
            assert_eq!(AppId::parse(text), None, "{text}");
        }
    }
}
