//! The dedup step alone (signature, lookup, insert) on 1 KB records, single-threaded.
//! Run: `cargo bench -p openledger-datanet-ingest --bench dedup [-- RECORDS]`.

use std::time::Instant;

use openledger_datanet_ingest::dedup::{DedupParams, MinHasher, NearDuplicateIndex};

fn main() {
    let records: usize = std::env::args().filter_map(|arg| arg.parse().ok()).next().unwrap_or(50_000);
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut word = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        format!("w{}", state % 50_000)
    };
    // About 1 KB each: 170 words of 5–6 characters.
    let corpus: Vec<String> = (0..records).map(|_| (0..170).map(|_| word()).collect::<Vec<_>>().join(" ")).collect();
    let bytes: usize = corpus.iter().map(String::len).sum();
    let params = DedupParams::default();
    let hasher = MinHasher::new(params);
    let mut index = NearDuplicateIndex::new(params);
    let started = Instant::now();
    let mut duplicates = 0;
    for (id, text) in corpus.iter().enumerate() {
        let signature = hasher.signature(text).expect("words");
        if index.nearest(&signature).is_some() {
            duplicates += 1;
        }
        index.insert(id, signature).expect("room");
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "dedup: {records} records of {} B average: {:.0} records/s on one core ({:.1} µs each), {duplicates} flagged",
        bytes / records,
        records as f64 / elapsed,
        elapsed * 1e6 / records as f64
    );
}
