//! Where a request goes among engine replicas: consistent hashing with bounded loads
//! (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads", SODA 2018).
//! Each replica owns [`VIRTUAL_NODES_PER_REPLICA`] points on a ring of 64-bit hashes; a key
//! (the request's first adapter id) goes to the first replica clockwise from its hash that is
//! available and below capacity, `ceil((1 + ε)·(in-flight + 1) / replicas)`. So an adapter
//! stays on one replica (where it is already loaded) until that replica is full or gone, and
//! when a replica leaves only its own keys move.

/// How far above the average load one replica may go (ε of the paper): 25 %.
pub const LOAD_BOUND_EPSILON: f64 = 0.25;

/// Points each replica owns on the ring: enough that the key space splits evenly.
pub const VIRTUAL_NODES_PER_REPLICA: usize = 160;

/// The ring over a fixed list of replicas, named so that every edge places keys alike
/// whatever order it lists them in.
#[derive(Clone, Debug)]
pub struct Ring {
    /// (point, replica index), sorted by point.
    points: Vec<(u64, usize)>,
    replicas: usize,
}

fn hash(text: &str) -> u64 {
    let digest = blake3::hash(text.as_bytes());
    u64::from_be_bytes(digest.as_bytes()[..8].try_into().expect("a digest holds 8 bytes"))
}

/// Most requests one replica may hold when `in_flight` are running over `available` replicas
/// and one more arrives.
pub fn capacity(in_flight: usize, available: usize) -> usize {
    debug_assert!(available > 0);
    ((1.0 + LOAD_BOUND_EPSILON) * (in_flight + 1) as f64 / available.max(1) as f64).ceil() as usize
}

impl Ring {
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        let mut points: Vec<(u64, usize)> = names
            .iter()
            .enumerate()
            .flat_map(|(index, name)| {
                (0..VIRTUAL_NODES_PER_REPLICA).map(move |v| (hash(&format!("{}#{v}", name.as_ref())), index))
            })
            .collect();
        points.sort_unstable();
        Self { points, replicas: names.len() }
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Replicas in the order a key meets them walking clockwise from its hash, each once.
    pub fn walk(&self, key: &str) -> Vec<usize> {
        let start = self.points.partition_point(|(point, _)| *point < hash(key));
        let mut order = Vec::with_capacity(self.replicas);
        for (_, replica) in self.points[start..].iter().chain(&self.points[..start]) {
            if !order.contains(replica) {
                order.push(*replica);
                if order.len() == self.replicas {
                    break;
                }
            }
        }
        order
    }

    /// The replica for `key` given each replica's load and availability: the first available
    /// one clockwise below capacity. `None` when no replica is available.
    pub fn choose(&self, key: &str, loads: &[usize], available: &[bool]) -> Option<usize> {
        debug_assert_eq!(loads.len(), self.replicas);
        debug_assert_eq!(available.len(), self.replicas);
        let up = available.iter().filter(|a| **a).count();
        if up == 0 {
            return None;
        }
        let in_flight: usize = loads.iter().zip(available).filter(|(_, a)| **a).map(|(l, _)| l).sum();
        let limit = capacity(in_flight, up);
        let order = self.walk(key);
        order.iter().copied().find(|&r| available[r] && loads[r] < limit)
    }

    /// The least loaded available replica (for requests without an adapter: any replica
    /// serves the base model equally well); ties go to the lowest index.
    pub fn least_loaded(loads: &[usize], available: &[bool]) -> Option<usize> {
        (0..loads.len()).filter(|&r| available[r]).min_by_key(|&r| (loads[r], r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://engine-{i}:50060")).collect()
    }

    #[test]
    fn placement_is_deterministic_and_independent_of_listing_order() {
        let forward = names(4);
        let mut backward = forward.clone();
        backward.reverse();
        let (a, b) = (Ring::new(&forward), Ring::new(&backward));
        let idle = [0; 4];
        let up = [true; 4];
        for key in (0..200).map(|i| format!("adapter-{i}")) {
            let first = a.choose(&key, &idle, &up).expect("a replica");
            assert_eq!(a.choose(&key, &idle, &up), Some(first), "same ring, same answer");
            let other = b.choose(&key, &idle, &up).expect("a replica");
            assert_eq!(forward[first], backward[other], "{key} lands on the same replica by name");
        }
    }

    #[test]
    fn keys_spread_over_every_replica() {
        let ring = Ring::new(&names(4));
        let mut owned = [0usize; 4];
        for key in (0..4000).map(|i| format!("adapter-{i}")) {
            owned[ring.choose(&key, &[0; 4], &[true; 4]).expect("a replica")] += 1;
        }
        // 160 points per replica keep each share within a loose band around a quarter.
        assert!(owned.iter().all(|&n| (600..=1400).contains(&n)), "{owned:?}");
    }

    #[test]
    fn a_replica_leaving_moves_only_its_own_keys() {
        let ring = Ring::new(&names(3));
        let keys: Vec<String> = (0..1000).map(|i| format!("adapter-{i}")).collect();
        let before: Vec<usize> = keys.iter().map(|k| ring.choose(k, &[0; 3], &[true; 3]).expect("up")).collect();
        let after: Vec<usize> =
            keys.iter().map(|k| ring.choose(k, &[0; 3], &[true, false, true]).expect("up")).collect();
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            assert_ne!(*a, 1, "nothing lands on the replica that left");
            if *b != 1 {
                assert_eq!(a, b, "a key of a replica that stayed did not move");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 0, "replica 1 owned some keys");
        // Coming back restores the original placement.
        let back: Vec<usize> = keys.iter().map(|k| ring.choose(k, &[0; 3], &[true; 3]).expect("up")).collect();
        assert_eq!(back, before);
    }

    #[test]
    fn a_hot_key_spills_over_but_no_replica_exceeds_the_bound() {
        let ring = Ring::new(&names(4));
        let up = [true; 4];
        let mut loads = [0usize; 4];
        // Every request is for one adapter, and none finishes: the bound must still hold.
        for i in 0..400 {
            let in_flight: usize = loads.iter().sum();
            let r = ring.choose("hot-adapter", &loads, &up).expect("a replica");
            assert!(loads[r] < capacity(in_flight, 4), "request {i} placed over capacity: {loads:?}");
            loads[r] += 1;
            let total: usize = loads.iter().sum();
            let bound = capacity(total - 1, 4);
            assert!(loads.iter().all(|&l| l <= bound), "after {total} requests {loads:?} exceeds {bound}");
        }
        let home = ring.choose("hot-adapter", &[0; 4], &up).expect("a replica");
        assert_eq!(loads.iter().max(), Some(&loads[home]), "the key's own replica holds the most");
    }

    #[test]
    fn light_load_keeps_a_key_on_its_replica() {
        let ring = Ring::new(&names(3));
        let up = [true; 3];
        let home = ring.choose("style", &[0; 3], &up).expect("a replica");
        // Other replicas busier than the key's own one: the key still goes home.
        let mut loads = [4usize; 3];
        loads[home] = 2;
        assert_eq!(ring.choose("style", &loads, &up), Some(home));
    }

    #[test]
    fn nothing_available_means_no_choice_and_base_requests_go_to_the_least_loaded() {
        let ring = Ring::new(&names(2));
        assert_eq!(ring.choose("style", &[0, 0], &[false, false]), None);
        assert_eq!(Ring::least_loaded(&[3, 1, 1], &[true, true, true]), Some(1));
        assert_eq!(Ring::least_loaded(&[3, 1, 0], &[true, true, false]), Some(1));
        assert_eq!(Ring::least_loaded(&[0, 0], &[false, false]), None);
    }
}
