//! Hash maps keyed by job or GPU id, with a hash that costs one multiply.
//!
//! Why: std's default hash (SipHash) is built to resist keys an attacker
//! picks to collide, and costs tens of nanoseconds per lookup, more in Wasm.
//! Ids here are small integers the host gives out, so that protection buys
//! nothing, and a policy that looks jobs up on every event pays for it on
//! every event. Iteration order differs from std's: never let a decision
//! depend on the order of a hash map.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A multiplicative hash for integer ids (Fibonacci hashing).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

/// A hash map keyed by ids, hashed with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A hash set of ids, hashed with [`IdHasher`].
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_a_std_map_holds() {
        let mut map: IdMap<u64, u64> = IdMap::default();
        for id in 0..10_000u64 {
            map.insert(id * 7, id);
        }
        assert_eq!(map.len(), 10_000);
        assert!((0..10_000u64).all(|id| map.get(&(id * 7)) == Some(&id)));
        assert_eq!(map.get(&1), None);
    }
}
