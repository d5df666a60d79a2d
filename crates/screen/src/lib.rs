//! Screening of record text, shared by Datanet ingest and attribution: a cheap quality score
//! (spam and word salad score low) and near-duplicate detection (MinHash over shingles, LSH).
//! It owns no policy and no storage: ingest decides what to refuse, attribution what to pay.

pub mod dedup;
pub mod quality;

/// Records one near-duplicate index holds at most by default (see [`dedup::DedupParams`]).
pub const MAX_INDEXED_RECORDS: usize = 1_000_000;
