//! The dedupe cache's map: each key with its latest event time.
//!
//! The cache grows to millions of keys, and each growth of a map moves every entry into
//! freshly allocated memory, which the kernel hands out page by page (a fault and a
//! zeroing per 4 KiB). A map holding `(String, i64)` per bucket made those faults most of
//! the cache's cost. Here the keys' text lives in an arena of large chunks that never
//! move, the entries (time, place in the arena) in one vector, and the hash table holds
//! 8 bytes per key: the entry's index and 32 bits of its hash. A growth moves those 8
//! bytes and rehashes from them, without reading an entry or a key.
//!
//! Keys whose hashes collide are separate entries: lookups compare the text, so a
//! collision never merges two keys.

use hashbrown::HashTable;

/// Bytes per arena chunk; a longer key gets a chunk of its own.
const CHUNK_BYTES: usize = 1 << 20;

/// Keys with the latest event time (µs) seen for each.
#[derive(Debug, Default)]
pub struct KeyTimes {
    hasher: ahash::RandomState,
    /// Where each key's entry is, filed by the key's hash.
    index: HashTable<Slot>,
    entries: Vec<Entry>,
    /// The keys' text; chunks are filled and never grown, so text never moves.
    chunks: Vec<String>,
}

/// One key in the hash table.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Into `entries`.
    entry: u32,
    /// 32 bits of the key's hash, which are all the table files it by (see [`spread`]).
    hash: u32,
}

/// The 64-bit hash the table files a 32-bit hash under: hashbrown takes the bucket from
/// the low bits and a tag from the top 7, so both halves carry the hash.
fn spread(hash: u32) -> u64 {
    u64::from(hash) << 32 | u64::from(hash)
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    ts: i64,
    chunk: u32,
    start: u32,
    len: u32,
}

impl KeyTimes {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets every key.
    pub fn clear(&mut self) {
        self.index.clear();
        self.entries.clear();
        self.chunks.clear();
    }

    /// The event time kept for `key`.
    pub fn get(&self, key: &str) -> Option<i64> {
        self.get_hashed(self.hash(key), key)
    }

    /// Records `key` at `ts`, keeping the later time when the key is already there.
    pub fn insert_latest(&mut self, key: &str, ts: i64) {
        self.insert_hashed(self.hash(key), key, ts);
    }

    fn hash(&self, key: &str) -> u32 {
        (self.hasher.hash_one(key) >> 32) as u32
    }

    fn text(&self, entry: &Entry) -> &str {
        let start = entry.start as usize;
        &self.chunks[entry.chunk as usize][start..start + entry.len as usize]
    }

    fn get_hashed(&self, hash: u32, key: &str) -> Option<i64> {
        let found = self.index.find(spread(hash), |slot| {
            slot.hash == hash && self.text(&self.entries[slot.entry as usize]) == key
        })?;
        Some(self.entries[found.entry as usize].ts)
    }

    fn insert_hashed(&mut self, hash: u32, key: &str, ts: i64) {
        let Self {
            index,
            entries,
            chunks,
            ..
        } = self;
        let text = |entry: &Entry| {
            let start = entry.start as usize;
            &chunks[entry.chunk as usize][start..start + entry.len as usize]
        };
        let found = index.find(spread(hash), |slot| {
            slot.hash == hash && text(&entries[slot.entry as usize]) == key
        });
        if let Some(slot) = found {
            let kept = &mut entries[slot.entry as usize].ts;
            *kept = (*kept).max(ts);
            return;
        }
        let (chunk, start) = Self::place(chunks, key);
        let entry = u32::try_from(entries.len()).expect("fewer than 2^32 keys");
        entries.push(Entry {
            ts,
            chunk,
            start,
            len: key.len() as u32,
        });
        index.insert_unique(spread(hash), Slot { entry, hash }, |slot| spread(slot.hash));
    }

    /// Copies `key` into the arena; its chunk and offset.
    fn place(chunks: &mut Vec<String>, key: &str) -> (u32, u32) {
        let fits = chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= key.len());
        if !fits {
            chunks.push(String::with_capacity(CHUNK_BYTES.max(key.len())));
        }
        let last = chunks.len() - 1;
        let chunk = &mut chunks[last];
        let start = chunk.len() as u32;
        chunk.push_str(key);
        (last as u32, start)
    }

    /// The latest event time of any key.
    pub fn newest(&self) -> Option<i64> {
        self.entries.iter().map(|e| e.ts).max()
    }

    /// Keeps the keys whose time satisfies `keep` (rebuilding the map: this runs when the
    /// cache is full, not per batch).
    pub fn retain(&mut self, keep: impl Fn(i64) -> bool) {
        let old = std::mem::take(self);
        self.hasher = old.hasher.clone();
        for slot in old.index.iter() {
            let entry = &old.entries[slot.entry as usize];
            if keep(entry.ts) {
                self.insert_hashed(slot.hash, old.text(entry), entry.ts);
            }
        }
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
            keys.insert_hashed(42, key, ts);
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
            keys.insert_latest(&format!("k{n}"), n);
        }
        keys.insert_latest("k5", 1);
        keys.insert_latest("k6", 60_000);
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
