//! Time travel in SQL: `silver.events VERSION AS OF 42` and
//! `gold.daily_summary TIMESTAMP AS OF '2026-11-01T10:00:00Z'`, the Spark and Databricks
//! syntax, anywhere a table is named (joins, subqueries, prepared statements).
//!
//! DataFusion's SQL dialect does not parse the clause, so [`rewrite`] resolves it before
//! planning: each `layer.name <clause>` becomes the quoted identifier `layer."name@vN"`,
//! which the layer's schema provider opens at version N. A timestamp becomes the latest
//! version committed at or before it (by the commit's own time, `commitInfo.timestamp`).
//! A version that is no longer available (not in the log, beyond the table's history
//! retention, or with files a vacuum deleted: `smelter_lake::history::oldest_available`),
//! or one past the latest, is a planning error naming the oldest available. SQL without the clause is passed through untouched.

use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};
use smelter_lake::TableStore;

/// The marker between a table's name and its version in a rewritten identifier.
pub const VERSION_MARK: &str = "@v";

/// `name@vN` split into `(name, N)`, for the schema provider.
pub fn pinned(name: &str) -> Option<(&str, i64)> {
    let (base, version) = name.rsplit_once(VERSION_MARK)?;
    Some((base, version.parse().ok()?))
}

fn plan_error(message: String) -> DataFusionError {
    DataFusionError::Plan(message)
}

/// What one clause asked for.
#[derive(Debug)]
enum AsOf {
    Version(i64),
    Timestamp(String),
}

/// One clause found in the text: the byte range from the table's name to the end of the
/// clause, the table, and what it asked for.
#[derive(Debug)]
struct Clause {
    range: std::ops::Range<usize>,
    layer: String,
    name: String,
    as_of: AsOf,
}

/// Byte offset of a 1-based line/column (columns count characters).
pub(super) fn byte_offset(sql: &str, at: Location) -> usize {
    let mut line = 1;
    let mut column = 1;
    for (index, ch) in sql.char_indices() {
        if line == at.line && column == at.column {
            return index;
        }
        if ch == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    sql.len()
}

fn word(token: &Token) -> Option<&datafusion::sql::sqlparser::tokenizer::Word> {
    match token {
        Token::Word(word) => Some(word),
        _ => None,
    }
}

fn keyword(token: &Token, expected: Keyword) -> bool {
    word(token).is_some_and(|w| w.quote_style.is_none() && w.keyword == expected)
}

/// The tokens of `sql` with their locations, whitespace left out (the rewrites before
/// planning look for patterns of tokens).
pub(super) fn tokens(sql: &str) -> Result<Vec<TokenWithSpan>, DataFusionError> {
    Ok(Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| DataFusionError::SQL(Box::new(e.into()), None))?
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect())
}

fn clauses(sql: &str) -> Result<Vec<Clause>, DataFusionError> {
    let tokens = tokens(sql)?;
    let mut found = Vec::new();
    for window in tokens.windows(7) {
        let [layer, dot, name, kind, as_, of, value] = window else {
            continue;
        };
        let (Some(layer_word), Some(name_word)) = (word(&layer.token), word(&name.token)) else {
            continue;
        };
        let layer_name = layer_word.value.to_ascii_lowercase();
        if dot.token != Token::Period
            || !matches!(layer_name.as_str(), "bronze" | "silver" | "gold")
            || !keyword(&as_.token, Keyword::AS)
            || !keyword(&of.token, Keyword::OF)
        {
            continue;
        }
        let as_of = if keyword(&kind.token, Keyword::VERSION) {
            match &value.token {
                Token::Number(n, _) => AsOf::Version(n.parse().map_err(|_| {
                    plan_error(format!("VERSION AS OF needs a whole number, not {n}"))
                })?),
                other => {
                    return Err(plan_error(format!(
                        "VERSION AS OF needs a version number, not {other}"
                    )));
                }
            }
        } else if keyword(&kind.token, Keyword::TIMESTAMP) {
            match &value.token {
                Token::SingleQuotedString(text) => AsOf::Timestamp(text.clone()),
                other => {
                    return Err(plan_error(format!(
                        "TIMESTAMP AS OF needs a quoted timestamp such as \
                         '2026-11-01T10:00:00Z', not {other}"
                    )));
                }
            }
        } else {
            continue;
        };
        found.push(Clause {
            range: byte_offset(sql, name.span.start)..byte_offset(sql, value.span.end),
            layer: layer_name,
            name: name_word.value.to_ascii_lowercase(),
            as_of,
        });
    }
    Ok(found)
}

/// The version `clause` names, checked against the versions the table's log holds.
async fn resolve(tables: &TableStore, clause: &Clause) -> Result<i64, DataFusionError> {
    let full = format!("{}.{}", clause.layer, clause.name);
    let external = |e: smelter_lake::LakeError| DataFusionError::External(Box::new(e));
    if !tables.exists(&full).await {
        return Err(plan_error(format!("table {full} does not exist")));
    }
    let table = tables.open(&full).await.map_err(external)?;
    let latest = smelter_lake::log::version(&table);
    let available = smelter_lake::history::oldest_available(
        &table,
        &full,
        chrono::Utc::now().timestamp_millis(),
    )
    .await
    .map_err(external)?;
    let oldest = available.version;
    let gone = |asked: String| {
        plan_error(format!(
            "{asked} of {full} is no longer available ({}): the oldest available is version \
             {oldest} (the latest {latest})",
            available.because
        ))
    };
    match &clause.as_of {
        AsOf::Version(version) if *version > latest => Err(plan_error(format!(
            "{full} has no version {version}: its versions are {oldest} to {latest}"
        ))),
        AsOf::Version(version) if *version < oldest => Err(gone(format!("version {version}"))),
        AsOf::Version(version) => Ok(*version),
        AsOf::Timestamp(text) => {
            let at = smelter_lake::history::parse_timestamp(text).ok_or_else(|| {
                plan_error(format!(
                    "TIMESTAMP AS OF '{text}': not a timestamp (try '2026-11-01T10:00:00Z')"
                ))
            })?;
            match smelter_lake::history::version_at(&table, &full, at)
                .await
                .map_err(external)?
            {
                Some(version) if version >= oldest => Ok(version),
                Some(version) => Err(gone(format!("version {version} (as of '{text}')"))),
                None => Err(plan_error(format!(
                    "{full} has no version as of '{text}': its oldest available version, \
                     {oldest}, is later"
                ))),
            }
        }
    }
}

/// `sql` with every time-travel clause resolved to a pinned table identifier.
pub async fn rewrite(sql: &str, tables: &TableStore) -> Result<String, DataFusionError> {
    // Cheap test first: most SQL has no clause at all.
    let upper = sql.to_ascii_uppercase();
    if !upper.contains(" AS OF") && !upper.contains("\tAS OF") && !upper.contains("\nAS OF") {
        return Ok(sql.to_string());
    }
    let found = clauses(sql)?;
    let mut out = sql.to_string();
    for clause in found.iter().rev() {
        let version = resolve(tables, clause).await?;
        out.replace_range(
            clause.range.clone(),
            &format!("\"{}{VERSION_MARK}{version}\"", clause.name),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_are_found_wherever_a_table_is_named() {
        let sql = "SELECT * FROM silver.events VERSION AS OF 3 e\n  JOIN gold.\"daily_summary\"   TIMESTAMP AS OF '2026-11-01 10:00:00' d ON 1 = 1 \
                   WHERE x IN (SELECT y FROM bronze.events version as of 12)";
        let found = clauses(sql).unwrap();
        let described: Vec<(String, &str)> = found
            .iter()
            .map(|c| (format!("{}.{}", c.layer, c.name), &sql[c.range.clone()]))
            .collect();
        assert_eq!(
            described,
            vec![
                ("silver.events".to_string(), "events VERSION AS OF 3"),
                (
                    "gold.daily_summary".to_string(),
                    "\"daily_summary\"   TIMESTAMP AS OF '2026-11-01 10:00:00'"
                ),
                ("bronze.events".to_string(), "events version as of 12"),
            ]
        );
        assert!(
            clauses("SELECT version AS of FROM gold.x")
                .unwrap()
                .is_empty()
        );
        let error = clauses("SELECT * FROM gold.x VERSION AS OF 'yesterday'")
            .unwrap_err()
            .to_string();
        assert!(error.contains("needs a version number"), "{error}");
    }

    #[test]
    fn timestamps_parse_in_the_forms_users_write() {
        let expected = 1_793_527_200_000; // 2026-11-01T10:00:00Z
        for text in [
            "2026-11-01T10:00:00Z",
            "2026-11-01T11:00:00+01:00",
            "2026-11-01 10:00:00",
            "2026-11-01T10:00:00.000",
        ] {
            assert_eq!(
                smelter_lake::history::parse_timestamp(text),
                Some(expected),
                "{text}"
            );
        }
        assert_eq!(
            smelter_lake::history::parse_timestamp("2026-11-01"),
            Some(expected - 10 * 3_600_000)
        );
        assert_eq!(smelter_lake::history::parse_timestamp("yesterday"), None);
    }

    #[test]
    fn pinned_names_split() {
        assert_eq!(pinned("events@v42"), Some(("events", 42)));
        assert_eq!(pinned("events"), None);
    }
}
