//! One shard in memory: its token text, its suffix array (fixed-width little-endian positions)
//! and where its records start; the searches a query makes on it.

use std::ops::Range;

use super::SEPARATOR_TOKEN;

#[derive(Debug)]
pub(super) struct Shard {
    /// The records' tokens, each followed by [`SEPARATOR_TOKEN`].
    pub tokens: Vec<u16>,
    /// Start positions of the suffixes that begin with a real token, sorted, `pointer_bytes` each.
    pub suffixes: Vec<u8>,
    pub pointer_bytes: usize,
    /// Where each record of the shard starts in `tokens`, increasing.
    pub record_starts: Vec<u64>,
    /// The index in the corpus of the shard's first record.
    pub first_record: usize,
}

impl Shard {
    /// Number of suffixes in the array.
    pub fn len(&self) -> usize {
        self.suffixes.len() / self.pointer_bytes
    }

    /// Where the `rank`-th smallest suffix starts.
    pub fn suffix(&self, rank: usize) -> usize {
        let at = rank * self.pointer_bytes;
        let mut bytes = [0u8; 8];
        bytes[..self.pointer_bytes].copy_from_slice(&self.suffixes[at..at + self.pointer_bytes]);
        u64::from_le_bytes(bytes) as usize
    }

    /// The text from where the `rank`-th suffix starts, at most `len` tokens.
    fn prefix(&self, rank: usize, len: usize) -> &[u16] {
        let start = self.suffix(rank);
        &self.tokens[start..self.tokens.len().min(start + len)]
    }

    /// The ranks of the suffixes that start with `pattern`.
    pub fn find(&self, pattern: &[u16]) -> Range<usize> {
        let start = partition(0..self.len(), |rank| self.prefix(rank, pattern.len()) < pattern);
        let end = partition(start..self.len(), |rank| self.prefix(rank, pattern.len()) <= pattern);
        start..end
    }

    /// How many leading tokens of `pattern` occur together in this shard; a separator in the
    /// pattern ends the match. The longest match is next to where `pattern` would sort
    /// (infini-gram's way: one binary search, then two common prefixes).
    pub fn longest_prefix(&self, pattern: &[u16]) -> usize {
        let pattern = &pattern[..pattern.iter().position(|&t| t == SEPARATOR_TOKEN).unwrap_or(pattern.len())];
        let rank = partition(0..self.len(), |rank| self.prefix(rank, pattern.len()) < pattern);
        let common = |rank: usize| {
            let prefix = self.prefix(rank, pattern.len());
            prefix.iter().zip(pattern).take_while(|(a, b)| a == b).count()
        };
        let before = rank.checked_sub(1).map_or(0, common);
        let at = if rank < self.len() { common(rank) } else { 0 };
        before.max(at)
    }

    /// The corpus index of the record holding token position `position`.
    pub fn record_of(&self, position: usize) -> usize {
        let in_shard = self.record_starts.partition_point(|&start| start as usize <= position) - 1;
        self.first_record + in_shard
    }
}

/// The first index in `range` where `before` turns false (`before` is true, then false).
fn partition(range: Range<usize>, before: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (range.start, range.end);
    while low < high {
        let middle = low + (high - low) / 2;
        if before(middle) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}
