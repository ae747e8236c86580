//! Gold refreshes: the gold query's result at an upstream version, maintained incrementally
//! where the query allows it (docs/architecture.md, "Data path").
//!
//! An incremental refresh reads only the data files the upstream versions since the last
//! refresh added, folds their partial aggregates into per-group state kept in memory
//! ([`state`]), and finishes the query from that state ([`plan`]). Its cost follows the new
//! rows and the number of groups, not the upstream table's size. Compaction adds nothing
//! and changes nothing.
//!
//! A merge or a delete on an upstream with the change data feed is followed through its
//! change data ([`changes::Range::change_files`]): inserted rows and post-images are folded
//! in, deleted rows and pre-images are retracted — their partials subtracted from the sums
//! and counts (exactly: integers and decimals), their `count(DISTINCT ..)` values taken out
//! of per-value row counts, and a group whose rows are all gone dropped. Two retractions
//! cannot be subtracted: one that takes out a group's `min`/`max` (the next one is not
//! kept), and a non-zero float sum (subtracting floats does not give back the sum of the
//! rest). Either rebuilds the state from the upstream snapshot, and the worker says why.
//!
//! The state is built from the whole upstream snapshot when the task starts, and again
//! whenever the upstream changes in a way its commits do not spell out (a restore, a
//! metadata change, a rewrite without change data: [`changes::Range::opaque`]). Queries
//! that cannot be split are recomputed in full on every refresh, as before. Either way the
//! result is the query's result over exactly one upstream version, so the aggregate task's
//! txn (invariant 2) keeps its meaning.
//!
//! The plans a fold runs (partial aggregate, distinct pairs, state merge) are planned once,
//! when the state is built, over [`slot`]s that hand them the rows of each fold.

pub mod plan;
#[cfg(test)]
mod properties;
pub mod slot;
pub mod state;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, new_null_array};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;

use self::plan::{GoldPlan, Merge};
use self::slot::{Prepared, Slot};
use self::state::GroupState;
use crate::Result;
use crate::serve::query::QueryEngine;
use smelter_lake::change_data;
use smelter_lake::changes::{self, DataFile};
use smelter_lake::log;
use smelter_lake::recent_files::RecentFiles;

/// Upstream rows folded into the state at a time.
const FOLD_ROWS: usize = 256 * 1024;

/// Most values a task keeps in its `count(DISTINCT ..)` sets (about 50 bytes each) before
/// it falls back to recomputing the query in full: the sets grow with the history of the
/// upstream, and a worker's memory must not.
pub const MAX_DISTINCT_VALUES: usize = 4_000_000;

/// The plans a fold runs, planned once over two slots: the new upstream rows, and the
/// state rows to merge.
struct FoldPlans {
    rows: Arc<Slot>,
    partial: Prepared,
    distinct_pairs: Vec<Prepared>,
    state: Arc<Slot>,
    merge: Prepared,
}

impl FoldPlans {
    async fn new(plan: &GoldPlan, ctx: &SessionContext) -> Result<Self> {
        let rows = Slot::new(plan.input_schema().clone());
        let partial = Prepared::new(ctx, plan.partial(rows.table()?)?).await?;
        let mut distinct_pairs = Vec::new();
        for k in 0..plan.distinct_sets() {
            distinct_pairs.push(Prepared::new(ctx, plan.distinct_pairs(k, rows.table()?)?).await?);
        }
        let state_schema = GroupState::schema_of(&partial.schema());
        let state = Slot::new(state_schema.clone());
        let merge = Prepared::new(ctx, plan.merge(state.table()?, &state_schema)?).await?;
        Ok(Self {
            rows,
            partial,
            distinct_pairs,
            state,
            merge,
        })
    }
}

/// A gold query's result kept current from its upstream table's new files.
pub struct IncrementalGold {
    plan: GoldPlan,
    fold: FoldPlans,
    state: GroupState,
    ctx: SessionContext,
    upstream: String,
    columns: HashSet<String>,
    /// The upstream version the state reflects.
    version: i64,
    recent: RecentFiles,
    /// Upstream rows the last fold read (a build's: the whole snapshot).
    last_folded: u64,
}

impl IncrementalGold {
    /// The state of `sql` over `upstream` as loaded, or why the query cannot be maintained
    /// incrementally.
    pub async fn build(
        engine: &QueryEngine,
        sql: &str,
        name: &str,
        upstream: &DeltaTable,
        recent: &RecentFiles,
    ) -> Result<std::result::Result<Self, String>> {
        let version = log::version(upstream);
        let frame = engine.plan(sql, Some((name, version.max(0)))).await?;
        let plan = match GoldPlan::analyze(frame.logical_plan(), name) {
            Ok(plan) => plan,
            Err(reason) => return Ok(Err(reason)),
        };
        let ctx = engine.serial_session().await?;
        let fold = FoldPlans::new(&plan, &ctx).await?;
        let state = GroupState::new(&fold.partial.schema(), plan.groups(), plan.distinct_sets())?;
        let mut gold = Self {
            columns: plan
                .input_schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            plan,
            fold,
            state,
            ctx,
            upstream: name.to_string(),
            version,
            recent: recent.clone(),
            last_folded: 0,
        };
        let files = if version < 0 {
            Vec::new()
        } else {
            changes::snapshot(upstream, name)?
        };
        let started = std::time::Instant::now();
        gold.fold(upstream, files).await?;
        tracing::info!(upstream = %name, version, groups = gold.state.len(), distinct_values = gold.state.distinct_values(), elapsed_ms = started.elapsed().as_millis() as u64, "gold state built");
        Ok(Ok(gold))
    }

    /// The upstream version the state reflects.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Folds in what `upstream`'s versions after the state's, up to `latest`, added, and
    /// takes out what their change data says they removed (read from their commit entries:
    /// `upstream`'s loaded snapshot does not matter). `false` when the state no longer
    /// applies and must be built again (see the module docs).
    pub async fn advance(&mut self, upstream: &DeltaTable, latest: i64) -> Result<bool> {
        if latest <= self.version {
            return Ok(true);
        }
        let range = changes::range(upstream, &self.upstream, self.version + 1, latest).await?;
        if range.opaque {
            return Ok(false);
        }
        // Everything that came in first, then everything that went: a row retracted in
        // this range is then always in the state it is retracted from.
        self.fold(upstream, range.added).await?;
        let (added, removed) = self.read_changes(upstream, &range.change_files).await?;
        if !added.is_empty() {
            self.fold_rows(added).await?;
        }
        if !removed.is_empty()
            && let Err(reason) = self.retract(removed).await?
        {
            tracing::info!(upstream = %self.upstream, version = latest, %reason, "retraction cannot be subtracted; rebuilding gold state");
            return Ok(false);
        }
        self.version = latest;
        Ok(true)
    }

    /// The rows of change data files, split into those that came in (inserts and
    /// post-images) and those that went (deletes and pre-images), shaped as the input.
    async fn read_changes(
        &mut self,
        upstream: &DeltaTable,
        files: &[DataFile],
    ) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
        let schema = self.plan.input_schema().clone();
        let mut columns = self.columns.clone();
        columns.insert(change_data::CHANGE_TYPE.to_string());
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for file in files {
            for batch in
                changes::read(upstream, &self.upstream, file, Some(&columns), &self.recent).await?
            {
                self.last_folded += batch.num_rows() as u64;
                let kinds = batch
                    .column_by_name(change_data::CHANGE_TYPE)
                    .and_then(|c| c.as_string_opt::<i32>())
                    .ok_or_else(|| {
                        smelter_lake::LakeError::generic(
                            &self.upstream,
                            format!(
                                "change data file {} has no {}",
                                file.path,
                                change_data::CHANGE_TYPE
                            ),
                        )
                    })?;
                let gone: BooleanArray = kinds
                    .iter()
                    .map(|k| Some(matches!(k, Some("delete") | Some("update_preimage"))))
                    .collect();
                let came = arrow::compute::not(&gone)?;
                for (mask, out) in [(&came, &mut added), (&gone, &mut removed)] {
                    let rows = arrow::compute::filter_record_batch(&batch, mask)?;
                    if rows.num_rows() > 0 {
                        out.push(changes::conform(&rows, file, &schema)?);
                    }
                }
            }
        }
        Ok((added, removed))
    }

    /// Takes `rows` (rows the state holds) out of the state, or says why it cannot.
    async fn retract(
        &mut self,
        rows: Vec<RecordBatch>,
    ) -> Result<std::result::Result<(), &'static str>> {
        let plans = &self.fold;
        plans.rows.fill(rows);
        let partial = plans.partial.run(&self.ctx).await;
        let mut pairs = Vec::with_capacity(plans.distinct_pairs.len());
        for distinct_pairs in &plans.distinct_pairs {
            pairs.push(distinct_pairs.run(&self.ctx).await);
        }
        plans.rows.fill(Vec::new());
        let partial = partial?;
        let index = self.state.index()?;
        let merges = self.plan.merges();
        let groups = self.plan.groups();
        let mut negated = Vec::with_capacity(partial.len());
        for batch in &partial {
            let keys = self.state.keys_of(batch)?;
            let mut columns = batch.columns().to_vec();
            for (j, merge) in merges.iter().enumerate() {
                let c = groups + j;
                let values = batch.column(c);
                columns[c] = match merge {
                    Merge::Sum => match subtractable(values) {
                        Some(negated) => negated?,
                        None => return Ok(Err("a retraction changes a float sum")),
                    },
                    Merge::Min | Merge::Max => {
                        for (row, key) in keys.iter().enumerate() {
                            if values.is_null(row) {
                                continue;
                            }
                            let Some((b, r)) = index.get(key) else {
                                return Ok(Err("a retracted row's group is not in the state"));
                            };
                            let held =
                                ScalarValue::try_from_array(self.state.rows()[*b].column(c), *r)?;
                            let gone = ScalarValue::try_from_array(values, row)?;
                            let extreme = match (merge, gone.partial_cmp(&held)) {
                                (Merge::Min, Some(order)) => order.is_le(),
                                (Merge::Max, Some(order)) => order.is_ge(),
                                _ => true,
                            };
                            if extreme {
                                return Ok(Err("a retraction takes out a group's min or max"));
                            }
                        }
                        // What stays is what the state holds: the merge ignores NULL.
                        new_null_array(values.data_type(), batch.num_rows())
                    }
                };
            }
            negated.push(RecordBatch::try_new(batch.schema(), columns)?);
        }
        self.state.extend(negated)?;
        for (k, pairs) in pairs.into_iter().enumerate() {
            self.state.add_distinct(k, &pairs?, -1)?;
        }
        let plans = &self.fold;
        plans.state.fill(self.state.rows().to_vec());
        let merged = plans.merge.run(&self.ctx).await;
        plans.state.fill(Vec::new());
        self.state.replace(merged?)?;
        self.state.drop_empty(self.plan.rows_state())?;
        Ok(Ok(()))
    }

    /// The query's result at [`Self::version`].
    pub async fn result(&self) -> Result<Vec<RecordBatch>> {
        let (schema, rows) = self.state.finished()?;
        let table = Arc::new(MemTable::try_new(schema, vec![rows])?);
        self.collect(self.plan.finish(table)?).await
    }

    async fn collect(&self, plan: LogicalPlan) -> Result<Vec<RecordBatch>> {
        Ok(self.ctx.execute_logical_plan(plan).await?.collect().await?)
    }

    async fn fold(&mut self, upstream: &DeltaTable, files: Vec<DataFile>) -> Result<()> {
        let schema = self.plan.input_schema().clone();
        let mut batches = Vec::new();
        let mut rows = 0;
        self.last_folded = 0;
        for file in &files {
            for batch in changes::read(
                upstream,
                &self.upstream,
                file,
                Some(&self.columns),
                &self.recent,
            )
            .await?
            {
                rows += batch.num_rows();
                self.last_folded += batch.num_rows() as u64;
                batches.push(changes::conform(&batch, file, &schema)?);
            }
            if rows >= FOLD_ROWS {
                self.fold_rows(std::mem::take(&mut batches)).await?;
                rows = 0;
            }
        }
        // A query without GROUP BY has its one group even over no rows.
        if !batches.is_empty() || self.state.is_empty() {
            self.fold_rows(batches).await?;
        }
        Ok(())
    }

    async fn fold_rows(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        let plans = &self.fold;
        plans.rows.fill(batches);
        let partial = plans.partial.run(&self.ctx).await?;
        let merge = !self.state.is_empty();
        self.state.extend(partial)?;
        for (k, distinct_pairs) in plans.distinct_pairs.iter().enumerate() {
            let pairs = distinct_pairs.run(&self.ctx).await?;
            self.state.add_distinct(k, &pairs, 1)?;
        }
        plans.rows.fill(Vec::new());
        if merge {
            plans.state.fill(self.state.rows().to_vec());
            let merged = plans.merge.run(&self.ctx).await;
            plans.state.fill(Vec::new());
            self.state.replace(merged?)?;
        }
        Ok(())
    }
}

/// `values` (partial sums of retracted rows) negated, so that merging them subtracts;
/// `None` when subtracting them would not be exact (a float or unsigned sum that is not
/// zero).
fn subtractable(values: &ArrayRef) -> Option<Result<ArrayRef>> {
    let signed = matches!(
        values.data_type(),
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Decimal32(_, _)
            | DataType::Decimal64(_, _)
            | DataType::Decimal128(_, _)
            | DataType::Decimal256(_, _)
    );
    if signed {
        return Some(arrow::compute::kernels::numeric::neg(values).map_err(Into::into));
    }
    let zero = ScalarValue::new_zero(values.data_type()).ok();
    let all_zero = (0..values.len())
        .all(|i| values.is_null(i) || ScalarValue::try_from_array(values, i).ok() == zero);
    // Zeros subtract as nothing: they may stay as they are.
    all_zero.then(|| Ok(values.clone()))
}

/// What one refresh did, for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RefreshKind {
    /// No refresh yet.
    #[default]
    None,
    /// The new upstream rows were folded into the state: this many.
    Folded {
        /// Upstream rows read.
        rows: u64,
    },
    /// The state was built from the whole upstream snapshot: this many rows.
    Built {
        /// Upstream rows read.
        rows: u64,
    },
    /// The query was recomputed over the whole upstream.
    Recomputed,
}

/// The `commitInfo` key under which a gold commit records how its refresh was computed:
/// `{"how": "folded" | "built" | "recomputed", "upstreamRows": n}` (rows read from the
/// upstream; none for a recomputation).
pub const REFRESH_KEY: &str = "smelter.goldRefresh";

impl RefreshKind {
    /// What [`REFRESH_KEY`] records for it.
    pub fn record(self) -> serde_json::Value {
        match self {
            RefreshKind::None => serde_json::json!({ "how": "none" }),
            RefreshKind::Folded { rows } => {
                serde_json::json!({ "how": "folded", "upstreamRows": rows })
            }
            RefreshKind::Built { rows } => {
                serde_json::json!({ "how": "built", "upstreamRows": rows })
            }
            RefreshKind::Recomputed => serde_json::json!({ "how": "recomputed" }),
        }
    }
}

/// How a gold task computes its query.
enum Strategy {
    /// Not decided yet, or the state must be built again.
    Build,
    Incremental(Box<IncrementalGold>),
    /// The query cannot be split: recomputed over the whole upstream each time.
    Full,
}

/// Computes a gold query's result at the upstream's loaded version, incrementally when the
/// query allows it.
pub struct Refresher {
    engine: QueryEngine,
    sql: String,
    upstream: String,
    strategy: Strategy,
    max_distinct_values: usize,
    recent: RecentFiles,
    last: RefreshKind,
    /// The other tables the query joins, each at the version this refresh reads.
    joined: Vec<(String, i64)>,
}

impl Refresher {
    /// A refresher for `sql` over the table named `upstream`.
    pub fn new(engine: QueryEngine, sql: &str, upstream: &str) -> Self {
        Self {
            engine,
            sql: sql.to_string(),
            upstream: upstream.to_string(),
            strategy: Strategy::Build,
            max_distinct_values: MAX_DISTINCT_VALUES,
            recent: RecentFiles::default(),
            last: RefreshKind::None,
            joined: Vec::new(),
        }
    }

    /// The versions of the joined tables the next refresh reads. A query that joins other
    /// tables is recomputed in full: its state would have to follow every one of them.
    pub fn join_at(&mut self, joined: Vec<(String, i64)>) {
        if !joined.is_empty() && !matches!(self.strategy, Strategy::Full) {
            let tables: Vec<&str> = joined.iter().map(|(t, _)| t.as_str()).collect();
            tracing::info!(upstream = %self.upstream, joins = ?tables, "gold query joins other tables; recomputed in full on every refresh");
            self.strategy = Strategy::Full;
        }
        self.joined = joined;
    }

    /// What the last refresh did.
    pub fn last_refresh(&self) -> RefreshKind {
        self.last
    }

    /// The same reading the upstream's files from `recent` when they are there.
    pub fn with_recent_files(mut self, recent: RecentFiles) -> Self {
        self.recent = recent;
        self
    }

    /// The same with another bound on the values kept for `count(DISTINCT ..)`.
    pub fn with_max_distinct_values(mut self, values: usize) -> Self {
        self.max_distinct_values = values;
        self
    }

    /// Gives up the state when its distinct sets outgrow the bound: from then on the query
    /// is recomputed in full.
    fn bounded(&mut self, gold: Box<IncrementalGold>) -> Option<Box<IncrementalGold>> {
        let values = gold.state.distinct_values();
        if values <= self.max_distinct_values {
            return Some(gold);
        }
        tracing::warn!(upstream = %self.upstream, values, limit = self.max_distinct_values, "count(DISTINCT) state too large; gold query recomputed in full from now on");
        self.strategy = Strategy::Full;
        None
    }

    /// Whether refreshes fold new rows into state (after the first refresh).
    pub fn incremental(&self) -> bool {
        matches!(self.strategy, Strategy::Incremental(_))
    }

    /// The query's result over `upstream` at `version`. `upstream`'s snapshot is brought
    /// to that version only when the whole table must be read (building the state, or a
    /// query recomputed in full); an incremental refresh reads the new commit entries alone.
    pub async fn refresh(
        &mut self,
        upstream: &mut DeltaTable,
        version: i64,
    ) -> Result<Vec<RecordBatch>> {
        // The state is taken out while it advances: if folding fails halfway, it is built
        // again rather than folded twice.
        match std::mem::replace(&mut self.strategy, Strategy::Build) {
            Strategy::Incremental(mut gold) => {
                let advanced_from = gold.version();
                if gold.advance(upstream, version).await? {
                    self.last = RefreshKind::Folded {
                        rows: if version > advanced_from {
                            gold.last_folded
                        } else {
                            0
                        },
                    };
                    if let Some(gold) = self.bounded(gold) {
                        let result = gold.result().await?;
                        self.strategy = Strategy::Incremental(gold);
                        return Ok(result);
                    }
                } else {
                    tracing::info!(upstream = %self.upstream, from = gold.version(), "upstream rewritten; rebuilding gold state");
                }
            }
            other => self.strategy = other,
        }
        if let Strategy::Build = self.strategy {
            if log::version(upstream) != version {
                upstream
                    .load_version(version.max(0) as u64)
                    .await
                    .map_err(|e| crate::WorkerError::delta(&self.upstream, e))?;
            }
            match IncrementalGold::build(
                &self.engine,
                &self.sql,
                &self.upstream,
                upstream,
                &self.recent,
            )
            .await?
            {
                Ok(gold) => {
                    self.last = RefreshKind::Built {
                        rows: gold.last_folded,
                    };
                    if let Some(gold) = self.bounded(Box::new(gold)) {
                        let result = gold.result().await?;
                        self.strategy = Strategy::Incremental(gold);
                        return Ok(result);
                    }
                }
                Err(reason) => {
                    tracing::info!(upstream = %self.upstream, %reason, "gold query recomputed in full on every refresh");
                    self.strategy = Strategy::Full;
                }
            }
        }
        let mut pinned = vec![(self.upstream.as_str(), version)];
        pinned.extend(self.joined.iter().map(|(t, v)| (t.as_str(), *v)));
        let frame = self.engine.plan_at(&self.sql, &pinned).await?;
        self.last = RefreshKind::Recomputed;
        Ok(frame.collect().await?)
    }
}
