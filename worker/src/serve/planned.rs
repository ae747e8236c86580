//! Plans made for `GetFlightInfo`, kept for the `DoGet` that follows.
//!
//! A Flight SQL client runs a statement in two calls: `GetFlightInfo` (the service plans
//! it to answer the result's schema and a ticket) and `DoGet` on that ticket (the rows).
//! Planning opens every table the statement names at its latest version, reading its log,
//! so planning in both calls doubled the cost of a small query. The plan made for the
//! schema is kept here under the ticket's query id and its caller, and `DoGet` takes it —
//! once: a second `DoGet` on the same ticket, a ticket of another process (the worker
//! restarted), or one that comes after the plan was dropped plans again, exactly as before.
//!
//! Invariants: a plan is only ever taken by the caller it was made for (another principal
//! with the same ticket plans for itself, under its own grants); at most [`KEPT`] plans are
//! held, none older than [`MAX_AGE`] (a client that never fetches costs bounded memory: a
//! plan holds the logical plan and the table snapshots it read, not rows). The rows then
//! come from the table versions planning saw — the versions the schema answered was for.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use datafusion::prelude::DataFrame;

/// Plans held at most.
pub const KEPT: usize = 64;

/// How long a plan waits for its `DoGet`.
pub const MAX_AGE: Duration = Duration::from_secs(30);

struct Kept {
    query_id: String,
    caller: String,
    plan: DataFrame,
    at: Duration,
}

/// The plans waiting for their `DoGet` (cheap to clone: shared). Times are given by the
/// caller as durations on one monotonic clock (the service's: time since it started), so
/// the rules here are tested with times chosen, not read.
#[derive(Clone, Default)]
pub struct PlannedQueries(Arc<Mutex<VecDeque<Kept>>>);

impl PlannedQueries {
    /// Keeps `plan`, made at `now` for `caller`'s query `query_id`.
    pub fn keep(&self, query_id: &str, caller: &str, plan: DataFrame, now: Duration) {
        let mut kept = self.lock();
        kept.retain(|k| now.saturating_sub(k.at) < MAX_AGE);
        while kept.len() >= KEPT {
            kept.pop_front();
        }
        kept.push_back(Kept {
            query_id: query_id.to_string(),
            caller: caller.to_string(),
            plan,
            at: now,
        });
    }

    /// The plan kept for `caller`'s query `query_id`, if it is there and younger than
    /// [`MAX_AGE`] at `now`; it is gone afterwards.
    pub fn take(&self, query_id: &str, caller: &str, now: Duration) -> Option<DataFrame> {
        let mut kept = self.lock();
        let at = kept
            .iter()
            .position(|k| k.query_id == query_id && k.caller == caller)?;
        let found = kept.remove(at)?;
        (now.saturating_sub(found.at) < MAX_AGE).then_some(found.plan)
    }

    /// Plans held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Kept>> {
        // A queue of independent entries: nothing a panicking holder could leave half done.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn plan(sql: &str) -> DataFrame {
        datafusion::prelude::SessionContext::new()
            .sql(sql)
            .await
            .expect("plans")
    }

    /// The times the tests use: chosen, never read from a clock.
    fn origin() -> Duration {
        Duration::from_secs(1_000)
    }

    #[tokio::test]
    async fn a_plan_is_taken_once_and_by_its_caller_only() {
        let planned = PlannedQueries::default();
        let t0 = origin();
        planned.keep("q1", "alice", plan("SELECT 1 AS one").await, t0);
        assert!(
            planned.take("q1", "mallory", t0).is_none(),
            "another caller"
        );
        assert!(planned.take("q2", "alice", t0).is_none(), "another query");
        let taken = planned
            .take("q1", "alice", t0)
            .expect("its caller takes it");
        assert_eq!(taken.schema().field(0).name(), "one");
        assert!(planned.take("q1", "alice", t0).is_none(), "taken once");
        assert!(planned.is_empty());
    }

    #[tokio::test]
    async fn old_plans_are_not_taken_and_the_number_kept_is_bounded() {
        let planned = PlannedQueries::default();
        let t0 = origin();
        planned.keep("old", "alice", plan("SELECT 1").await, t0);
        assert!(
            planned.take("old", "alice", t0 + MAX_AGE).is_none(),
            "a plan as old as MAX_AGE is dropped"
        );
        let one = plan("SELECT 1").await;
        for n in 0..KEPT + 10 {
            planned.keep(&format!("q{n}"), "alice", one.clone(), t0);
        }
        assert_eq!(planned.len(), KEPT);
        assert!(
            planned.take("q0", "alice", t0).is_none(),
            "the oldest went first"
        );
        assert!(
            planned
                .take(&format!("q{}", KEPT + 9), "alice", t0)
                .is_some()
        );
        // Keeping a plan later drops every one past its age.
        planned.keep("late", "alice", one, t0 + MAX_AGE);
        assert_eq!(planned.len(), 1);
    }
}
