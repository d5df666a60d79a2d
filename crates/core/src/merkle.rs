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

    /// BLAKE3 of the eight leaf inputs of certificate-transparency's reference tree (RFC 6962
    /// test data): the entries of the known-answer trees below.
    fn reference_entries() -> Vec<ContentHash> {
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        inputs.iter().map(|input| ContentHash::of(input)).collect()
    }

    fn hash(hex: &str) -> ContentHash {
        hex.parse().expect("hex")
    }

    /// Roots of the first 0..=8 reference entries, computed apart from this code by
    /// `crates/core/testdata/merkle_vectors.py` (RFC 9162's MTH with BLAKE3; the script first
    /// checks that its MTH reproduces RFC 6962's published SHA-256 roots of the same tree).
    const REFERENCE_ROOTS: [&str; 9] = [
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        "76c53350d5239fe431e43ba7be2864f5fd1f059aa223bdc1fd89dcfc2ea6dacf",
        "2b33fa19ba96a56309e1e01de05b9f8d2460f9ddc1c80c96c8f4836f0abfb2ab",
        "5f3c382d8a00bee67bac029078536c4af0d522e174afdf3bd57f7e49086ff08a",
        "857cf601ac8cc31a9baa808956eb8412c12729b6ec787b4cf5d379b68d180e84",
        "a05e1d52afba31c40cedb824bf3d72ea5549782edb30dce7360442c315444845",
        "7490e3ac146be94346708be2406a80715f7b9e53b929ac754f2eb1acd21eb397",
        "2884033790535bff0cc656057875c2e286418e8c13e36eef949732a8cededc96",
        "76f4e2c1a22ea139c43b6535acaa3beb3f3dff788aee02b18dcef9393d9f2d48",
    ];

    /// (leaf index, tree size, RFC 9162 inclusion path) from the same script.
    const REFERENCE_PROOFS: &[(u64, u64, &[&str])] = &[
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "06c735e42b9a521df7e4904a4f685c1e84777bd9cf2755c4fa975b0fda387054",
                "6f5e49a07d419f2fc6a6e54fa19f6183de59f7fee18c18cc4b4b15182cf40bc6",
                "99337dd63a299a5701dead5b01295d56e25527072bde795ea861511654ec23ac",
            ],
        ),
        (
            5,
            8,
            &[
                "053768fd7d3228109e61d3a4a8c7a138dddf2d4587e9898b67fb772ea6a8b0ad",
                "9bb0ad0e2ed019151f1aa7e5ce5e3f65c883520d078032cb831cfdbd81d9306e",
                "857cf601ac8cc31a9baa808956eb8412c12729b6ec787b4cf5d379b68d180e84",
            ],
        ),
        (2, 3, &["2b33fa19ba96a56309e1e01de05b9f8d2460f9ddc1c80c96c8f4836f0abfb2ab"]),
        (
            1,
            5,
            &[
                "76c53350d5239fe431e43ba7be2864f5fd1f059aa223bdc1fd89dcfc2ea6dacf",
                "6f5e49a07d419f2fc6a6e54fa19f6183de59f7fee18c18cc4b4b15182cf40bc6",
                "053768fd7d3228109e61d3a4a8c7a138dddf2d4587e9898b67fb772ea6a8b0ad",
            ],
        ),
        (
            6,
            7,
            &[
                "d537443cc78780b5db8201cdbfecc1e507e38d013525ee8dd9848102991f4835",
                "857cf601ac8cc31a9baa808956eb8412c12729b6ec787b4cf5d379b68d180e84",
            ],
        ),
        (4, 5, &["857cf601ac8cc31a9baa808956eb8412c12729b6ec787b4cf5d379b68d180e84"]),
    ];

    #[test]
    fn roots_match_independently_computed_rfc_9162_vectors() {
        let entries = reference_entries();
        for (size, expected) in REFERENCE_ROOTS.iter().enumerate() {
            assert_eq!(MerkleTree::new(&entries[..size]).root(), hash(expected), "root of {size} leaves");
        }
    }

    #[test]
    fn proofs_match_independently_computed_rfc_9162_vectors() {
        let entries = reference_entries();
        for &(index, size, path) in REFERENCE_PROOFS {
            let tree = MerkleTree::new(&entries[..size as usize]);
            let proof = tree.proof(index as usize).expect("in range");
            let expected =
                MerkleProof { leaf_index: index, tree_size: size, path: path.iter().map(|h| hash(h)).collect() };
            assert_eq!(proof, expected, "proof of leaf {index} in {size}");
            let root = hash(REFERENCE_ROOTS[size as usize]);
            assert!(expected.verify(&entries[index as usize], &root), "leaf {index} of {size} verifies");
        }
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
