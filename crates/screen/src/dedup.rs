//! Near-duplicate detection for Datanet records: MinHash signatures over shingles, indexed by
//! LSH banding. A record is a near-duplicate of an indexed one when the MinHash estimate of the
//! Jaccard similarity of their shingle sets reaches the threshold (0.8 by default).
//!
//! Shingles follow the record's length. Word 5-grams suit long records (a few edited words leave
//! most 5-grams intact) but not short ones: in a 20-word record one replaced word breaks 5 of its
//! 16 shingles, two break about half, so copies of short records with one word in ten changed
//! slipped through. Records whose normalised text (lower case, every run of characters other
//! than letters and digits made one space) has fewer than `short_record_max_chars` characters
//! (600, about 100 English words) are therefore shingled by characters instead: 4-character
//! windows of the normalised text, where one replaced word breaks only the windows that touch it
//! (the `screen` bench chose 4 on natural short texts, see bench/RESULTS.md).
//!
//! The two schemes hash their shingles into separate domains (character windows with their own
//! seed), so a signature of one never matches a signature of the other: the estimate of two
//! disjoint sets is 0. One index therefore holds both, and comparing any two signatures is
//! meaningful. A record is indexed under its own scheme and looked up under both when records of
//! the other scheme could be near-duplicates of it ([`MinHasher::signatures`]): a short record
//! also by word shingles (a long record cut down below the limit), a record up to half again
//! above the limit also by characters (a short record grown past it). Word signatures are the
//! same as before the character scheme existed (`openledger/minhash/v2`, unchanged), so stored
//! signatures stay valid; short records stored before then carry word signatures and are still
//! found by the word lookup, at the sensitivity they had.
//!
//! Parameters: 128 permutations in 32 bands of 4 rows. A pair at Jaccard 0.8 becomes a
//! candidate with probability 1 − (1 − 0.8⁴)³² ≈ 1; candidates are accepted when the estimate
//! reaches the threshold minus three standard deviations of the estimator at the threshold
//! (σ = √(J(1−J)/k) ≈ 0.035, so 0.8 → 0.69), which keeps recall at the threshold high while a
//! pair at 0.5 would need an estimate more than four σ too high to pass.
//!
//! Memory: each indexed record costs its signature (4 bytes × permutations = 512 B), one chain
//! link per band (32 × 4 B) and up to one hash-map slot per band (32 × about 19 B): about
//! 1.4 KiB per record with its id (the `dedup` bench measured 1,411 B of resident memory per
//! record over 200,000 records), bounded by `max_records`.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Longest shingle, in words.
pub const MAX_SHINGLE_WORDS: usize = 16;
/// Longest shingle, in characters.
pub const MAX_SHINGLE_CHARS: usize = 16;
/// Seed of the character-shingle hashes: keeps them apart from word shingles.
const CHAR_SHINGLE_SEED: u64 = 0x6368_6172_7368_696e;

/// Tuning of the near-duplicate index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DedupParams {
    pub permutations: usize,
    pub bands: usize,
    /// Jaccard similarity at which a record counts as a near-duplicate.
    pub threshold: f64,
    /// Words per shingle of records at or above `short_record_max_chars`.
    pub shingle_words: usize,
    /// Characters per shingle of records below `short_record_max_chars`.
    pub shingle_chars: usize,
    /// Records whose normalised text has fewer characters are shingled by characters; 0 shingles
    /// every record by words (the scheme before 2026-12-04).
    pub short_record_max_chars: usize,
    /// Most records one index holds.
    pub max_records: usize,
}

impl Default for DedupParams {
    fn default() -> Self {
        Self {
            permutations: 128,
            bands: 32,
            threshold: 0.8,
            shingle_words: 5,
            shingle_chars: 4,
            short_record_max_chars: 600,
            max_records: crate::MAX_INDEXED_RECORDS,
        }
    }
}

impl DedupParams {
    /// Whether a record with this many normalised characters is indexed by character shingles.
    pub fn is_short(&self, normalised_chars: usize) -> bool {
        normalised_chars < self.short_record_max_chars
    }

    /// Whether a record this long is also looked up by character shingles: short records grown
    /// by edits past the limit (up to half again) stay comparable with their originals.
    fn probes_characters(&self, normalised_chars: usize) -> bool {
        normalised_chars < self.short_record_max_chars + self.short_record_max_chars / 2
    }

    fn rows(&self) -> usize {
        self.permutations / self.bands
    }

    /// The estimate at which a candidate is accepted (threshold − 3σ of the estimator).
    pub fn accept_at(&self) -> f64 {
        let sigma = (self.threshold * (1.0 - self.threshold) / self.permutations as f64).sqrt();
        (self.threshold - 3.0 * sigma).max(0.0)
    }

    /// Checks the parameters; the reason says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.permutations == 0 || self.bands == 0 || !self.permutations.is_multiple_of(self.bands) {
            return Err("permutations must be a positive multiple of bands".into());
        }
        if !(0.0..=1.0).contains(&self.threshold) || self.threshold == 0.0 {
            return Err("threshold must be in (0, 1]".into());
        }
        if self.shingle_words == 0 || self.max_records == 0 {
            return Err("shingle_words and max_records must be positive".into());
        }
        if self.rows() > 64 {
            return Err("a band holds at most 64 rows".into());
        }
        if self.shingle_words > MAX_SHINGLE_WORDS {
            return Err(format!("shingle_words must be at most {MAX_SHINGLE_WORDS}"));
        }
        if !(1..=MAX_SHINGLE_CHARS).contains(&self.shingle_chars) {
            return Err(format!("shingle_chars must be in 1..={MAX_SHINGLE_CHARS}"));
        }
        Ok(())
    }
}

/// A MinHash signature: one minimum per permutation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature(pub Vec<u32>);

impl Signature {
    /// The MinHash estimate of the Jaccard similarity of the two shingle sets.
    pub fn similarity(&self, other: &Signature) -> f64 {
        let same = self.0.iter().zip(&other.0).filter(|(a, b)| a == b).count();
        same as f64 / self.0.len().max(1) as f64
    }
}

/// Word shingles of normalized text: lower case, split on whitespace, `n` words each (the
/// whole text when it has fewer words).
pub fn shingles(text: &str, words_per_shingle: usize) -> Vec<String> {
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    if words.len() <= words_per_shingle {
        return if words.is_empty() { Vec::new() } else { vec![words.join(" ")] };
    }
    words.windows(words_per_shingle).map(|window| window.join(" ")).collect()
}

/// The text character shingles are taken from: lower case, each run of characters other than
/// letters and digits made one space, no space at either end.
pub fn normalise(text: &str) -> String {
    let mut normalised = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_alphanumeric() {
            normalised.extend(c.to_lowercase());
        } else if !normalised.is_empty() && !normalised.ends_with(' ') {
            normalised.push(' ');
        }
    }
    if normalised.ends_with(' ') {
        normalised.pop();
    }
    normalised
}

/// The characters of [`normalise`]'s result, counted without building it (long records, the
/// most bytes, need no normalised text).
fn normalised_len(text: &str) -> usize {
    let (mut length, mut pending_space) = (0, false);
    for c in text.chars() {
        if c.is_alphanumeric() {
            length += c.to_lowercase().count() + usize::from(pending_space);
            pending_space = false;
        } else {
            pending_space = length > 0;
        }
    }
    length
}

/// Character shingles of the normalised text, `n` characters each (the whole text when it is
/// shorter).
pub fn char_shingles(text: &str, chars_per_shingle: usize) -> Vec<String> {
    let chars: Vec<char> = normalise(text).chars().collect();
    if chars.len() <= chars_per_shingle {
        return if chars.is_empty() { Vec::new() } else { vec![chars.iter().collect()] };
    }
    chars.windows(chars_per_shingle).map(|window| window.iter().collect()).collect()
}

/// A record's signatures: the one it is indexed under and, when records of the other scheme
/// could be near-duplicates of it, the other scheme's one, to look it up with as well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSignatures {
    /// Character shingles for short records, word shingles otherwise; what is indexed and stored.
    pub indexed: Signature,
    /// Looked up, never indexed.
    pub probe: Option<Signature>,
}

/// Computes signatures with a fixed family of permutations (the same for every process, so
/// signatures can be stored and compared across restarts).
#[derive(Clone, Debug)]
pub struct MinHasher {
    params: DedupParams,
    multipliers: Vec<u64>,
    offsets: Vec<u64>,
}

impl MinHasher {
    pub fn new(params: DedupParams) -> Self {
        // Multiply-shift hashing: odd multipliers and offsets derived from a fixed seed.
        let derive = |label: &str, index: usize| {
            let hash = blake3::hash(format!("openledger/minhash/v2/{label}/{index}").as_bytes());
            u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
        };
        let multipliers = (0..params.permutations).map(|i| derive("a", i) | 1).collect();
        let offsets = (0..params.permutations).map(|i| derive("b", i)).collect();
        Self { params, multipliers, offsets }
    }

    pub fn params(&self) -> &DedupParams {
        &self.params
    }

    /// The signature `text` is indexed under; `None` for text without words.
    pub fn signature(&self, text: &str) -> Option<Signature> {
        self.signatures(text).map(|signatures| signatures.indexed)
    }

    /// The signatures `text` is indexed under and looked up with; `None` for text without words.
    pub fn signatures(&self, text: &str) -> Option<RecordSignatures> {
        let length = normalised_len(text);
        let words = || self.minhash(&shingle_hashes(text, self.params.shingle_words));
        let characters = || self.minhash(&char_shingle_hashes(&normalise(text), self.params.shingle_chars));
        if self.params.is_short(length) {
            // Text of symbols only has words but no characters to shingle: its words index it.
            match characters() {
                Some(indexed) => Some(RecordSignatures { indexed, probe: words() }),
                None => words().map(|indexed| RecordSignatures { indexed, probe: None }),
            }
        } else {
            let probe = if self.params.probes_characters(length) { characters() } else { None };
            words().map(|indexed| RecordSignatures { indexed, probe })
        }
    }

    fn minhash(&self, shingles: &[u64]) -> Option<Signature> {
        if shingles.is_empty() {
            return None;
        }
        let mut minimums = vec![u32::MAX; self.params.permutations];
        for &x in shingles {
            for ((minimum, a), b) in minimums.iter_mut().zip(&self.multipliers).zip(&self.offsets) {
                let value = (a.wrapping_mul(x).wrapping_add(*b) >> 32) as u32;
                *minimum = (*minimum).min(value);
            }
        }
        Some(Signature(minimums))
    }
}

/// 64-bit hashes of the word shingles of `text` (the same sets as [`shingles`], without
/// building strings): each lower-cased word is hashed once with XXH3, and each window of
/// `n` word hashes is hashed again, in order.
pub fn shingle_hashes(text: &str, n: usize) -> Vec<u64> {
    let words: Vec<u64> = text
        .split_whitespace()
        .map(|word| {
            if word.bytes().any(|byte| byte.is_ascii_uppercase() || !byte.is_ascii()) {
                xxh3_64(word.to_lowercase().as_bytes())
            } else {
                xxh3_64(word.as_bytes())
            }
        })
        .collect();
    let window = |hashes: &[u64]| {
        let mut bytes = [0u8; 8 * MAX_SHINGLE_WORDS];
        for (slot, hash) in bytes.chunks_exact_mut(8).zip(hashes) {
            slot.copy_from_slice(&hash.to_le_bytes());
        }
        xxh3_64(&bytes[..8 * hashes.len().min(MAX_SHINGLE_WORDS)])
    };
    let n = n.min(MAX_SHINGLE_WORDS);
    if words.len() <= n {
        return if words.is_empty() { Vec::new() } else { vec![window(&words)] };
    }
    words.windows(n).map(window).collect()
}

/// 64-bit hashes of the character shingles of already normalised text (the same sets as
/// [`char_shingles`]): XXH3 of each window's UTF-8 bytes, seeded apart from word shingles.
fn char_shingle_hashes(normalised: &str, n: usize) -> Vec<u64> {
    let n = n.min(MAX_SHINGLE_CHARS);
    let starts: Vec<usize> = normalised.char_indices().map(|(at, _)| at).chain([normalised.len()]).collect();
    let chars = starts.len() - 1;
    if chars <= n {
        return if chars == 0 { Vec::new() } else { vec![xxh3_64_with_seed(normalised.as_bytes(), CHAR_SHINGLE_SEED)] };
    }
    starts
        .windows(n + 1)
        .map(|window| xxh3_64_with_seed(&normalised.as_bytes()[window[0]..window[n]], CHAR_SHINGLE_SEED))
        .collect()
}

/// Why a record could not be indexed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DedupError {
    #[error("the near-duplicate index is full ({0} records): raise max_records or shard the Datanet")]
    Full(usize),
    #[error("the signature has {got} values, the index expects {expected}")]
    WrongLength { got: usize, expected: usize },
}

/// Indexed signatures, found again by LSH banding.
#[derive(Debug)]
pub struct NearDuplicateIndex<Id> {
    params: DedupParams,
    records: Vec<(Id, Signature)>,
    /// Band key → the last record inserted with it; earlier ones are chained through `next`.
    heads: HashMap<u64, u32, BuildHasherDefault<PrehashedKey>>,
    /// `next[position * bands + band]`: the previous record with the same key in that band.
    next: Vec<u32>,
}

/// Band keys are already hashes: the map uses them as they are.
#[derive(Default)]
struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// No record: the end of a chain.
const NONE: u32 = u32::MAX;

impl<Id: Clone> NearDuplicateIndex<Id> {
    pub fn new(params: DedupParams) -> Self {
        Self { params, records: Vec::new(), heads: HashMap::default(), next: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// One key per band: the band's index and values hashed together.
    fn band_keys(&self, signature: &Signature) -> impl Iterator<Item = u64> {
        let rows = self.params.rows();
        signature.0.chunks_exact(rows).enumerate().map(|(band, values)| {
            let mut bytes = [0u8; 4 * 64];
            let used = values.len().min(64);
            for (slot, value) in bytes.chunks_exact_mut(4).zip(&values[..used]) {
                slot.copy_from_slice(&value.to_le_bytes());
            }
            xxh3_64_with_seed(&bytes[..4 * used], band as u64)
        })
    }

    /// The most similar indexed record to either of a record's signatures ([`Self::nearest`]).
    pub fn nearest_to(&self, signatures: &RecordSignatures) -> Option<(Id, f64)> {
        let indexed = self.nearest(&signatures.indexed);
        let probed = signatures.probe.as_ref().and_then(|probe| self.nearest(probe));
        match (indexed, probed) {
            (Some(a), Some(b)) => Some(if b.1 > a.1 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// The most similar indexed record whose estimated similarity reaches the acceptance
    /// level, with that similarity.
    pub fn nearest(&self, signature: &Signature) -> Option<(Id, f64)> {
        let bands = self.params.bands;
        let mut candidates = Vec::new();
        for (band, key) in self.band_keys(signature).enumerate() {
            let mut position = self.heads.get(&key).copied().unwrap_or(NONE);
            while position != NONE {
                candidates.push(position);
                position = self.next[position as usize * bands + band];
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let accept_at = self.params.accept_at();
        let mut best: Option<(u32, f64)> = None;
        for position in candidates {
            let similarity = self.records[position as usize].1.similarity(signature);
            if similarity >= accept_at && best.is_none_or(|(_, s)| similarity > s) {
                best = Some((position, similarity));
            }
        }
        best.map(|(position, similarity)| (self.records[position as usize].0.clone(), similarity))
    }

    /// Adds a record's signature.
    pub fn insert(&mut self, id: Id, signature: Signature) -> Result<(), DedupError> {
        if signature.0.len() != self.params.permutations {
            return Err(DedupError::WrongLength { got: signature.0.len(), expected: self.params.permutations });
        }
        if self.records.len() >= self.params.max_records {
            return Err(DedupError::Full(self.params.max_records));
        }
        let position = self.records.len() as u32;
        let keys: Vec<u64> = self.band_keys(&signature).collect();
        for key in keys {
            let previous = self.heads.insert(key, position).unwrap_or(NONE);
            self.next.push(previous);
        }
        self.records.push((id, signature));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    /// A word of a 50,000-word vocabulary, from a seeded generator (the same corpus every run).
    fn word(rng: &mut StdRng) -> String {
        format!("w{}", rng.random_range(0..50_000))
    }

    fn exact_jaccard(a: &str, b: &str) -> f64 {
        let (a, b): (HashSet<String>, HashSet<String>) =
            (shingles(a, 5).into_iter().collect(), shingles(b, 5).into_iter().collect());
        a.intersection(&b).count() as f64 / a.union(&b).count().max(1) as f64
    }

    /// The first four values, computed by the code before character shingles (commit 062f1fd).
    const GOLDEN_WORD_SIGNATURE: [u32; 4] = [8_573_510, 11_055_278, 730_261, 51_339_752];

    proptest! {
        /// Hashed shingles are the string shingles, one hash each (no collisions in practice).
        #[test]
        fn shingle_hashes_stand_for_the_shingles(words in proptest::collection::vec("[a-zA-Zé]{1,6}", 0..40)) {
            let text = words.join(" ");
            let strings: HashSet<String> = shingles(&text, 5).into_iter().collect();
            let hashes: HashSet<u64> = shingle_hashes(&text, 5).into_iter().collect();
            prop_assert_eq!(strings.len(), hashes.len());
            prop_assert_eq!(shingle_hashes(&text.to_uppercase(), 5), shingle_hashes(&text.to_lowercase(), 5));
            prop_assert_eq!(normalised_len(&text), normalise(&text).chars().count());
            let strings: HashSet<String> = char_shingles(&text, 4).into_iter().collect();
            let hashes: HashSet<u64> = char_shingle_hashes(&normalise(&text), 4).into_iter().collect();
            prop_assert_eq!(strings.len(), hashes.len());
        }
    }

    #[test]
    fn identical_texts_match_and_unrelated_ones_do_not() {
        let hasher = MinHasher::new(DedupParams::default());
        let mut rng = StdRng::seed_from_u64(7);
        let text: String = (0..150).map(|_| word(&mut rng)).collect::<Vec<_>>().join(" ");
        let other: String = (0..150).map(|_| word(&mut rng)).collect::<Vec<_>>().join(" ");
        let signature = hasher.signature(&text).expect("words");
        assert_eq!(signature.similarity(&hasher.signature(&text.to_uppercase()).expect("words")), 1.0);
        assert!(signature.similarity(&hasher.signature(&other).expect("words")) < 0.1);
        assert_eq!(hasher.signature("   "), None);
        assert_eq!(MinHasher::new(DedupParams::default()).signature(&text), Some(signature), "stable across instances");
    }

    /// The quality bar on a generated corpus: recall ≥ 0.95 for pairs with Jaccard
    /// ≥ 0.8 and a false-positive rate ≤ 1% for pairs below 0.5.
    #[test]
    fn recall_and_false_positives_on_a_generated_corpus() {
        let params = DedupParams::default();
        let hasher = MinHasher::new(params);
        let mut index = NearDuplicateIndex::new(params);
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut originals = Vec::new();
        for id in 0..400 {
            let text: Vec<String> = (0..170).map(|_| word(&mut rng)).collect();
            index.insert(id, hasher.signature(&text.join(" ")).expect("words")).expect("room");
            originals.push(text);
        }
        let (mut high, mut high_found, mut low, mut low_found) = (0, 0, 0, 0);
        for (id, original) in originals.iter().enumerate() {
            // Edit rates from 0.5% to 12% of the words: Jaccard from about 0.97 down to 0.3.
            for rate in [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12] {
                let edited: Vec<String> = original
                    .iter()
                    .map(|kept| if rng.random_bool(rate) { word(&mut rng) } else { kept.clone() })
                    .collect();
                let edited = edited.join(" ");
                let jaccard = exact_jaccard(&original.join(" "), &edited);
                let nearest = index.nearest(&hasher.signature(&edited).expect("words"));
                if jaccard >= 0.8 {
                    high += 1;
                    high_found += usize::from(nearest.is_some_and(|(found, _)| found == id));
                } else if jaccard < 0.5 {
                    // Flagged as a near-duplicate of anything at all is a false positive.
                    low += 1;
                    low_found += usize::from(nearest.is_some());
                }
            }
        }
        let recall = high_found as f64 / high as f64;
        let false_positive_rate = low_found as f64 / low.max(1) as f64;
        eprintln!(
            "near-duplicates: recall {recall:.4} over {high} pairs with J ≥ 0.8; false positives {false_positive_rate:.4} over {low} pairs with J < 0.5"
        );
        assert!(high > 500 && low > 100, "the corpus covers both sides: {high} high, {low} low");
        assert!(recall >= 0.95, "recall {recall}");
        assert!(false_positive_rate <= 0.01, "false-positive rate {false_positive_rate}");
    }

    /// A natural sentence of 10 to 60 words and a copy with one word in ten replaced.
    const SHORT_PAIRS: [(&str, &str); 4] = [
        (
            "The battery lasts two full days and the screen stays readable in bright sunlight.",
            "The battery lasts two full days and the display stays readable in bright sunlight.",
        ),
        (
            "What is the capital of Australia? The capital of Australia is Canberra, not Sydney, which many people \
             assume because it is the largest city.",
            "What is the capital of Australia? The capital of Australia is Canberra, not Sydney, which most people \
             assume because it is the biggest city.",
        ),
        (
            "Soil moisture sensors measure the water content of the ground. Farmers use the readings to decide \
             when to irrigate, which saves water and keeps the roots from rotting in wet seasons.",
            "Soil moisture sensors measure the water content of the field. Farmers use the readings to decide \
             when to water, which saves water and keeps the roots from rotting in rainy seasons.",
        ),
        (
            "Le sol retient l'eau de pluie et la restitue lentement aux plantes, ce qui permet aux agriculteurs \
             d'arroser moins souvent.",
            "Le sol retient l'eau de pluie et la rend lentement aux plantes, ce qui permet aux agriculteurs \
             d'arroser moins souvent.",
        ),
    ];

    /// Distinct short records on one topic: each pair shares words, not text.
    const SAME_TOPIC: [&str; 4] = [
        "The battery lasts two full days and the screen stays readable in bright sunlight.",
        "Battery life is poor: the phone needs charging twice a day and the screen is too dim outside.",
        "I bought this phone for the camera, but the battery drains fast when the screen is bright.",
        "After a month the screen cracked, although the battery still lasts a full day of use.",
    ];

    #[test]
    fn short_copies_with_one_word_in_ten_replaced_are_flagged() {
        let hasher = MinHasher::new(DedupParams::default());
        for (original, copy) in SHORT_PAIRS {
            let mut index = NearDuplicateIndex::new(DedupParams::default());
            index.insert("original", hasher.signature(original).expect("words")).expect("room");
            let found = index.nearest_to(&hasher.signatures(copy).expect("words"));
            assert_eq!(found.map(|(id, _)| id), Some("original"), "{copy}");
            // The scheme before: word 5-grams miss them.
            let words_only = DedupParams { short_record_max_chars: 0, ..DedupParams::default() };
            let (old_hasher, mut old_index) = (MinHasher::new(words_only), NearDuplicateIndex::new(words_only));
            old_index.insert("original", old_hasher.signature(original).expect("words")).expect("room");
            assert_eq!(old_index.nearest_to(&old_hasher.signatures(copy).expect("words")), None, "{copy}");
        }
    }

    #[test]
    fn distinct_short_records_on_one_topic_are_not_flagged() {
        let hasher = MinHasher::new(DedupParams::default());
        let mut index = NearDuplicateIndex::new(DedupParams::default());
        for (id, text) in SAME_TOPIC.iter().enumerate() {
            let signatures = hasher.signatures(text).expect("words");
            assert_eq!(index.nearest_to(&signatures), None, "{text}");
            index.insert(id, signatures.indexed).expect("room");
        }
    }

    /// Short records are shingled by characters, long ones by words; near the limit both are
    /// looked up, so a copy that crossed the limit is still found.
    #[test]
    fn copies_across_the_length_limit_are_found() {
        let params = DedupParams::default();
        let hasher = MinHasher::new(params);
        let mut rng = StdRng::seed_from_u64(11);
        let words: Vec<String> = (0..400).map(|_| format!("{}", rng.random_range(10_000..99_999))).collect();
        // 95 five-digit words: 569 normalised characters, short; 105 words: 629, long.
        let short = words[..95].join(" ");
        let long = words[..105].join(" ");
        assert!(params.is_short(normalise(&short).chars().count()));
        assert!(!params.is_short(normalise(&long).chars().count()));
        let mut index = NearDuplicateIndex::new(params);
        index.insert("short", hasher.signature(&short).expect("words")).expect("room");
        let found = index.nearest_to(&hasher.signatures(&long).expect("words"));
        assert_eq!(found.map(|(id, _)| id), Some("short"));
        // Far above the limit, a record is looked up by words only.
        assert_eq!(hasher.signatures(&words.join(" ")).expect("words").probe, None);
    }

    /// Word signatures are those of `openledger/minhash/v2` before character shingles existed:
    /// signatures stored then are still comparable with new ones.
    #[test]
    fn word_signatures_are_unchanged_from_minhash_v2() {
        let text = (0..200).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
        let signature = MinHasher::new(DedupParams::default()).signature(&text).expect("words");
        assert_eq!(signature.0[..4], GOLDEN_WORD_SIGNATURE);
        // A character signature never matches a word signature of the same text.
        let short = MinHasher::new(DedupParams::default()).signatures(&text[..300]).expect("words");
        assert_eq!(short.indexed.similarity(short.probe.as_ref().expect("a word probe")), 0.0);
    }

    #[test]
    fn character_shingles_normalise_case_and_punctuation() {
        assert_eq!(normalise("  Hello,   WORLD!! ça-va? "), "hello world ça va");
        assert_eq!(char_shingles("Ab, c", 4), ["ab c"]);
        assert_eq!(char_shingles("abcde", 4), ["abcd", "bcde"]);
        assert!(char_shingles("?!", 4).is_empty());
        let hasher = MinHasher::new(DedupParams::default());
        assert_eq!(hasher.signature("Hello, world"), hasher.signature("hello world!"));
        // Symbols only: no characters to shingle, the words index it.
        assert!(hasher.signature("!!! ???").is_some());
    }

    #[test]
    fn the_index_is_bounded_and_checks_signatures() {
        let params = DedupParams { max_records: 2, ..DedupParams::default() };
        let hasher = MinHasher::new(params);
        let mut index = NearDuplicateIndex::new(params);
        for id in 0..2 {
            index
                .insert(id, hasher.signature(&format!("record number {id} with some words")).expect("words"))
                .expect("room");
        }
        assert_eq!(index.insert(2, hasher.signature("a third record").expect("words")), Err(DedupError::Full(2)));
        assert_eq!(index.insert(3, Signature(vec![1, 2, 3])), Err(DedupError::WrongLength { got: 3, expected: 128 }));
        assert!(DedupParams { bands: 7, ..DedupParams::default() }.validate().is_err());
        assert!(DedupParams::default().validate().is_ok());
        assert!(DedupParams { shingle_chars: 0, ..DedupParams::default() }.validate().is_err());
    }

    proptest! {
        #[test]
        fn estimates_stay_near_the_exact_jaccard(seed in 1u64..u64::MAX, edits in 0usize..60) {
            let hasher = MinHasher::new(DedupParams::default());
            let mut rng = StdRng::seed_from_u64(seed);
            // Words of 8 to 10 characters: over 900 normalised characters, a long record (word shingles).
            let mut words: Vec<String> = (0..120).map(|_| format!("value{}", rng.random_range(0..300))).collect();
            let original = words.join(" ");
            for _ in 0..edits {
                let at = rng.random_range(0..words.len());
                words[at] = format!("value{}", rng.random_range(0..300));
            }
            let edited = words.join(" ");
            let estimate = hasher.signature(&original).expect("words").similarity(&hasher.signature(&edited).expect("words"));
            let exact = exact_jaccard(&original, &edited);
            // k = 128: σ ≤ 0.045, so five σ.
            prop_assert!((estimate - exact).abs() <= 0.23, "estimate {estimate} vs exact {exact}");
        }
    }
}
