//! The hierarchical timing wheel (data path step 9, expiry): one deadline per committed entry,
//! O(1) insert and cancel, pure and clock-free — the caller passes `now` in ticks (seconds on
//! the monotonic clock) to [`Wheel::advance`], which returns the keys whose deadline has come.
//!
//! Four levels of 64 slots at one tick each cover 64⁴ ticks (≈ 194 days at 1 s); deadlines
//! past that wait in an overflow list that is re-sorted each time the top level wraps. An entry
//! sits at the lowest level whose span covers its distance from now, in the slot given by the
//! bits of its absolute deadline; when a level's slot comes round it is cascaded one level down.
//! Expiry is exact to the tick: an entry fires in the `advance` call that reaches its deadline.
//!
//! Nodes live in a `slab`, linked into per-slot doubly-linked lists, so cancel needs no search.

use slab::Slab;

pub use crate::limits::WHEEL_HORIZON as HORIZON;
use crate::limits::{WHEEL_LEVELS as LEVELS, WHEEL_SLOT_BITS as BITS};

const SLOTS: usize = 1 << BITS;
const MASK: u64 = SLOTS as u64 - 1;

/// Where a node is linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Slot(usize, usize),
    Overflow,
}

struct Node<K> {
    key: K,
    deadline: u64,
    /// Tells this arming apart from a later one that reuses the slab slot.
    generation: u64,
    list: List,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A handle to cancel a deadline: the slab slot and the arming's generation, so a handle to a
/// timer that already fired never cancels a later one in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(usize, u64);

pub struct Wheel<K> {
    nodes: Slab<Node<K>>,
    heads: [[Option<usize>; SLOTS]; LEVELS],
    overflow: Option<usize>,
    /// Every deadline ≤ `now` has fired.
    now: u64,
    generation: u64,
    /// Nodes linked per level, the overflow list last: lets `advance` skip idle stretches.
    counts: [usize; LEVELS + 1],
}

impl<K> Wheel<K> {
    /// A wheel whose clock starts at `now`.
    pub fn new(now: u64) -> Wheel<K> {
        Wheel {
            nodes: Slab::new(),
            heads: [[None; SLOTS]; LEVELS],
            overflow: None,
            now,
            generation: 0,
            counts: [0; LEVELS + 1],
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Arm a deadline (in ticks). A deadline at or before `now` fires on the next `advance`.
    pub fn insert(&mut self, key: K, deadline: u64) -> TimerId {
        let deadline = deadline.max(self.now + 1);
        self.generation += 1;
        let generation = self.generation;
        let id = self.nodes.insert(Node {
            key,
            deadline,
            generation,
            list: List::Overflow,
            prev: None,
            next: None,
        });
        self.place(id);
        TimerId(id, generation)
    }

    /// Disarm a deadline; returns its key if it was still armed.
    pub fn cancel(&mut self, id: TimerId) -> Option<K> {
        if self.nodes.get(id.0).is_none_or(|n| n.generation != id.1) {
            return None;
        }
        self.unlink(id.0);
        Some(self.nodes.remove(id.0).key)
    }

    /// Move the clock to `now` and return every key whose deadline is ≤ `now`, in deadline
    /// order. Cost: O(ticks passed + entries fired or cascaded); an empty wheel jumps at once.
    pub fn advance(&mut self, now: u64) -> Vec<(K, u64)> {
        let mut fired = Vec::new();
        while self.now < now {
            if self.nodes.is_empty() {
                self.now = now;
                break;
            }
            // Nothing below the lowest occupied level: nothing can happen before that level's
            // next cascade, at the next multiple of its span. Skip there.
            let lowest = (0..=LEVELS).find(|&l| self.counts[l] > 0).unwrap_or(LEVELS);
            if lowest > 0 {
                let span = 1u64 << (BITS as u64 * lowest as u64);
                let boundary = (self.now / span + 1) * span;
                if boundary > now {
                    self.now = now;
                    break;
                }
                self.now = boundary - 1;
            }
            let t = self.now + 1;
            // Cascade from the highest level whose slot starts at t, down to level 1.
            for level in (1..LEVELS).rev() {
                if t & ((1 << (BITS as u64 * level as u64)) - 1) == 0 {
                    if level == LEVELS - 1 && t % HORIZON == 0 {
                        self.cascade_overflow(t);
                    }
                    let slot = ((t >> (BITS as u64 * level as u64)) & MASK) as usize;
                    self.cascade(level, slot, t);
                }
            }
            self.now = t;
            let slot = (t & MASK) as usize;
            while let Some(id) = self.heads[0][slot] {
                self.unlink(id);
                let node = self.nodes.remove(id);
                debug_assert_eq!(
                    node.deadline, t,
                    "level-0 slot holds only deadlines of this tick"
                );
                fired.push((node.key, node.deadline));
            }
        }
        fired
    }

    fn cascade(&mut self, level: usize, slot: usize, t: u64) {
        let head = self.heads[level][slot].take();
        self.relink(head, level, t);
    }

    fn cascade_overflow(&mut self, t: u64) {
        let head = self.overflow.take();
        self.relink(head, LEVELS, t);
    }

    /// Re-place every node of a list taken off counted level `level`, as seen from `t`.
    fn relink(&mut self, mut cur: Option<usize>, level: usize, t: u64) {
        while let Some(id) = cur {
            self.counts[level] -= 1;
            cur = self.nodes[id].next;
            self.nodes[id].prev = None;
            self.nodes[id].next = None;
            self.place_at(id, t);
        }
    }

    fn place(&mut self, id: usize) {
        self.place_at(id, self.now)
    }

    /// Link `id` where it belongs, seen from time `now`.
    fn place_at(&mut self, id: usize, now: u64) {
        let deadline = self.nodes[id].deadline;
        let distance = deadline - now;
        let list = if distance >= HORIZON {
            List::Overflow
        } else {
            let level = (0..LEVELS)
                .find(|&l| distance < 1 << (BITS as u64 * (l as u64 + 1)))
                .unwrap_or(LEVELS - 1);
            List::Slot(
                level,
                ((deadline >> (BITS as u64 * level as u64)) & MASK) as usize,
            )
        };
        let head = match list {
            List::Slot(l, s) => &mut self.heads[l][s],
            List::Overflow => &mut self.overflow,
        };
        let old = head.replace(id);
        self.counts[Self::level_of(list)] += 1;
        let node = &mut self.nodes[id];
        node.list = list;
        node.prev = None;
        node.next = old;
        if let Some(o) = old {
            self.nodes[o].prev = Some(id);
        }
    }

    fn level_of(list: List) -> usize {
        match list {
            List::Slot(l, _) => l,
            List::Overflow => LEVELS,
        }
    }

    fn unlink(&mut self, id: usize) {
        let (prev, next, list) = {
            let n = &self.nodes[id];
            (n.prev, n.next, n.list)
        };
        self.counts[Self::level_of(list)] -= 1;
        match prev {
            Some(p) => self.nodes[p].next = next,
            None => match list {
                List::Slot(l, s) => self.heads[l][s] = next,
                List::Overflow => self.overflow = next,
            },
        }
        if let Some(n) = next {
            self.nodes[n].prev = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn fires_exactly_at_deadline_across_levels() {
        let cases = [
            1u64,
            2,
            63,
            64,
            65,
            4095,
            4096,
            4097,
            262_143,
            262_144,
            HORIZON - 1,
            HORIZON,
            HORIZON + 5,
            3 * HORIZON + 7,
        ];
        for start in [0u64, 1, 63, 100, 4095, HORIZON - 3] {
            for &d in &cases {
                let mut w = Wheel::new(start);
                w.insert("k", start + d);
                assert!(
                    w.advance(start + d - 1).is_empty(),
                    "start {start} distance {d}: early"
                );
                assert_eq!(
                    w.advance(start + d),
                    vec![("k", start + d)],
                    "start {start} distance {d}"
                );
                assert!(w.is_empty());
            }
        }
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick_and_cancel_is_o1() {
        let mut w = Wheel::new(100);
        let a = w.insert(1, 50);
        let b = w.insert(2, 200);
        let c = w.insert(3, 200);
        assert_eq!(w.cancel(b), Some(2));
        assert_eq!(w.cancel(b), None);
        assert_eq!(w.advance(101), vec![(1, 101)]);
        assert_eq!(w.cancel(a), None, "already fired");
        assert_eq!(w.advance(1000), vec![(3, 200)]);
        let _ = c;
    }

    /// Property test against a reference model (a BTreeMap of deadlines), with random
    /// inserts, cancels and advances of every size, from a seeded generator.
    #[test]
    fn matches_a_reference_model() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..20 {
            let start = next(1 << 40);
            let mut w = Wheel::new(start);
            let mut model: BTreeMap<(u64, u32), TimerId> = BTreeMap::new();
            let mut ids: Vec<(u32, u64, TimerId)> = Vec::new();
            let mut now = start;
            for step in 0..3000u32 {
                match next(10) {
                    0..=4 => {
                        let span = [64, 4096, 1 << 18, HORIZON, 4 * HORIZON][next(5) as usize];
                        let d = now + 1 + next(span);
                        let id = w.insert(step, d);
                        model.insert((d, step), id);
                        ids.push((step, d, id));
                    }
                    5 if !ids.is_empty() => {
                        let (key, d, id) = ids.swap_remove(next(ids.len() as u64) as usize);
                        let was = model.remove(&(d, key)).is_some();
                        assert_eq!(w.cancel(id).is_some(), was, "round {round} step {step}");
                    }
                    _ => {
                        let jump = [1, 10, 100, 5000, 1 << 20][next(5) as usize];
                        now += next(jump) + 1;
                        let mut fired = w.advance(now);
                        let mut want: Vec<(u32, u64)> = model
                            .range(..(now + 1, 0))
                            .map(|(&(d, k), _)| (k, d))
                            .collect();
                        model.retain(|&(d, _), _| d > now);
                        fired.sort_by_key(|&(k, d)| (d, k));
                        want.sort_by_key(|&(k, d)| (d, k));
                        assert_eq!(fired, want, "round {round} step {step} now {now}");
                    }
                }
                assert_eq!(w.len(), model.len());
            }
        }
    }
}
