//! The dedupe cache's map: each key with its latest event time, filed under its hash.
//!
//! The cache grows to millions of keys. A map keyed by the key text rehashes every text
//! on each growth, and a lookup reads the text of each key it meets: a cache miss per key
//! touched. Here the map holds the 64-bit hash inline, so growing and probing read the
//! hash alone, and a text is compared only when the hashes match. Keys whose hashes
//! collide share a slot: the comparison, not the hash, decides whether a key is present,
//! so a collision never merges two keys.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};

/// Keys with the latest event time (µs) seen for each.
#[derive(Debug, Default)]
pub struct KeyTimes {
    hasher: ahash::RandomState,
    slots: HashMap<u64, Slot, BuildHasherDefault<HashIsKey>>,
    len: usize,
}

#[derive(Debug)]
enum Slot {
    One(Box<str>, i64),
    /// Keys whose hashes collide.
    Many(Vec<(Box<str>, i64)>),
}

impl KeyTimes {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Forgets every key.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }

    /// The event time kept for `key`.
    pub fn get(&self, key: &str) -> Option<i64> {
        self.get_hashed(self.hasher.hash_one(key), key)
    }

    /// Records `key` at `ts`, keeping the later time when the key is already there.
    pub fn insert_latest(&mut self, key: String, ts: i64) {
        self.insert_hashed(self.hasher.hash_one(key.as_str()), key, ts);
    }

    fn get_hashed(&self, hash: u64, key: &str) -> Option<i64> {
        match self.slots.get(&hash)? {
            Slot::One(k, ts) => (**k == *key).then_some(*ts),
            Slot::Many(keys) => keys.iter().find(|(k, _)| **k == *key).map(|(_, ts)| *ts),
        }
    }

    fn insert_hashed(&mut self, hash: u64, key: String, ts: i64) {
        let slot = match self.slots.entry(hash) {
            Entry::Vacant(vacant) => {
                vacant.insert(Slot::One(key.into_boxed_str(), ts));
                self.len += 1;
                return;
            }
            Entry::Occupied(occupied) => occupied.into_mut(),
        };
        if let Slot::One(k, kept) = slot {
            if **k == *key {
                *kept = (*kept).max(ts);
                return;
            }
            let first = (std::mem::take(k), *kept);
            *slot = Slot::Many(vec![first]);
        }
        let Slot::Many(keys) = slot else {
            unreachable!("a colliding slot was just made a list");
        };
        match keys.iter_mut().find(|(k, _)| **k == *key) {
            Some((_, kept)) => *kept = (*kept).max(ts),
            None => {
                keys.push((key.into_boxed_str(), ts));
                self.len += 1;
            }
        }
    }

    /// The latest event time of any key.
    pub fn newest(&self) -> Option<i64> {
        self.times().max()
    }

    /// Keeps the keys whose time satisfies `keep`.
    pub fn retain(&mut self, keep: impl Fn(i64) -> bool) {
        self.slots.retain(|_, slot| match slot {
            Slot::One(_, ts) => keep(*ts),
            Slot::Many(keys) => {
                keys.retain(|(_, ts)| keep(*ts));
                !keys.is_empty()
            }
        });
        self.len = self.times().count();
    }

    fn times(&self) -> impl Iterator<Item = i64> + '_ {
        self.slots.values().flat_map(|slot| {
            let (one, many) = match slot {
                Slot::One(_, ts) => (Some(*ts), &[][..]),
                Slot::Many(keys) => (None, keys.as_slice()),
            };
            one.into_iter().chain(many.iter().map(|(_, ts)| *ts))
        })
    }
}

/// The hasher of a map whose keys are already hashes.
#[derive(Debug, Default)]
struct HashIsKey(u64);

impl Hasher for HashIsKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for `u64` keys; any other input is folded in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys that share a hash stay apart (every key filed under one hash here).
    #[test]
    fn colliding_keys_stay_apart() {
        let mut keys = KeyTimes::default();
        for (key, ts) in [("a", 5), ("b", 7), ("a", 3), ("c", 1)] {
            keys.insert_hashed(42, key.to_string(), ts);
        }
        assert_eq!(keys.len(), 3);
        assert_eq!(keys.get_hashed(42, "a"), Some(5));
        assert_eq!(keys.get_hashed(42, "b"), Some(7));
        assert_eq!(keys.get_hashed(42, "d"), None);
        keys.retain(|ts| ts >= 5);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get_hashed(42, "c"), None);
        assert_eq!(keys.newest(), Some(7));
    }

    #[test]
    fn keys_keep_their_latest_time() {
        let mut keys = KeyTimes::default();
        for n in 0..10_000 {
            keys.insert_latest(format!("k{n}"), n);
        }
        keys.insert_latest("k5".into(), 1);
        keys.insert_latest("k6".into(), 60_000);
        assert_eq!(keys.len(), 10_000);
        assert_eq!(keys.get("k5"), Some(5));
        assert_eq!(keys.get("k6"), Some(60_000));
        assert_eq!(keys.get("k10000"), None);
        assert_eq!(keys.newest(), Some(60_000));
        keys.retain(|ts| ts >= 9_000);
        assert_eq!(keys.len(), 1_001);
        keys.clear();
        assert_eq!((keys.len(), keys.get("k9999")), (0, None));
    }
}
