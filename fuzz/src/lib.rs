//! Inputs for the fuzz targets (`tests/targets.rs`): seeds from the corpus in `corpus/`,
//! mutated the way coverage-guided fuzzers mutate (bit flips, inserted and deleted runs,
//! truncation, splices of tokens the format knows, repeated runs), and inputs generated
//! from nothing. Nightly-only tools (cargo-fuzz) are not on this toolchain; proptest runs
//! on stable, shrinks what it finds, and records it in `proptest-regressions/`.
//!
//! `FUZZ_CASES` sets the inputs per target (2,000 in the test suite). A long run:
//! `FUZZ_CASES=1000000 cargo test --release -p smelter-fuzz`.

use std::path::Path;

use proptest::prelude::*;

/// Inputs per target: `FUZZ_CASES`, or 2,000.
pub fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}

/// The seeds of `corpus/<target>/`, each file one input.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            Some((name, std::fs::read(entry.path()).ok()?))
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "corpus {} is empty", dir.display());
    seeds.into_iter().map(|(_, bytes)| bytes).collect()
}

/// One change to an input; positions are fractions of its length, so a mutation applies
/// to any input.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: u16, bit: u8 },
    Insert { at: u16, bytes: Vec<u8> },
    Delete { at: u16, len: u8 },
    Truncate { at: u16 },
    Token { at: u16, token: usize },
    Repeat { at: u16, len: u8, times: u8 },
}

fn position(at: u16, len: usize) -> usize {
    (at as usize * (len + 1)) / (u16::MAX as usize + 1)
}

impl Mutation {
    fn apply(&self, input: &mut Vec<u8>, tokens: &[&[u8]]) {
        let len = input.len();
        match self {
            Mutation::Flip { at, bit } if len > 0 => {
                let i = position(*at, len - 1);
                input[i] ^= 1 << (bit % 8);
            }
            Mutation::Flip { .. } => {}
            Mutation::Insert { at, bytes } => {
                let i = position(*at, len);
                input.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete { at, len: n } => {
                let i = position(*at, len);
                let end = (i + *n as usize).min(len);
                input.drain(i..end);
            }
            Mutation::Truncate { at } => input.truncate(position(*at, len)),
            Mutation::Token { at, token } if !tokens.is_empty() => {
                let i = position(*at, len);
                let token = tokens[token % tokens.len()];
                input.splice(i..i, token.iter().copied());
            }
            Mutation::Token { .. } => {}
            Mutation::Repeat { at, len: n, times } => {
                let i = position(*at, len);
                let end = (i + *n as usize).min(len);
                let run = input[i..end].to_vec();
                for _ in 0..(*times % 16) {
                    input.splice(end..end, run.iter().copied());
                }
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<u16>(), any::<u8>()).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<u16>(), any::<u8>()).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<u16>().prop_map(|at| Mutation::Truncate { at }),
        (any::<u16>(), any::<usize>()).prop_map(|(at, token)| Mutation::Token { at, token }),
        (any::<u16>(), any::<u8>(), any::<u8>()).prop_map(|(at, len, times)| Mutation::Repeat {
            at,
            len,
            times
        }),
    ]
}

/// Inputs for a target: mostly a corpus seed with up to eight mutations (`tokens` are the
/// format's own words, spliced in), sometimes random bytes or random printable text.
pub fn inputs(
    seeds: Vec<Vec<u8>>,
    tokens: &'static [&'static [u8]],
) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        proptest::sample::select(seeds),
        proptest::collection::vec(mutation(), 0..8),
    )
        .prop_map(move |(mut input, mutations)| {
            for m in &mutations {
                m.apply(&mut input, tokens);
            }
            input
        });
    prop_oneof![
        8 => mutated,
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        1 => "[ -~\\n]{0,256}".prop_map(String::into_bytes),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_in_bounds() {
        let mut input = b"{\"a\":1}".to_vec();
        for m in [
            Mutation::Flip {
                at: u16::MAX,
                bit: 9,
            },
            Mutation::Insert {
                at: u16::MAX,
                bytes: vec![b'x'],
            },
            Mutation::Delete { at: 0, len: 255 },
            Mutation::Truncate { at: u16::MAX },
            Mutation::Repeat {
                at: 0,
                len: 255,
                times: 255,
            },
            Mutation::Token { at: 3, token: 7 },
        ] {
            m.apply(&mut input, &[b"null"]);
        }
        let mut empty = Vec::new();
        Mutation::Flip { at: 0, bit: 0 }.apply(&mut empty, &[]);
        assert!(empty.is_empty());
    }
}
