//! Task placement: sticky and balanced, with minimal movement, and the hand-offs a new
//! placement starts.
//!
//! 1. Tasks whose owner is still alive stay where they are.
//! 2. Orphaned and new tasks go to a worker with the fewest tasks of their kind; among
//!    those, to the one holding most of their neighbours (the tasks writing a table they
//!    read, or reading the table they write: [`Task::reads`], [`Task::writes`]), then to
//!    the one with the fewest tasks overall. So a refine task lands where the ingest tasks
//!    of its bronze table are — its reads find the rows in that worker's memory instead of
//!    fetching them over the exchange or from storage — but never at the price of one
//!    kind's balance.
//! 3. While the most and least loaded workers of a kind differ by more than one task, one
//!    task moves from the former to the latter (so a joining worker takes over just
//!    enough): the one with the fewest neighbours where it is.
//! 4. A task leaving a live worker that was told about it is handed off: it reaches its
//!    new owner only once the old one has drained it ([`Release`]).
//!
//! Kinds are placed in pipeline order (ingest, refine, aggregate, maintain), so a task's
//! upstream neighbours are placed before it; a neighbour placed later (an ingest task of a
//! Kafka partition discovered after the refine task was placed) counts where it is
//! already owned, so the affinity works both ways.
//!
//! Pure functions over ids, tested without a store; the actor applies the [`Plan`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

/// A task on its way from one live worker to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The worker draining it.
    pub from: String,
    /// When the hand-off began.
    pub since: Instant,
}

/// A task to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Its id.
    pub id: String,
    /// Its kind's place in the pipeline (ingest before refine before aggregate): each kind
    /// is balanced on its own, upstream kinds first.
    pub stage: i32,
    /// The tables it writes (qualified by pipeline).
    pub writes: Vec<String>,
    /// The tables it reads (qualified by pipeline).
    pub reads: Vec<String>,
}

impl Task {
    /// Whether `self` and `other` exchange rows: one writes a table the other reads.
    fn neighbours(&self, other: &Task) -> bool {
        self.reads.iter().any(|t| other.writes.contains(t))
            || self.writes.iter().any(|t| other.reads.contains(t))
    }
}

/// What placement starts from.
pub struct Current<'a> {
    /// Every task, in a stable order.
    pub tasks: &'a [Task],
    /// The owner of each placed task.
    pub owners: &'a BTreeMap<String, String>,
    /// The live workers, each with the tasks of the last assignment it was sent.
    pub workers: &'a BTreeMap<String, BTreeSet<String>>,
    /// Hand-offs under way.
    pub releasing: &'a BTreeMap<String, Release>,
}

/// A new placement.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The owner of each task.
    pub owners: BTreeMap<String, String>,
    /// The hand-offs under way afterwards: the ones still needed, and the new ones.
    pub releasing: BTreeMap<String, Release>,
    /// How many tasks changed owner.
    pub moved: usize,
}

/// The placement for `current`, or `None` when every task stays where it is.
pub fn plan(current: &Current<'_>, now: Instant) -> Option<Plan> {
    let alive: BTreeSet<String> = current.workers.keys().cloned().collect();
    let owners = assign(current.tasks, current.owners, &alive);
    if &owners == current.owners {
        return None;
    }
    let moved = current
        .tasks
        .iter()
        .filter(|t| current.owners.get(&t.id) != owners.get(&t.id))
        .count();
    let mut releasing = current.releasing.clone();
    for (task, new_owner) in &owners {
        match current.owners.get(task) {
            Some(old)
                if old != new_owner
                    && current
                        .workers
                        .get(old)
                        .is_some_and(|delivered| delivered.contains(task)) =>
            {
                releasing.entry(task.clone()).or_insert(Release {
                    from: old.clone(),
                    since: now,
                });
            }
            _ => {}
        }
        // Moving back to the worker that was draining it ends the hand-off.
        if releasing.get(task).is_some_and(|r| &r.from == new_owner) {
            releasing.remove(task);
        }
    }
    releasing.retain(|task, _| owners.contains_key(task));
    Some(Plan {
        owners,
        releasing,
        moved,
    })
}

/// Computes new owners for `tasks` (in a stable order) given the current `owners` and the
/// live `workers`. Each kind is balanced on its own, so ingest partitions spread over
/// workers instead of piling up where gold tasks are few; within that, a task goes where
/// its neighbours are, then where there is less work overall (see the module's docs).
/// Returns task id -> worker id; empty if there are no workers.
pub fn assign(
    tasks: &[Task],
    owners: &BTreeMap<String, String>,
    workers: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let mut result: BTreeMap<String, String> = BTreeMap::new();
    if workers.is_empty() {
        return result;
    }
    let stages: BTreeSet<i32> = tasks.iter().map(|t| t.stage).collect();
    let mut total: BTreeMap<&str, usize> = workers.iter().map(|w| (w.as_str(), 0)).collect();
    for stage in stages {
        let members: Vec<&Task> = tasks.iter().filter(|t| t.stage == stage).collect();
        // Where each task's neighbours of other kinds are: placed in this call, or (kinds
        // not placed yet) owned by a live worker now.
        let near = |task: &Task, worker: &str| {
            tasks
                .iter()
                .filter(|other| other.stage != stage && task.neighbours(other))
                .filter(|other| {
                    let owner = result
                        .get(&other.id)
                        .or_else(|| owners.get(&other.id).filter(|_| other.stage > stage));
                    owner.is_some_and(|w| w == worker && workers.contains(w))
                })
                .count()
        };
        let placed = balance(&members, owners, workers, &total, &near);
        for (task, worker) in placed {
            *total.entry(worker).or_default() += 1;
            result.insert(task.to_string(), worker.to_string());
        }
    }
    result
}

/// A candidate move, ordered by preference: the neighbours it gains, less work overall on
/// the receiving worker, then worker names and the task's index (the last placed first).
type Move<'w> = (
    i64,
    Reverse<usize>,
    Reverse<&'w str>,
    Reverse<&'w str>,
    usize,
);

/// Sticky, balanced placement of one kind; `near(task, worker)` counts the task's
/// neighbours on the worker.
fn balance<'a>(
    tasks: &[&'a Task],
    owners: &'a BTreeMap<String, String>,
    workers: &'a BTreeSet<String>,
    total: &BTreeMap<&str, usize>,
    near: &dyn Fn(&Task, &str) -> usize,
) -> Vec<(&'a str, &'a str)> {
    let mut load: BTreeMap<&str, Vec<&'a Task>> =
        workers.iter().map(|w| (w.as_str(), Vec::new())).collect();
    let mut orphans = Vec::new();
    for &task in tasks {
        match owners.get(&task.id).filter(|w| workers.contains(*w)) {
            Some(owner) => load.entry(owner.as_str()).or_default().push(task),
            None => orphans.push(task),
        }
    }
    let count = |load: &BTreeMap<&str, Vec<&Task>>, w: &str| load.get(w).map_or(0, Vec::len);
    let total_of = |w: &str| total.get(w).copied().unwrap_or(0);
    for task in orphans {
        let best = load
            .keys()
            .copied()
            .min_by_key(|w| (count(&load, w), Reverse(near(task, w)), total_of(w), *w));
        if let Some(worker) = best {
            load.entry(worker).or_default().push(task);
        }
    }
    loop {
        let high = load.values().map(Vec::len).max().unwrap_or(0);
        let low = load.values().map(Vec::len).min().unwrap_or(0);
        if high <= low + 1 {
            break;
        }
        // One task from a worker with the most of this kind to one with the fewest: the
        // move that keeps most neighbours together (the one leaving fewest behind, going
        // where most are), then towards less work overall; among equals the last placed.
        let mut best: Option<Move> = None;
        for (&from, here) in load.iter().filter(|(_, t)| t.len() == high) {
            for &to in load.keys().filter(|w| count(&load, w) == low) {
                for (i, task) in here.iter().enumerate() {
                    let gain = near(task, to) as i64 - near(task, from) as i64;
                    let key = (gain, Reverse(total_of(to)), Reverse(to), Reverse(from), i);
                    if best.is_none_or(|b| key > b) {
                        best = Some(key);
                    }
                }
            }
        }
        let Some((_, _, Reverse(to), Reverse(from), index)) = best else {
            break;
        };
        let task = load.get_mut(from).map(|here| here.remove(index));
        if let Some(task) = task {
            load.entry(to).or_default().push(task);
        }
    }
    load.into_iter()
        .flat_map(|(worker, tasks)| tasks.into_iter().map(move |t| (t.id.as_str(), worker)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn told(pairs: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        pairs
            .iter()
            .map(|(w, tasks)| (w.to_string(), tasks.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    /// A joining worker's share is handed off from the workers that were told about it;
    /// a task nobody was told about moves at once.
    #[test]
    fn moves_from_live_workers_are_handed_off() {
        let tasks = ids(4);
        let owners = assign(&tasks, &BTreeMap::new(), &set(&["a"]));
        let workers = told(&[("a", &["t00", "t01", "t02"]), ("b", &[])]);
        let now = Instant::now();
        let plan = plan(
            &Current {
                tasks: &tasks,
                owners: &owners,
                workers: &workers,
                releasing: &BTreeMap::new(),
            },
            now,
        )
        .expect("b takes its share");
        assert_eq!(plan.moved, 2);
        let moved: Vec<&String> = plan
            .owners
            .iter()
            .filter(|(_, w)| *w == "b")
            .map(|(t, _)| t)
            .collect();
        for task in moved {
            match task.as_str() {
                "t03" => assert!(!plan.releasing.contains_key(task), "a never ran t03"),
                _ => assert_eq!(plan.releasing[task].from, "a"),
            }
        }
        // Nothing changes: no plan.
        let again = Current {
            tasks: &tasks,
            owners: &plan.owners,
            workers: &workers,
            releasing: &plan.releasing,
        };
        assert!(super::plan(&again, now).is_none());
    }

    /// When the new owner dies mid-hand-off, the task goes back to the worker draining it
    /// and the hand-off ends; a dead worker's tasks move without one.
    #[test]
    fn a_task_returning_to_its_drainer_ends_the_hand_off() {
        let tasks = ids(2);
        let owners: BTreeMap<String, String> = [("t00", "a"), ("t01", "b")]
            .iter()
            .map(|(t, w)| (t.to_string(), w.to_string()))
            .collect();
        let releasing: BTreeMap<String, Release> = [(
            "t01".to_string(),
            Release {
                from: "a".into(),
                since: Instant::now(),
            },
        )]
        .into();
        let workers = told(&[("a", &["t00", "t01"])]);
        let plan = plan(
            &Current {
                tasks: &tasks,
                owners: &owners,
                workers: &workers,
                releasing: &releasing,
            },
            Instant::now(),
        )
        .expect("b is gone");
        assert_eq!(plan.owners["t01"], "a");
        assert!(plan.releasing.is_empty(), "{:?}", plan.releasing);
    }

    fn ids(n: usize) -> Vec<Task> {
        (0..n)
            .map(|i| task(&format!("t{i:02}"), 1, &[], &["bronze"]))
            .collect()
    }

    fn task(id: &str, stage: i32, reads: &[&str], writes: &[&str]) -> Task {
        let names = |t: &[&str]| t.iter().map(|s| s.to_string()).collect();
        Task {
            id: id.to_string(),
            stage,
            writes: names(writes),
            reads: names(reads),
        }
    }

    /// The demo's tasks: `ingest` partitions writing bronze, a refine task reading it and
    /// writing silver, three gold tasks reading silver.
    fn demo(ingest: usize) -> Vec<Task> {
        let mut tasks: Vec<Task> = (0..ingest)
            .map(|p| task(&format!("ingest/{p}"), 1, &[], &["bronze"]))
            .collect();
        tasks.push(task(
            "refine/silver",
            2,
            &["bronze"],
            &["silver", "quarantine"],
        ));
        tasks.extend((0..3).map(|g| {
            task(
                &format!("aggregate/{g}"),
                3,
                &["silver"],
                &[&format!("gold{g}")],
            )
        }));
        tasks
    }

    fn of_kind(result: &BTreeMap<String, String>, prefix: &str, worker: &str) -> usize {
        result
            .iter()
            .filter(|(t, w)| t.starts_with(prefix) && *w == worker)
            .count()
    }

    fn set(workers: &[&str]) -> BTreeSet<String> {
        workers.iter().map(|w| w.to_string()).collect()
    }

    fn counts(result: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for w in result.values() {
            *out.entry(w.clone()).or_default() += 1;
        }
        out
    }

    #[test]
    fn spreads_evenly() {
        let result = assign(&ids(10), &BTreeMap::new(), &set(&["a", "b", "c"]));
        assert_eq!(result.len(), 10);
        let c = counts(&result);
        assert!(c.values().all(|&n| (3..=4).contains(&n)), "{c:?}");
    }

    #[test]
    fn joining_worker_takes_only_its_share() {
        let tasks = ids(12);
        let before = assign(&tasks, &BTreeMap::new(), &set(&["a", "b"]));
        let after = assign(&tasks, &before, &set(&["a", "b", "c"]));
        let moved: Vec<&String> = tasks
            .iter()
            .map(|t| &t.id)
            .filter(|t| before[*t] != after[*t])
            .collect();
        assert_eq!(moved.len(), 4, "exactly c's share moves");
        assert!(moved.iter().all(|t| after[*t] == "c"));
    }

    #[test]
    fn dead_worker_tasks_move_and_others_stay() {
        let tasks = ids(9);
        let before = assign(&tasks, &BTreeMap::new(), &set(&["a", "b", "c"]));
        let after = assign(&tasks, &before, &set(&["a", "b"]));
        for t in tasks.iter().map(|t| &t.id) {
            if before[t] != "c" {
                assert_eq!(before[t], after[t], "{t} moved needlessly");
            }
            assert_ne!(after[t], "c");
        }
        assert!(assign(&tasks, &before, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn each_kind_is_spread_on_its_own() {
        let tasks = demo(4);
        let result = assign(&tasks, &BTreeMap::new(), &set(&["a", "b"]));
        for worker in ["a", "b"] {
            assert_eq!(of_kind(&result, "ingest", worker), 2, "{result:?}");
            assert!(
                (1..=2).contains(&of_kind(&result, "aggregate", worker)),
                "{result:?}"
            );
        }
        // Without neighbours, ties go to the worker with less work overall.
        let lone: Vec<Task> = (0..8)
            .map(|i| task(&format!("t{i}"), i % 3, &[], &[&format!("table{i}")]))
            .collect();
        let c = counts(&assign(&lone, &BTreeMap::new(), &set(&["a", "b"])));
        assert!(c.values().all(|&n| n == 4), "{c:?}");
    }

    /// With three workers, four partitions split 2/1/1: the refine task goes to the worker
    /// with two of them, and gold tasks, balanced 1/1/1, each go to a worker of their own.
    #[test]
    fn a_refine_task_goes_where_most_of_its_ingest_tasks_are() {
        let tasks = demo(4);
        let result = assign(&tasks, &BTreeMap::new(), &set(&["a", "b", "c"]));
        let refine = &result["refine/silver"];
        assert_eq!(of_kind(&result, "ingest", refine), 2, "{result:?}");
        for worker in ["a", "b", "c"] {
            assert_eq!(of_kind(&result, "aggregate", worker), 1, "{result:?}");
        }
        // Two workers: a tie on ingest; the gold tasks' odd one joins the refine task.
        let result = assign(&tasks, &BTreeMap::new(), &set(&["a", "b"]));
        let refine = &result["refine/silver"];
        assert_eq!(of_kind(&result, "aggregate", refine), 2, "{result:?}");
    }

    /// Ingest tasks of partitions discovered after the refine task was placed (a Kafka
    /// source) lean towards the refine task's worker, within their own kind's balance.
    #[test]
    fn ingest_tasks_placed_later_lean_towards_their_reader() {
        let tasks = demo(0);
        let mut first = assign(&tasks, &BTreeMap::new(), &set(&["a", "b", "c"]));
        // On `c`, where the ties among ingest tasks would not send the odd one.
        first.insert("refine/silver".into(), "c".into());
        let refine = first["refine/silver"].clone();
        let tasks = demo(4);
        let result = assign(&tasks, &first, &set(&["a", "b", "c"]));
        assert_eq!(result["refine/silver"], refine, "sticky");
        assert_eq!(of_kind(&result, "ingest", &refine), 2, "{result:?}");
        for worker in ["a", "b", "c"] {
            assert!(
                (1..=2).contains(&of_kind(&result, "ingest", worker)),
                "{result:?}"
            );
        }
    }

    /// Affinity never breaks a kind's balance: with every ingest task on one worker at
    /// first, a second worker still takes half of them, and the refine task stays put.
    #[test]
    fn affinity_never_unbalances_a_kind() {
        let tasks = demo(6);
        let alone = assign(&tasks, &BTreeMap::new(), &set(&["a"]));
        let result = assign(&tasks, &alone, &set(&["a", "b"]));
        assert_eq!(of_kind(&result, "ingest", "a"), 3, "{result:?}");
        assert_eq!(of_kind(&result, "ingest", "b"), 3, "{result:?}");
        assert_eq!(result["refine/silver"], "a", "sticky");
        let c = counts(&result);
        assert!(c.values().all(|&n| (4..=6).contains(&n)), "{c:?}");
    }

    /// A task leaving a crowded worker is one with the fewest neighbours there.
    #[test]
    fn the_task_that_moves_is_the_one_with_fewest_neighbours_left_behind() {
        let mut tasks = demo(3);
        // A second pipeline's refine task, with no neighbours anywhere, placed first so
        // the choice is not the order's.
        tasks.insert(
            0,
            task("refine/other", 2, &["other_bronze"], &["other_silver"]),
        );
        let owners: BTreeMap<String, String> = tasks
            .iter()
            .map(|t| (t.id.clone(), "a".to_string()))
            .collect();
        let result = assign(&tasks, &owners, &set(&["a", "b"]));
        assert_eq!(result["refine/silver"], "a", "{result:?}");
        assert_eq!(result["refine/other"], "b", "{result:?}");
    }

    /// Workers joining one at a time (a cluster starting): each rebalance moves the tasks
    /// that leave fewest neighbours behind, so the refine task keeps two of the four
    /// ingest tasks with it on three workers.
    #[test]
    fn workers_joining_one_by_one_leave_the_refine_task_with_its_ingest_tasks() {
        let tasks = demo(4);
        let mut owners = assign(&tasks, &BTreeMap::new(), &set(&["a"]));
        for workers in [&["a", "b"][..], &["a", "b", "c"]] {
            owners = assign(&tasks, &owners, &set(workers));
        }
        let refine = &owners["refine/silver"];
        assert_eq!(of_kind(&owners, "ingest", refine), 2, "{owners:?}");
        for worker in ["a", "b", "c"] {
            assert_eq!(of_kind(&owners, "aggregate", worker), 1, "{owners:?}");
        }
    }
}
