//! `table_changes('silver.users', 3[, 7])`: a table's change data feed between two
//! versions (both included; the latest when the second is left out), as Spark and
//! Databricks name it. Each row is a row of the table as a commit inserted, updated (pre-
//! and post-image) or deleted it, with `_change_type`, `_commit_version` and
//! `_commit_timestamp`; commits without change data (appends) count their added rows as
//! inserts. The table must have been created with `change_data_feed: true`.
//!
//! The output schema depends on the table, which a table function — planned without
//! awaiting — cannot open. So, like time travel ([`super::time_travel`]), [`rewrite`]
//! resolves the call before planning into the identifier `layer."name@changes:F:T"`, which
//! the layer's schema provider opens as delta-rs's change data feed provider.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::tokenizer::Token;
use smelter_lake::TableStore;

/// The marker between a table's name and the versions of its changes.
const CHANGES_MARK: &str = "@changes:";

fn plan_error(message: impl Into<String>) -> DataFusionError {
    DataFusionError::Plan(message.into())
}

/// `name@changes:F:T` split into `(name, F, T)`, for the schema provider.
pub fn marked(name: &str) -> Option<(&str, i64, i64)> {
    let (base, range) = name.split_once(CHANGES_MARK)?;
    let (from, to) = range.split_once(':')?;
    Some((base, from.parse().ok()?, to.parse().ok()?))
}

/// One call found in the text: its byte range, the table and the versions.
struct Call {
    range: std::ops::Range<usize>,
    table: String,
    from: i64,
    to: Option<i64>,
}

fn calls(sql: &str) -> Result<Vec<Call>, DataFusionError> {
    let tokens = super::time_travel::tokens(sql)?;
    let usage = "table_changes takes a table name and one or two versions, as in \
                 table_changes('silver.users', 3) or table_changes('silver.users', 3, 7)";
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let is_call = matches!(&tokens[i].token, Token::Word(w)
            if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("table_changes"))
            && tokens.get(i + 1).is_some_and(|t| t.token == Token::LParen);
        if !is_call {
            i += 1;
            continue;
        }
        let start = super::time_travel::byte_offset(sql, tokens[i].span.start);
        let mut args = Vec::new();
        let mut j = i + 2;
        loop {
            let Some(token) = tokens.get(j) else {
                return Err(plan_error(usage));
            };
            match &token.token {
                Token::RParen => break,
                Token::Comma => {}
                Token::SingleQuotedString(text) => {
                    args.push(Token::SingleQuotedString(text.clone()))
                }
                Token::Number(n, _) => args.push(Token::Number(n.clone(), false)),
                _ => return Err(plan_error(usage)),
            }
            j += 1;
        }
        let end = super::time_travel::byte_offset(sql, tokens[j].span.end);
        let version = |token: &Token| match token {
            Token::Number(n, _) => n.parse::<i64>().map_err(|_| plan_error(usage)),
            _ => Err(plan_error(usage)),
        };
        let (table, from, to) = match args.as_slice() {
            [Token::SingleQuotedString(t), from] => (t.clone(), version(from)?, None),
            [Token::SingleQuotedString(t), from, to] => {
                (t.clone(), version(from)?, Some(version(to)?))
            }
            _ => return Err(plan_error(usage)),
        };
        found.push(Call {
            range: start..end,
            table: table.to_ascii_lowercase(),
            from,
            to,
        });
        i = j + 1;
    }
    Ok(found)
}

/// `sql` with every `table_changes(...)` call resolved to a marked table identifier; the
/// versions are checked against the table's log.
pub async fn rewrite(sql: &str, tables: &TableStore) -> Result<String, DataFusionError> {
    if !sql.to_ascii_lowercase().contains("table_changes") {
        return Ok(sql.to_string());
    }
    let mut out = sql.to_string();
    for call in calls(sql)?.iter().rev() {
        let Some((layer, name)) = call.table.split_once('.') else {
            return Err(plan_error(format!(
                "table_changes: name the table as layer.name, not '{}'",
                call.table
            )));
        };
        if !tables.exists(&call.table).await {
            return Err(plan_error(format!(
                "table_changes: table {} does not exist",
                call.table
            )));
        }
        let table = tables
            .open(&call.table)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let latest = smelter_lake::log::version(&table);
        let to = call.to.unwrap_or(latest);
        if call.from < 0 || call.from > to || to > latest {
            return Err(plan_error(format!(
                "table_changes('{}', {}, {to}): the versions must run forward within 0..={latest}",
                call.table, call.from
            )));
        }
        out.replace_range(
            call.range.clone(),
            &format!("{layer}.\"{name}{CHANGES_MARK}{}:{to}\"", call.from),
        );
    }
    Ok(out)
}

/// The change data feed of `table` (opened at its latest version) from `from` to `to`.
pub fn provider(
    table: deltalake::DeltaTable,
    name: &str,
    from: i64,
    to: i64,
) -> Result<Arc<dyn TableProvider>, DataFusionError> {
    let enabled = smelter_lake::log::table_property(
        &table,
        smelter_lake::describe::CHANGE_DATA_FEED_PROPERTY,
    )
    .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !enabled {
        return Err(plan_error(format!(
            "table_changes: {name} does not record its changes (declare the table with \
             `change_data_feed: true`)"
        )));
    }
    let builder = table
        .scan_cdf()
        .with_starting_version(from as u64)
        .with_ending_version(to as u64);
    let provider = deltalake::delta_datafusion::DeltaCdfTableProvider::try_new(builder)
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(Arc::new(Collected(Arc::new(provider))))
}

/// delta-rs's change feed provider, read whole when scanned: its plan for a range with no
/// file of one kind (no removes, say) has a scan of zero partitions, which DataFusion's
/// sorts refuse ("does not satisfy distribution requirements").
#[derive(Debug)]
struct Collected(Arc<dyn TableProvider>);

#[async_trait::async_trait]
impl TableProvider for Collected {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let plan = self.0.scan(state, None, &[], None).await?;
        let batches = datafusion::physical_plan::collect(plan, state.task_ctx()).await?;
        datafusion::catalog::MemTable::try_new(self.0.schema(), vec![batches])?
            .scan(state, projection, filters, limit)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_found_with_one_or_two_versions() {
        let sql = "SELECT * FROM table_changes('silver.users', 2) a JOIN \
                   TABLE_CHANGES( 'Silver.Users' , 3, 7 ) b ON true";
        let found = calls(sql).unwrap();
        let seen: Vec<(&str, &str, i64, Option<i64>)> = found
            .iter()
            .map(|c| (&sql[c.range.clone()], c.table.as_str(), c.from, c.to))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("table_changes('silver.users', 2)", "silver.users", 2, None),
                (
                    "TABLE_CHANGES( 'Silver.Users' , 3, 7 )",
                    "silver.users",
                    3,
                    Some(7)
                ),
            ]
        );
        for bad in [
            "SELECT * FROM table_changes('silver.users')",
            "SELECT * FROM table_changes(silver.users, 1)",
            "SELECT * FROM table_changes('silver.users', 'x')",
            "SELECT * FROM table_changes('silver.users', 1",
        ] {
            let error = calls(bad).err().unwrap().to_string();
            assert!(error.contains("table_changes takes"), "{bad}: {error}");
        }
        assert_eq!(marked("users@changes:3:7"), Some(("users", 3, 7)));
        assert_eq!(marked("users"), None);
    }
}
