//! A shard's table (the memory engine's items, the disk engine's index): open addressing
//! with linear probing over slots that carry their key's ring hash. A lookup reads one run
//! of slots, compares hashes there, and then reads only the key a matching hash names: two
//! cache misses on a table far larger than the cache, where a table with a separate array
//! of control bytes (hashbrown's) pays three.
//!
//! Removal shifts the slots after the hole back towards their home instead of leaving a
//! tombstone, so probe runs stay as short as the load allows. Positions therefore name a
//! slot only until the next insert or removal.

use allocator_api2::alloc::System;
use allocator_api2::vec::Vec;

/// What the table needs from a slot: the ring hash it was inserted under.
pub trait Hashed {
    fn ring_hash(&self) -> u32;
}

/// The table grows when it would be more than 13/16 full: a linear probe for an absent key
/// then reads about fifteen slots (four cache lines, in order) at worst, and a present key
/// about three.
const MAX_LOAD: (usize, usize) = (13, 16);
const MIN_BUCKETS: usize = 16;

/// Slots in the C library's malloc, like the items: a grown table's old array is returned
/// to the system instead of kept by a size-class allocator.
pub struct Table<T> {
    slots: Vec<Option<T>, System>,
    len: usize,
}

impl<T: Hashed> Default for Table<T> {
    fn default() -> Self {
        Table {
            slots: Vec::new_in(System),
            len: 0,
        }
    }
}

/// Spreads a ring hash over 64 bits: a shard's ring hashes share their top bits, and the
/// bucket comes from the top bits of this.
fn spread(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl<T: Hashed> Table<T> {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many positions there are; `get` takes any below this.
    pub fn num_buckets(&self) -> usize {
        self.slots.len()
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Where a probe for `hash` starts; only for a table with buckets.
    fn home(&self, hash: u32) -> usize {
        let bits = self.slots.len().trailing_zeros();
        (spread(hash) >> (64 - bits)) as usize
    }

    /// The position of the slot with `hash` that `matches`.
    pub fn find(&self, hash: u32, mut matches: impl FnMut(&T) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut at = self.home(hash);
        // Ends: the load limit keeps an empty slot in every table.
        loop {
            match &self.slots[at] {
                None => return None,
                Some(slot) if slot.ring_hash() == hash && matches(slot) => return Some(at),
                Some(_) => at = (at + 1) & self.mask(),
            }
        }
    }

    pub fn get(&self, at: usize) -> Option<&T> {
        self.slots.get(at)?.as_ref()
    }

    pub fn get_mut(&mut self, at: usize) -> Option<&mut T> {
        self.slots.get_mut(at)?.as_mut()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    /// Adds `slot`, whose key the table does not hold.
    pub fn insert(&mut self, slot: T) {
        let (load, of) = MAX_LOAD;
        if (self.len + 1) * of > self.slots.len() * load {
            self.grow();
        }
        self.place(slot);
        self.len += 1;
    }

    /// Puts `slot` in the first free position from its home.
    fn place(&mut self, slot: T) {
        let mut at = self.home(slot.ring_hash());
        while self.slots[at].is_some() {
            at = (at + 1) & self.mask();
        }
        self.slots[at] = Some(slot);
    }

    fn grow(&mut self) {
        let buckets = (2 * self.slots.len()).max(MIN_BUCKETS);
        let mut grown = Vec::with_capacity_in(buckets, System);
        grown.resize_with(buckets, || None);
        let old = std::mem::replace(&mut self.slots, grown);
        for slot in old.into_iter().flatten() {
            self.place(slot);
        }
    }

    /// Takes the slot at `at` out, moving the slots after it that may move back towards
    /// their home. A walk that removes at `at` must look at `at` again; a slot from the
    /// start of the array may land at its end and be seen twice.
    pub fn remove(&mut self, at: usize) -> T {
        let removed = self.slots[at].take().expect("an occupied position");
        self.len -= 1;
        let mask = self.mask();
        let mut hole = at;
        let mut next = (at + 1) & mask;
        while let Some(slot) = &self.slots[next] {
            let home = self.home(slot.ring_hash());
            // It may fill the hole unless its home lies after the hole (cyclically).
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots[hole] = self.slots[next].take();
                hole = next;
            }
            next = (next + 1) & mask;
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Debug, PartialEq)]
    struct Entry {
        hash: u32,
        key: u32,
    }

    impl Hashed for Entry {
        fn ring_hash(&self) -> u32 {
            self.hash
        }
    }

    fn find(table: &Table<Entry>, hash: u32, key: u32) -> Option<usize> {
        table.find(hash, |entry| entry.key == key)
    }

    #[test]
    fn an_empty_table_finds_nothing_and_walks_nothing() {
        let table = Table::<Entry>::default();
        assert_eq!((table.num_buckets(), table.len()), (0, 0));
        assert_eq!(find(&table, 7, 7), None);
        assert_eq!(table.get(0), None);
        assert_eq!(table.iter().count(), 0);
    }

    #[test]
    fn keys_sharing_a_hash_are_told_apart_and_the_table_stays_under_its_load() {
        let mut table = Table::default();
        for key in 0..1000 {
            table.insert(Entry { hash: 42, key });
        }
        assert!(table.len() * 16 <= table.num_buckets() * 13);
        for key in 0..1000 {
            let at = find(&table, 42, key).expect("present");
            assert_eq!(table.get(at).unwrap().key, key);
        }
        assert_eq!(find(&table, 42, 1000), None);
        assert_eq!(find(&table, 43, 0), None, "the hash is compared");
    }

    proptest::proptest! {
        /// Against a map, over inserts and removals with few distinct hashes (long runs,
        /// runs that wrap around the array's end): every key stays findable, removed keys
        /// are gone, and a walk sees each slot.
        #[test]
        fn it_holds_what_a_map_holds(
            steps in proptest::collection::vec((proptest::bool::ANY, 0u32..300), 1..2000),
            hashes in 1u32..40,
        ) {
            let mut table = Table::default();
            let mut model = HashMap::new();
            let hash_of =
                |key: u32| (key.wrapping_mul(0x2545_f491) % hashes).wrapping_mul(0x0fff_ffff);
            for (add, key) in steps {
                let hash = hash_of(key);
                match (add, find(&table, hash, key)) {
                    (true, None) => {
                        table.insert(Entry { hash, key });
                        model.insert(key, ());
                    }
                    (false, Some(at)) => {
                        proptest::prop_assert_eq!(table.remove(at), Entry { hash, key });
                        model.remove(&key);
                    }
                    (_, found) => {
                        proptest::prop_assert_eq!(found.is_some(), model.contains_key(&key))
                    }
                }
                proptest::prop_assert_eq!(table.len(), model.len());
            }
            for key in 0..300 {
                proptest::prop_assert_eq!(
                    find(&table, hash_of(key), key).is_some(),
                    model.contains_key(&key)
                );
            }
            let mut walked: std::vec::Vec<u32> = table.iter().map(|entry| entry.key).collect();
            walked.sort_unstable();
            let mut held: std::vec::Vec<u32> = model.keys().copied().collect();
            held.sort_unstable();
            proptest::prop_assert_eq!(&walked[..], &held[..]);
        }
    }
}
