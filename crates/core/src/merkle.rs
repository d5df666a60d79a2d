//! A binary Merkle tree with inclusion proofs, shaped as RFC 6962/9162 (Certificate
//! Transparency) defines it: leaves and inner nodes are hashed with different prefixes so a
//! leaf can never pass for a node, and an unpaired last node moves up unchanged. Anyone can
//! check a proof with [`MerkleProof::verify`] and the published root alone.

use serde::{Deserialize, Serialize};

use crate::ContentHash;

const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

fn leaf_node(leaf: &ContentHash) -> ContentHash {
    ContentHash::of_parts(&[&[LEAF_PREFIX], leaf.as_bytes()])
}

fn inner_node(left: &ContentHash, right: &ContentHash) -> ContentHash {
    ContentHash::of_parts(&[&[NODE_PREFIX], left.as_bytes(), right.as_bytes()])
}

/// A Merkle tree over an ordered list of leaf hashes (e.g. record content hashes).
#[derive(Clone, Debug)]
pub struct MerkleTree {
    /// `levels[0]` holds the hashed leaves, the last level holds the root alone.
    levels: Vec<Vec<ContentHash>>,
}

impl MerkleTree {
    pub fn new(leaves: &[ContentHash]) -> Self {
        let mut levels = vec![leaves.iter().map(leaf_node).collect::<Vec<_>>()];
        while levels.last().is_some_and(|level| level.len() > 1) {
            let below = levels.last().expect("non-empty levels");
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => inner_node(left, right),
                    [single] => *single,
                    _ => unreachable!("chunks(2) yields one or two nodes"),
                })
                .collect();
            levels.push(above);
        }
        Self { levels }
    }

    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The root; for an empty tree, the hash of no bytes (as RFC 6962 defines it).
    pub fn root(&self) -> ContentHash {
        match self.levels.last().and_then(|level| level.first()) {
            Some(root) if !self.is_empty() => *root,
            _ => ContentHash::of(b""),
        }
    }

    /// The inclusion proof of the leaf at `index`, or `None` when out of range.
    pub fn proof(&self, index: usize) -> Option<MerkleProof> {
        if index >= self.len() {
            return None;
        }
        let mut path = Vec::with_capacity(self.levels.len());
        let mut position = index;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = position ^ 1;
            if sibling < level.len() {
                path.push(level[sibling]);
            }
            position /= 2;
        }
        Some(MerkleProof { leaf_index: index as u64, tree_size: self.len() as u64, path })
    }
}

/// Proof that a leaf sits at `leaf_index` in a tree of `tree_size` leaves with a given root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Sibling hashes from the leaf level upwards.
    pub path: Vec<ContentHash>,
}

impl MerkleProof {
    /// True when `leaf` at this proof's index hashes up to `root` (RFC 9162 §2.1.3.2).
    pub fn verify(&self, leaf: &ContentHash, root: &ContentHash) -> bool {
        if self.leaf_index >= self.tree_size {
            return false;
        }
        let mut index = self.leaf_index;
        let mut last = self.tree_size - 1;
        let mut hash = leaf_node(leaf);
        for sibling in &self.path {
            if last == 0 {
                return false;
            }
            if index & 1 == 1 || index == last {
                hash = inner_node(sibling, &hash);
                while index & 1 == 0 && index != 0 {
                    index >>= 1;
                    last >>= 1;
                }
            } else {
                hash = inner_node(&hash, sibling);
            }
            index >>= 1;
            last >>= 1;
        }
        last == 0 && hash == *root
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn leaves(count: usize) -> Vec<ContentHash> {
        (0..count).map(|i| ContentHash::of(&i.to_le_bytes())).collect()
    }

    #[test]
    fn root_of_small_trees_follows_the_rfc_6962_shape() {
        let l = leaves(3);
        let expected = inner_node(&inner_node(&leaf_node(&l[0]), &leaf_node(&l[1])), &leaf_node(&l[2]));
        assert_eq!(MerkleTree::new(&l).root(), expected);
        assert_eq!(MerkleTree::new(&l[..1]).root(), leaf_node(&l[0]));
        assert_eq!(MerkleTree::new(&[]).root(), ContentHash::of(b""));
        assert!(MerkleTree::new(&l).proof(3).is_none());
    }

    proptest! {
        #[test]
        fn every_leaf_proves_and_nothing_else_does(count in 1usize..70, pick in any::<prop::sample::Index>()) {
            let l = leaves(count);
            let tree = MerkleTree::new(&l);
            let root = tree.root();
            let index = pick.index(count);
            let proof = tree.proof(index).expect("in range");
            prop_assert!(proof.verify(&l[index], &root));
            // the wrong leaf, a moved index, a tampered path or another root all fail
            prop_assert!(!proof.verify(&ContentHash::of(b"intruder"), &root));
            if count > 1 {
                let moved = MerkleProof { leaf_index: (proof.leaf_index + 1) % count as u64, ..proof.clone() };
                prop_assert!(!moved.verify(&l[index], &root));
                let mut tampered = proof.clone();
                tampered.path[0] = ContentHash::of(b"x");
                prop_assert!(!tampered.verify(&l[index], &root));
            }
            let grown = MerkleTree::new(&leaves(count + 1)).root();
            prop_assert!(!proof.verify(&l[index], &grown));
        }
    }
}
