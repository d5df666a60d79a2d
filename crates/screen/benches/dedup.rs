//! The dedup step alone (signature, lookup, insert) on 1 KB records, single-threaded, over a
//! generated corpus with planted near-duplicates, so one run measures speed and quality; the
//! step is also timed under the scheme before 2026-12-04 (word shingles at every length). These
//! records are long (over 900 normalised characters), so both use word 5-grams; short records are
//! measured by the `screen` bench.
//! Run: `cargo bench -p openledger-screen --bench dedup [-- RECORDS] [--repeat N] [--write-corpus PATH]`.
//! `--repeat N` times N passes (each with a fresh index) and reports the fastest.
//!
//! `--write-corpus PATH` also writes the corpus as JSON lines
//! (`{"id", "text", "dup_of": id | null, "jaccard": exact | null}`) so that
//! `bench/datasketch/compare.py` runs Python `datasketch` on the identical records.

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::time::Instant;

use openledger_screen::dedup::{self, DedupParams, MinHasher, NearDuplicateIndex};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// About 1 KB per record: 170 words of 5–6 characters.
const WORDS_PER_RECORD: usize = 170;
const VOCABULARY_WORDS: u64 = 50_000;
/// Share of records that are edited copies of an earlier record (each original copied once).
const PLANTED_PERCENT: u64 = 20;
/// Chance per word of an edit (replace, delete or insert after) in a planted copy. With
/// 5-word shingles the exact Jaccard goes from about 0.97 (0.5%) down to about 0.2 (20%), so
/// the planted pairs lie on both sides of the 0.8 threshold and below 0.5.
const EDIT_RATES: [f64; 9] = [0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.12, 0.2];

/// A word of the vocabulary, from the seeded generator (the same corpus every run).
fn word(rng: &mut StdRng) -> String {
    format!("w{}", rng.random_range(0..VOCABULARY_WORDS))
}

struct Record {
    text: String,
    /// The earlier record this one is an edited copy of, with the exact Jaccard similarity of
    /// their 5-gram shingle sets.
    planted: Option<(usize, f64)>,
}

fn edited_copy(original: &str, rate: f64, rng: &mut StdRng) -> String {
    let mut words = Vec::with_capacity(WORDS_PER_RECORD + WORDS_PER_RECORD / 4);
    for kept in original.split_whitespace() {
        if !rng.random_bool(rate) {
            words.push(kept.to_owned());
            continue;
        }
        match rng.random_range(0..3) {
            0 => words.push(word(rng)),
            1 => {}
            _ => words.extend([kept.to_owned(), word(rng)]),
        }
    }
    words.join(" ")
}

/// Exact Jaccard similarity of the two texts' shingle sets, with the shingles the index uses.
fn exact_jaccard(a: &str, b: &str, words_per_shingle: usize) -> f64 {
    let a: HashSet<String> = dedup::shingles(a, words_per_shingle).into_iter().collect();
    let b: HashSet<String> = dedup::shingles(b, words_per_shingle).into_iter().collect();
    a.intersection(&b).count() as f64 / a.union(&b).count().max(1) as f64
}

/// `records` texts of which about `PLANTED_PERCENT` are edited copies of earlier random ones,
/// the edit rates taken in turn from `EDIT_RATES`.
fn generate_corpus(records: usize, words_per_shingle: usize) -> Vec<Record> {
    let mut rng = StdRng::seed_from_u64(0x1234_5678_9abc_def0);
    let mut corpus: Vec<Record> = Vec::with_capacity(records);
    let mut uncopied_originals: Vec<usize> = Vec::new();
    let mut planted = 0;
    for id in 0..records {
        if rng.random_range(0..100) < PLANTED_PERCENT && !uncopied_originals.is_empty() {
            let original = uncopied_originals.swap_remove(rng.random_range(0..uncopied_originals.len()));
            let rate = EDIT_RATES[planted % EDIT_RATES.len()];
            planted += 1;
            let text = edited_copy(&corpus[original].text, rate, &mut rng);
            let jaccard = exact_jaccard(&corpus[original].text, &text, words_per_shingle);
            corpus.push(Record { text, planted: Some((original, jaccard)) });
        } else {
            let text = (0..WORDS_PER_RECORD).map(|_| word(&mut rng)).collect::<Vec<_>>().join(" ");
            corpus.push(Record { text, planted: None });
            uncopied_originals.push(id);
        }
    }
    corpus
}

fn write_corpus(path: &str, corpus: &[Record]) -> std::io::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    for (id, record) in corpus.iter().enumerate() {
        let line = serde_json::json!({
            "id": id,
            "text": record.text,
            "dup_of": record.planted.map(|(original, _)| original),
            "jaccard": record.planted.map(|(_, jaccard)| jaccard),
        });
        writeln!(out, "{line}")?;
    }
    out.flush()
}

/// Counts over the planted pairs and the random records, given each record's lookup result.
#[derive(Default)]
struct Quality {
    high_pairs: usize,
    high_found: usize,
    middle_pairs: usize,
    middle_flagged: usize,
    low_pairs: usize,
    low_flagged: usize,
    random_records: usize,
    random_flagged: usize,
}

impl Quality {
    fn of(corpus: &[Record], nearest: &[Option<usize>], threshold: f64) -> Self {
        let mut quality = Quality::default();
        for (record, nearest) in corpus.iter().zip(nearest) {
            match record.planted {
                // Found means flagged as a near-duplicate of the record it was copied from.
                Some((original, jaccard)) if jaccard >= threshold => {
                    quality.high_pairs += 1;
                    quality.high_found += usize::from(*nearest == Some(original));
                }
                Some((_, jaccard)) if jaccard < 0.5 => {
                    quality.low_pairs += 1;
                    quality.low_flagged += usize::from(nearest.is_some());
                }
                Some(_) => {
                    quality.middle_pairs += 1;
                    quality.middle_flagged += usize::from(nearest.is_some());
                }
                None => {
                    quality.random_records += 1;
                    quality.random_flagged += usize::from(nearest.is_some());
                }
            }
        }
        quality
    }

    fn recall(&self) -> f64 {
        self.high_found as f64 / self.high_pairs.max(1) as f64
    }

    /// Flagged planted pairs below 0.5 and flagged random records, over both.
    fn false_positive_rate(&self) -> f64 {
        (self.low_flagged + self.random_flagged) as f64 / (self.low_pairs + self.random_records).max(1) as f64
    }
}

/// Signs, looks up and inserts every record in order into a fresh index: the timed dedup step.
/// Returns the seconds it took and, per record, the id of the indexed record it matched.
fn dedup_step(corpus: &[Record], params: DedupParams) -> (f64, Vec<Option<usize>>) {
    let hasher = MinHasher::new(params);
    let mut index = NearDuplicateIndex::new(params);
    let mut nearest = Vec::with_capacity(corpus.len());
    let started = Instant::now();
    for (id, record) in corpus.iter().enumerate() {
        let signatures = hasher.signatures(&record.text).expect("words");
        nearest.push(index.nearest_to(&signatures).map(|(found, _)| found));
        index.insert(id, signatures.indexed).expect("room");
    }
    (started.elapsed().as_secs_f64(), nearest)
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|field| field.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Bytes of resident memory one indexed record costs (an index of the whole corpus, built once
/// before anything else allocates).
fn index_bytes_per_record(corpus: &[Record], params: DedupParams) -> f64 {
    let hasher = MinHasher::new(params);
    let before = resident_bytes();
    let mut index = NearDuplicateIndex::new(params);
    for (id, record) in corpus.iter().enumerate() {
        index.insert(id, hasher.signature(&record.text).expect("words")).expect("room");
    }
    let grown = resident_bytes().saturating_sub(before);
    drop(index);
    grown as f64 / corpus.len().max(1) as f64
}

fn main() {
    let mut records = 50_000;
    let mut repeats = 1;
    let mut corpus_path = None;
    // `cargo bench` passes `--bench`; anything unknown is ignored like a harness would.
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--write-corpus" => corpus_path = Some(args.next().expect("--write-corpus needs a path")),
            "--repeat" => repeats = args.next().and_then(|n| n.parse().ok()).expect("--repeat needs a count"),
            _ => records = arg.parse().unwrap_or(records),
        }
    }
    let params = DedupParams::default();
    let corpus = generate_corpus(records, params.shingle_words);
    if let Some(path) = &corpus_path {
        write_corpus(path, &corpus).expect("write the corpus");
        println!("corpus: {records} records written to {path}");
    }
    let bytes: usize = corpus.iter().map(|record| record.text.len()).sum();

    // Measured first, while freed memory cannot hide the index's growth.
    let per_record = index_bytes_per_record(&corpus, params);
    println!("memory: the index costs {per_record:.0} B of resident memory per record ({records} records)");
    // On a shared machine the fastest of several passes is the one least disturbed.
    let (mut elapsed, nearest) = dedup_step(&corpus, params);
    for _ in 1..repeats {
        elapsed = elapsed.min(dedup_step(&corpus, params).0);
    }

    // The same records under the scheme before 2026-12-04 (word shingles at every length), in
    // the same run: these records are long, so the two differ only by the length check.
    let words_only = DedupParams { short_record_max_chars: 0, ..params };
    let mut elapsed_before = f64::INFINITY;
    for _ in 0..repeats {
        elapsed_before = elapsed_before.min(dedup_step(&corpus, words_only).0);
    }
    println!(
        "dedup before 2026-12-04 (word shingles only): {:.0} records/s ({:.1} µs each)",
        records as f64 / elapsed_before,
        elapsed_before * 1e6 / records as f64
    );

    let flagged = nearest.iter().filter(|found| found.is_some()).count();
    println!(
        "dedup: {records} records of {} B average: {:.0} records/s on one core ({:.1} µs each), {flagged} flagged",
        bytes / records.max(1),
        records as f64 / elapsed,
        elapsed * 1e6 / records as f64
    );
    let quality = Quality::of(&corpus, &nearest, params.threshold);
    println!(
        "quality: recall {:.4} over {} planted pairs with J ≥ {}; false-positive rate {:.4} over {} \
         ({} of {} planted pairs with J < 0.5 and {} of {} random records flagged); \
         {} of {} planted pairs with 0.5 ≤ J < {} flagged",
        quality.recall(),
        quality.high_pairs,
        params.threshold,
        quality.false_positive_rate(),
        quality.low_pairs + quality.random_records,
        quality.low_flagged,
        quality.low_pairs,
        quality.random_flagged,
        quality.random_records,
        quality.middle_flagged,
        quality.middle_pairs,
        params.threshold,
    );
}
