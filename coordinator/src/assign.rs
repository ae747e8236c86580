//! Task placement: sticky and balanced, with minimal movement.
//!
//! 1. Tasks whose owner is still alive stay where they are.
//! 2. Orphaned and new tasks go to the least-loaded worker.
//! 3. While the most and least loaded workers differ by more than one task, one task
//!    moves from the former to the latter (so a joining worker takes over just enough).
//!
//! Pure functions over ids; the actor applies the result.

use std::collections::{BTreeMap, BTreeSet};

/// Computes new owners for `tasks` (ids, in a stable order) given the current `owners`
/// and the live `workers`. Returns task id -> worker id; empty if there are no workers.
pub fn assign(
    tasks: &[String],
    owners: &BTreeMap<String, String>,
    workers: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let mut result = BTreeMap::new();
    if workers.is_empty() {
        return result;
    }
    let mut load: BTreeMap<&str, Vec<&str>> =
        workers.iter().map(|w| (w.as_str(), Vec::new())).collect();
    let mut orphans = Vec::new();
    for task in tasks {
        match owners.get(task).filter(|w| workers.contains(*w)) {
            Some(owner) => load.entry(owner.as_str()).or_default().push(task.as_str()),
            None => orphans.push(task.as_str()),
        }
    }
    for task in orphans {
        let least = load
            .iter()
            .min_by_key(|(w, t)| (t.len(), *w))
            .map(|(w, _)| *w);
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
            .iter()
            .min_by_key(|(w, t)| (t.len(), *w))
            .map(|(w, t)| (*w, t.len()));
        let (Some((from, high)), Some((to, low))) = (most, least) else {
            break;
        };
        if high <= low + 1 {
            break;
        }
        let moved = load.get_mut(from).and_then(Vec::pop);
        if let Some(task) = moved {
            load.entry(to).or_default().push(task);
        }
    }
    for (worker, tasks) in load {
        for task in tasks {
            result.insert(task.to_string(), worker.to_string());
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i:02}")).collect()
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
        let moved = tasks.iter().filter(|t| before[*t] != after[*t]).count();
        assert_eq!(moved, 4, "exactly c's share moves");
        assert!(
            tasks
                .iter()
                .filter(|t| before[*t] != after[*t])
                .all(|t| after[t] == "c")
        );
    }

    #[test]
    fn dead_worker_tasks_move_and_others_stay() {
        let tasks = ids(9);
        let before = assign(&tasks, &BTreeMap::new(), &set(&["a", "b", "c"]));
        let after = assign(&tasks, &before, &set(&["a", "b"]));
        for t in &tasks {
            if before[t] != "c" {
                assert_eq!(before[t], after[t], "{t} moved needlessly");
            }
            assert_ne!(after[t], "c");
        }
        assert!(assign(&tasks, &before, &BTreeSet::new()).is_empty());
    }
}
