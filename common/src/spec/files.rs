//! The files source's settings: where files land (a local directory or an object-store
//! prefix), which names are read, what they hold, and how they are spread over partitions
//! of work.
//!
//! Invariants the reader and the drain check share through [`FileSelector`]:
//! * a file is named by its path relative to `path` (`/`-separated); that name is its
//!   bronze topic and its txn app id, so a name is read exactly once whatever the partition
//!   count;
//! * the partition of a file is a pure function of its name ([`FileSelector::partition`]),
//!   so every worker agrees on who reads it without talking, and changing `partitions`
//!   moves files between tasks but never re-reads one (positions are per file).

use serde::{Deserialize, Serialize};

/// Settings of the files source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilesSpec {
    /// Where files land: a local directory, or a prefix of an S3-compatible bucket
    /// (`s3://bucket/prefix`, reached with the `storage` section's S3 settings). Files
    /// appear there by atomic rename (or a single PUT); names starting with `.` or ending
    /// in `.tmp` are ignored until renamed.
    pub path: String,
    /// What the files hold (`ndjson` by default, `csv`, `parquet`, `avro`).
    #[serde(default)]
    pub format: FileFormat,
    /// Only names with this suffix are read (`.ndjson`, `.csv`, `.parquet` or `.avro` by default,
    /// after the format, unless a `pattern` is given); each may also be compressed,
    /// `<suffix>.gz` or `<suffix>.zst`.
    #[serde(default)]
    pub suffix: Option<String>,
    /// A glob over names relative to `path` (`*` and `?` within one directory level, `**`
    /// across levels, `[a-z]` classes): `"2026/**/*.ndjson.gz"`. Without it, only files
    /// directly under `path` are read.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Files are spread over this many partitions of work by a hash of their name; the
    /// coordinator places the partitions on workers like any source's.
    #[serde(default = "one")]
    pub partitions: u32,
    /// New files are found by listing after the greatest name read so far (files should
    /// land in name order, as time-stamped names do); every this many listings, the whole `path`
    /// is listed again to catch a file that landed behind that cursor. 1 lists everything
    /// every time.
    #[serde(default = "twenty")]
    pub full_listing_every: u32,
    /// How CSV files are written (with `format: csv`).
    #[serde(default)]
    pub csv: CsvSpec,
}

impl FilesSpec {
    /// A spec for the files under `path` with every other setting at its default.
    pub fn at(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            format: FileFormat::default(),
            suffix: None,
            pattern: None,
            partitions: 1,
            full_listing_every: 20,
            csv: CsvSpec::default(),
        }
    }

    /// The suffix of the names read (before a compression suffix).
    pub fn suffix(&self) -> &str {
        match (&self.suffix, self.format) {
            (Some(suffix), _) => suffix,
            (None, FileFormat::Ndjson) => ".ndjson",
            (None, FileFormat::Csv) => ".csv",
            (None, FileFormat::Parquet) => ".parquet",
            (None, FileFormat::Avro) => ".avro",
        }
    }

    /// Whether `path` names an object-store prefix rather than a local directory.
    pub fn is_remote(&self) -> bool {
        self.path.contains("://")
    }

    /// Which names this source reads and the partition of each; an error says why the
    /// pattern is not a glob.
    pub fn selector(&self) -> Result<FileSelector, String> {
        let pattern = match &self.pattern {
            Some(text) => Some(
                glob::Pattern::new(text)
                    .map_err(|e| format!("`{text}` is not a glob: {} at {}", e.msg, e.pos))?,
            ),
            None => None,
        };
        let suffix = match (&self.suffix, &pattern) {
            (None, Some(_)) => None,
            _ => Some(self.suffix().to_string()),
        };
        Ok(FileSelector {
            pattern,
            suffix,
            partitions: self.partitions.max(1),
        })
    }
}

/// Decides which names a files source reads, and which partition reads each.
#[derive(Debug, Clone)]
pub struct FileSelector {
    pattern: Option<glob::Pattern>,
    suffix: Option<String>,
    partitions: u32,
}

impl FileSelector {
    /// Whether the file named `name` (relative to the source's path) is read: not hidden
    /// (no part starting with `.`), not a `.tmp` name, matching the pattern, or without one
    /// directly under the path, and ending in the suffix (possibly followed by `.gz` or
    /// `.zst`) when there is one.
    pub fn selects(&self, name: &str) -> bool {
        if name.is_empty() || Self::in_flight(name) {
            return false;
        }
        let by_name = match &self.pattern {
            Some(pattern) => pattern.matches_with(
                name,
                glob::MatchOptions {
                    case_sensitive: true,
                    require_literal_separator: true,
                    require_literal_leading_dot: true,
                },
            ),
            None => !name.contains('/'),
        };
        by_name
            && self
                .suffix
                .as_ref()
                .is_none_or(|suffix| uncompressed(name).ends_with(suffix.as_str()))
    }

    /// Whether `name` is a file still being written by the convention writers follow (a
    /// hidden part, a `.tmp` name): it will be renamed, possibly to a smaller name.
    pub fn in_flight(name: &str) -> bool {
        name.ends_with(".tmp") || name.split('/').any(|part| part.starts_with('.'))
    }

    /// The partition of work that reads `name`: FNV-1a (64 bit) of the name modulo the
    /// partition count. Stable across versions and machines; never change it (a file would
    /// move to another task mid-read, which is safe, but the spread would change).
    pub fn partition(&self, name: &str) -> i32 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in name.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (hash % u64::from(self.partitions)) as i32
    }
}

/// `name` without a compression suffix (`.gz`, `.zst`).
pub fn uncompressed(name: &str) -> &str {
    name.strip_suffix(".gz")
        .or_else(|| name.strip_suffix(".zst"))
        .unwrap_or(name)
}

fn one() -> u32 {
    1
}

fn twenty() -> u32 {
    20
}
/// What the files of a files source hold.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line; a record's offset is its line number.
    #[default]
    Ndjson,
    /// Comma- (or `csv.delimiter`-) separated values with quoting; each row becomes a JSON
    /// object of its text by column name (silver reads it with `parse: { format: csv }`);
    /// a record's offset is its row number (0 = the first row after the header).
    Csv,
    /// Apache Parquet; each row becomes a JSON object of its typed values; a record's
    /// offset is its row number in the file.
    Parquet,
    /// Apache Avro object container files, read with the schema their header embeds;
    /// each record becomes a JSON object of its typed values; a record's offset is its
    /// index in the file.
    Avro,
}

/// How the CSV files of a files source are written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CsvSpec {
    /// Whether the first row names the columns (otherwise they are `c0`, `c1`, ...).
    #[serde(default = "yes")]
    pub header: bool,
    /// The field separator.
    #[serde(default = "comma")]
    pub delimiter: char,
    /// The quote character (a quoted field may hold separators, quotes doubled, newlines).
    #[serde(default = "double_quote")]
    pub quote: char,
}

impl Default for CsvSpec {
    fn default() -> Self {
        Self {
            header: true,
            delimiter: ',',
            quote: '"',
        }
    }
}

fn yes() -> bool {
    true
}

fn comma() -> char {
    ','
}

fn double_quote() -> char {
    '"'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FilesSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn names_are_selected_by_suffix_or_pattern_and_never_in_flight() {
        let plain = spec("{ path: /in }").selector().unwrap();
        for name in ["a.ndjson", "a.ndjson.gz", "a.ndjson.zst"] {
            assert!(plain.selects(name), "{name}");
        }
        for name in ["a.csv", "d/a.ndjson", ".a.ndjson", "a.ndjson.tmp", ""] {
            assert!(!plain.selects(name), "{name}");
        }
        let globbed = spec("{ path: /in, pattern: '2026/**/*.json.gz' }")
            .selector()
            .unwrap();
        assert!(globbed.selects("2026/12/06/a.json.gz"));
        assert!(globbed.selects("2026/a.json.gz"));
        assert!(!globbed.selects("2025/12/a.json.gz"));
        assert!(!globbed.selects("2026/12/.a.json.gz"));
        assert!(!globbed.selects("2026/.staging/a.json.gz"));
        let one_level = spec("{ path: /in, pattern: '*/*.csv', format: csv }")
            .selector()
            .unwrap();
        assert!(one_level.selects("day/a.csv") && !one_level.selects("day/x/a.csv"));
        // A pattern with an explicit suffix needs both.
        let both = spec("{ path: /in, pattern: 'a*', suffix: .json }")
            .selector()
            .unwrap();
        assert!(both.selects("a1.json") && !both.selects("a1.txt"));
        let bad = spec("{ path: /in, pattern: '[a' }").selector().unwrap_err();
        assert!(bad.contains("`[a` is not a glob"), "{bad}");
    }

    #[test]
    fn the_partition_of_a_name_is_stable_and_spread() {
        let selector = spec("{ path: /in, partitions: 4 }").selector().unwrap();
        // Fixed values (FNV-1a computed elsewhere): a change would move files between the
        // tasks of running pipelines.
        let fixed: Vec<i32> = ["a.ndjson", "b.ndjson", "2026/12/06/c.ndjson.gz"]
            .iter()
            .map(|n| selector.partition(n))
            .collect();
        assert_eq!(fixed, vec![2, 1, 1]);
        let mut counts = [0; 4];
        for i in 0..4_000 {
            counts[selector.partition(&format!("events-{i:05}.ndjson")) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}
