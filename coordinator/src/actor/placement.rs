//! Task placement: sticky and balanced, with minimal movement, and the hand-offs a new
//! placement starts.
//!
//! 1. Tasks whose owner is still alive stay where they are.
//! 2. Orphaned and new tasks go to the least-loaded worker.
//! 3. While the most and least loaded workers differ by more than one task, one task
//!    moves from the former to the latter (so a joining worker takes over just enough).
//! 4. A task leaving a live worker that was told about it is handed off: it reaches its
//!    new owner only once the old one has drained it ([`Release`]).
//!
//! Pure functions over ids, tested without a store; the actor applies the [`Plan`].

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

/// What placement starts from.
pub struct Current<'a> {
    /// Every task as (task id, group), in a stable order.
    pub tasks: &'a [(String, String)],
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
        .filter(|(t, _)| current.owners.get(t) != owners.get(t))
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

/// Computes new owners for `tasks` — (task id, group) pairs in a stable order — given the
/// current `owners` and the live `workers`. Each group (a task kind: ingest, refine,
/// aggregate) is balanced on its own, so ingest partitions spread over workers instead of
/// piling up where gold tasks are few; ties go to the worker with less work overall.
/// Returns task id -> worker id; empty if there are no workers.
pub fn assign(
    tasks: &[(String, String)],
    owners: &BTreeMap<String, String>,
    workers: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let mut result = BTreeMap::new();
    if workers.is_empty() {
        return result;
    }
    let groups: BTreeSet<&str> = tasks.iter().map(|(_, g)| g.as_str()).collect();
    let mut total: BTreeMap<&str, usize> = workers.iter().map(|w| (w.as_str(), 0)).collect();
    for group in groups {
        let members: Vec<&str> = tasks
            .iter()
            .filter(|(_, g)| g == group)
            .map(|(t, _)| t.as_str())
            .collect();
        for (task, worker) in balance(&members, owners, workers, &total) {
            *total.entry(worker).or_default() += 1;
            result.insert(task.to_string(), worker.to_string());
        }
    }
    result
}

/// Sticky, balanced placement of one group.
fn balance<'a>(
    tasks: &[&'a str],
    owners: &'a BTreeMap<String, String>,
    workers: &'a BTreeSet<String>,
    total: &BTreeMap<&str, usize>,
) -> Vec<(&'a str, &'a str)> {
    let mut load: BTreeMap<&str, Vec<&str>> =
        workers.iter().map(|w| (w.as_str(), Vec::new())).collect();
    let mut orphans = Vec::new();
    for &task in tasks {
        match owners.get(task).filter(|w| workers.contains(*w)) {
            Some(owner) => load.entry(owner.as_str()).or_default().push(task),
            None => orphans.push(task),
        }
    }
    let rank = |load: &BTreeMap<&str, Vec<&str>>, w: &str| {
        (
            load.get(w).map_or(0, Vec::len),
            total.get(w).copied().unwrap_or(0),
        )
    };
    for task in orphans {
        let least = load.keys().copied().min_by_key(|w| (rank(&load, w), *w));
        if let Some(worker) = least {
            load.entry(worker).or_default().push(task);
        }
    }
    loop {
        let most = load
            .iter()
            .max_by_key(|(w, t)| (t.len(), std::cmp::Reverse(*w)))
            .map(|(w, t)| (*w, t.len()));
        let least = load
            .keys()
            .copied()
            .min_by_key(|w| (rank(&load, w), *w))
            .map(|w| (w, load[w].len()));
        let (Some((from, high)), Some((to, low))) = (most, least) else {
            break;
        };
        if high <= low + 1 {
            break;
        }
        if let Some(task) = load.get_mut(from).and_then(Vec::pop) {
            load.entry(to).or_default().push(task);
        }
    }
    load.into_iter()
        .flat_map(|(worker, tasks)| tasks.into_iter().map(move |t| (t, worker)))
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

    fn ids(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("t{i:02}"), "ingest".to_string()))
            .collect()
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
            .map(|(t, _)| t)
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
        for (t, _) in &tasks {
            if before[t] != "c" {
                assert_eq!(before[t], after[t], "{t} moved needlessly");
            }
            assert_ne!(after[t], "c");
        }
        assert!(assign(&tasks, &before, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn each_kind_is_spread_on_its_own() {
        let mut tasks: Vec<(String, String)> = (0..4)
            .map(|p| (format!("ingest/{p}"), "ingest".to_string()))
            .collect();
        tasks.push(("refine/silver".into(), "refine".into()));
        tasks.extend((0..3).map(|g| (format!("aggregate/{g}"), "aggregate".to_string())));
        let result = assign(&tasks, &BTreeMap::new(), &set(&["a", "b"]));
        for worker in ["a", "b"] {
            let ingest = result
                .iter()
                .filter(|(t, w)| t.starts_with("ingest") && *w == worker)
                .count();
            assert_eq!(ingest, 2, "{result:?}");
        }
        let c = counts(&result);
        assert!(c.values().all(|&n| n == 4), "{c:?}");
    }
}
