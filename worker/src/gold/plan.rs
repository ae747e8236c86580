//! Splitting a gold query into mergeable per-group state, and the plans that build, merge
//! and finish that state.
//!
//! A query qualifies when it aggregates its upstream table exactly once: one `Aggregate`
//! whose input is only projections, filters and aliases over the one table scan, with
//! deterministic expressions (no `now()`: a trailing window must be recomputed), no
//! grouping sets, and aggregates that merge: `count`, `sum`, `min`, `max`, `avg` and
//! `count(DISTINCT x)`. Whatever sits above the aggregate (projections, `HAVING`, sorts,
//! limits, `CASE` over aggregates) is left as written and runs over the finished groups.
//!
//! State columns are named `__g<i>` (group keys), `__s<j>` (mergeable partials) and
//! `__d<k>` (distinct counts, added when finishing).
//!
//! So that rows can be taken out again (retracted, when the upstream's change data feed
//! says a merge or a delete removed them), the state also holds, unseen by the query, the
//! number of rows of each group (a group is gone when it reaches zero) and, beside each
//! `sum(x)`, `count(x)` (a sum whose values are all retracted is NULL again, not zero).

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::provider_as_source;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::logical_expr::{
    Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, Projection, TableScan, TableScanBuilder,
    Volatility, cast, lit, when,
};

use crate::Result;

/// How one state column merges with itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Counts and sums.
    Sum,
    /// Minima.
    Min,
    /// Maxima.
    Max,
}

/// How one output of the aggregate is finished from state.
#[derive(Debug, Clone)]
enum Output {
    /// Directly the merged state column (`count`, `sum`, `min`, `max`).
    State(usize),
    /// `sum / count`.
    Avg { sum: usize, count: usize },
    /// The size of a distinct set.
    Distinct(usize),
}

/// A gold query split into mergeable state; see the module docs.
#[derive(Debug, Clone)]
pub struct GoldPlan {
    query: LogicalPlan,
    aggregate: Aggregate,
    scan: TableScan,
    outputs: Vec<Output>,
    /// Partial expression and merge rule of each state column.
    states: Vec<(Expr, Merge)>,
    /// The state column counting each group's rows.
    rows_state: usize,
    /// Per state column, the state column counting the values a `sum` added: where it is
    /// zero, the sum is NULL.
    guards: Vec<Option<usize>>,
    /// Argument of each `count(DISTINCT ..)`.
    distinct: Vec<Expr>,
    /// The upstream columns the aggregate reads, and their types.
    input_schema: SchemaRef,
}

fn group_name(i: usize) -> String {
    format!("__g{i}")
}

fn state_name(j: usize) -> String {
    format!("__s{j}")
}

/// Name of the column holding the size of distinct set `k`.
pub fn distinct_name(k: usize) -> String {
    format!("__d{k}")
}

fn column(name: String) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// Fails on any function whose result may change between calls with the same input.
fn deterministic(expr: &Expr) -> std::result::Result<(), String> {
    let mut problem = None;
    expr.apply(|e| {
        match e {
            Expr::ScalarFunction(f) if f.func.signature().volatility != Volatility::Immutable => {
                problem = Some(format!("{} is not deterministic", f.func.name()));
            }
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => {
                problem = Some("subqueries are recomputed in full".to_string());
            }
            _ => {}
        }
        Ok(if problem.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })
    .map_err(|e| e.to_string())?;
    problem.map_or(Ok(()), Err)
}

/// Rebuilds `plan` bottom-up with every schema recomputed, replacing the nodes `swap` picks.
fn rebuild(
    plan: &LogicalPlan,
    swap: &dyn Fn(&LogicalPlan) -> Option<LogicalPlan>,
) -> Result<LogicalPlan> {
    if let Some(replacement) = swap(plan) {
        return Ok(replacement);
    }
    let inputs = plan
        .inputs()
        .into_iter()
        .map(|input| rebuild(input, swap))
        .collect::<Result<Vec<_>>>()?;
    Ok(plan.with_new_exprs(plan.expressions(), inputs)?)
}

impl GoldPlan {
    /// Splits `query` (as planned from SQL over `upstream`), or says why it cannot be.
    pub fn analyze(query: &LogicalPlan, upstream: &str) -> std::result::Result<Self, String> {
        let mut aggregates = Vec::new();
        let mut scans = Vec::new();
        query
            .apply_with_subqueries(|node| {
                match node {
                    LogicalPlan::Aggregate(a) => aggregates.push(a.clone()),
                    LogicalPlan::TableScan(s) => scans.push(s.clone()),
                    _ => {}
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .map_err(|e| e.to_string())?;
        let (Some(aggregate), 1) = (aggregates.pop(), aggregates.len() + 1) else {
            return Err("the query does not aggregate exactly once".into());
        };
        let (Some(scan), 1) = (scans.pop(), scans.len() + 1) else {
            return Err("the query does not read exactly one table".into());
        };
        if scan.table_name.to_string() != upstream {
            return Err(format!(
                "the query reads {}, not {upstream}",
                scan.table_name
            ));
        }
        let mut shape = Ok(());
        let mut referenced: HashSet<String> = HashSet::new();
        aggregate
            .input
            .apply(|node| {
                match node {
                    LogicalPlan::Projection(_)
                    | LogicalPlan::Filter(_)
                    | LogicalPlan::SubqueryAlias(_)
                    | LogicalPlan::TableScan(_) => {}
                    other => {
                        shape = Err(format!("{} under the aggregate", other.display()));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                for expr in node.expressions() {
                    if let Err(e) = deterministic(&expr) {
                        shape = Err(e);
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    referenced.extend(expr.column_refs().into_iter().map(|c| c.name.clone()));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .map_err(|e| e.to_string())?;
        shape?;
        for expr in aggregate.group_expr.iter().chain(&aggregate.aggr_expr) {
            if matches!(expr, Expr::GroupingSet(_)) {
                return Err("grouping sets are recomputed in full".into());
            }
            deterministic(expr)?;
            referenced.extend(expr.column_refs().into_iter().map(|c| c.name.clone()));
        }

        let groups = aggregate.group_expr.len();
        let mut outputs = Vec::new();
        let mut states = Vec::new();
        let mut guards = Vec::new();
        let mut distinct = Vec::new();
        for (i, expr) in aggregate.aggr_expr.iter().enumerate() {
            let inner = match expr {
                Expr::Alias(alias) => alias.expr.as_ref(),
                other => other,
            };
            let Expr::AggregateFunction(function) = inner else {
                return Err(format!("{inner} is not an aggregate function"));
            };
            let params = &function.params;
            let name = function.func.name();
            if params.filter.is_some() || !params.order_by.is_empty() {
                return Err(format!(
                    "{name} with FILTER or ORDER BY is recomputed in full"
                ));
            }
            let mut state = |expr: Expr, merge: Merge, guard: Option<usize>| {
                states.push((expr, merge));
                guards.push(guard);
                states.len() - 1
            };
            let output = match (name, params.distinct) {
                ("count", true) if params.args.len() == 1 => {
                    distinct.push(params.args[0].clone());
                    Output::Distinct(distinct.len() - 1)
                }
                ("count", false) => Output::State(state(inner.clone(), Merge::Sum, None)),
                ("sum", false) if params.args.len() == 1 => {
                    let values = state(count(params.args[0].clone()), Merge::Sum, None);
                    Output::State(state(inner.clone(), Merge::Sum, Some(values)))
                }
                ("min", _) => Output::State(state(inner.clone(), Merge::Min, None)),
                ("max", _) => Output::State(state(inner.clone(), Merge::Max, None)),
                ("avg", false)
                    if params.args.len() == 1
                        && aggregate.schema.field(groups + i).data_type() == &DataType::Float64 =>
                {
                    let arg = params.args[0].clone();
                    let count = state(count(arg.clone()), Merge::Sum, None);
                    Output::Avg {
                        sum: state(sum(arg), Merge::Sum, Some(count)),
                        count,
                    }
                }
                (name, distinct) => {
                    let distinct = if distinct { " DISTINCT" } else { "" };
                    return Err(format!("{name}{distinct} cannot be merged"));
                }
            };
            outputs.push(output);
        }
        states.push((count(lit(1)), Merge::Sum));
        guards.push(None);
        let rows_state = states.len() - 1;

        let upstream_schema = scan.source.schema();
        let fields: Vec<Field> = upstream_schema
            .fields()
            .iter()
            .filter(|f| referenced.contains(f.name()))
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        let plan = Self {
            query: query.clone(),
            aggregate,
            scan,
            outputs,
            states,
            rows_state,
            guards,
            distinct,
            input_schema: Arc::new(Schema::new(fields)),
        };
        // Build every plan once, so a query that cannot be split fails here, not later.
        let empty = Arc::new(
            datafusion::datasource::MemTable::try_new(plan.input_schema.clone(), vec![vec![]])
                .map_err(|e| e.to_string())?,
        );
        plan.partial(empty.clone()).map_err(|e| e.to_string())?;
        for k in 0..plan.distinct.len() {
            plan.distinct_pairs(k, empty.clone())
                .map_err(|e| e.to_string())?;
        }
        Ok(plan)
    }

    /// The upstream columns the aggregate reads (all nullable): the schema of the rows
    /// given to [`Self::partial`] and [`Self::distinct_pairs`].
    pub fn input_schema(&self) -> &SchemaRef {
        &self.input_schema
    }

    /// Number of group keys.
    pub fn groups(&self) -> usize {
        self.aggregate.group_expr.len()
    }

    /// Merge rule of each state column.
    pub fn merges(&self) -> Vec<Merge> {
        self.states.iter().map(|(_, merge)| *merge).collect()
    }

    /// The state column counting each group's rows (its index among the `__s*`).
    pub fn rows_state(&self) -> usize {
        self.rows_state
    }

    /// Number of `count(DISTINCT ..)` sets.
    pub fn distinct_sets(&self) -> usize {
        self.distinct.len()
    }

    /// The aggregate's input, reading `rows` instead of the upstream table.
    fn input(&self, rows: Arc<dyn TableProvider>) -> Result<LogicalPlan> {
        let scan = LogicalPlan::TableScan(
            TableScanBuilder::new(self.scan.table_name.clone(), provider_as_source(rows))
                .build()?,
        );
        rebuild(&self.aggregate.input, &|node| {
            matches!(node, LogicalPlan::TableScan(_)).then(|| scan.clone())
        })
    }

    /// `__g*, __s*` per group of `rows`.
    pub fn partial(&self, rows: Arc<dyn TableProvider>) -> Result<LogicalPlan> {
        let aggr = self
            .states
            .iter()
            .enumerate()
            .map(|(j, (expr, _))| expr.clone().alias(state_name(j)))
            .collect();
        let aggregate = Aggregate::try_new(
            Arc::new(self.input(rows)?),
            self.aggregate.group_expr.clone(),
            aggr,
        )?;
        let mut exprs: Vec<Expr> = (0..self.groups())
            .map(|i| {
                Expr::Column(Column::from(aggregate.schema.qualified_field(i))).alias(group_name(i))
            })
            .collect();
        exprs.extend((0..self.states.len()).map(|j| column(state_name(j))));
        Ok(LogicalPlan::Projection(Projection::try_new(
            exprs,
            Arc::new(LogicalPlan::Aggregate(aggregate)),
        )?))
    }

    /// The distinct `(__g*, __x)` pairs of `rows` for `count(DISTINCT x)` number `k`, each
    /// with the number of rows it stands for (`__n`).
    pub fn distinct_pairs(&self, k: usize, rows: Arc<dyn TableProvider>) -> Result<LogicalPlan> {
        let mut keys: Vec<Expr> = self
            .aggregate
            .group_expr
            .iter()
            .enumerate()
            .map(|(i, e)| e.clone().unalias().alias(group_name(i)))
            .collect();
        keys.push(self.distinct[k].clone().unalias().alias("__x"));
        Ok(LogicalPlan::Aggregate(Aggregate::try_new(
            Arc::new(self.input(rows)?),
            keys,
            vec![count(lit(1)).alias("__n")],
        )?))
    }

    /// Merges state rows (`__g*, __s*`, several rows per group) into one row per group.
    pub fn merge(&self, state: Arc<dyn TableProvider>, schema: &Schema) -> Result<LogicalPlan> {
        let keys: Vec<Expr> = (0..self.groups()).map(|i| column(group_name(i))).collect();
        let merged = self
            .states
            .iter()
            .enumerate()
            .map(|(j, (_, merge))| {
                let input = column(state_name(j));
                let merged = match merge {
                    Merge::Sum => sum(input),
                    Merge::Min => min(input),
                    Merge::Max => max(input),
                };
                let ty = schema.field_with_name(&state_name(j))?.data_type().clone();
                Ok(cast(merged, ty).alias(state_name(j)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(
            LogicalPlanBuilder::scan("__state", provider_as_source(state), None)?
                .aggregate(keys, merged)?
                .build()?,
        )
    }

    /// The query's result from finished state (`__g*, __s*, __d*`, one row per group): the
    /// query as written, with its aggregate replaced by the state's columns.
    pub fn finish(&self, state: Arc<dyn TableProvider>) -> Result<LogicalPlan> {
        let schema = &self.aggregate.schema;
        let state_schema = state.schema();
        // A sum with no value left (all retracted, or all NULL) is NULL.
        let guarded = |j: usize| -> Result<Expr> {
            let value = column(state_name(j));
            Ok(match self.guards[j] {
                None => value,
                Some(g) => {
                    let ty = state_schema.field_with_name(&state_name(j))?.data_type();
                    when(
                        column(state_name(g)).eq(lit(0i64)),
                        lit(ScalarValue::try_from(ty)?),
                    )
                    .otherwise(value)?
                }
            })
        };
        let groups = self.groups();
        let mut exprs: Vec<Expr> = (0..groups).map(|i| column(group_name(i))).collect();
        for output in &self.outputs {
            exprs.push(match output {
                Output::State(j) => guarded(*j)?,
                Output::Avg { sum, count } => {
                    cast(guarded(*sum)?, DataType::Float64)
                        / cast(column(state_name(*count)), DataType::Float64)
                }
                Output::Distinct(k) => column(distinct_name(*k)),
            });
        }
        let exprs = exprs
            .into_iter()
            .enumerate()
            .map(|(i, expr)| {
                let (qualifier, field) = schema.qualified_field(i);
                cast(expr, field.data_type().clone())
                    .alias_qualified(qualifier.cloned(), field.name())
            })
            .collect();
        let scan = LogicalPlanBuilder::scan("__state", provider_as_source(state), None)?.build()?;
        let groups = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(scan))?);
        rebuild(&self.query, &|node| {
            matches!(node, LogicalPlan::Aggregate(_)).then(|| groups.clone())
        })
    }
}
