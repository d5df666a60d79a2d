//! Span attribution: a suffix array over the tokenized records of a version (with record
//! boundaries), stored as checksummed shard files; a query finds the maximal spans of a text
//! that occur verbatim and keeps the long and rare ones (infini-gram's index, OLMoTrace's rule).
//!
//! - Tokens are the base model's ([`Tokenizer::encode_continuation`]: no beginning-of-sequence
//!   token), stored as `u16` with `0xFFFF` after every record: a pattern never holds that value,
//!   so no match crosses a record. Vocabularies of more than 65535 ids are refused at build.
//! - The suffix array is built per shard by libsais (SA-IS over the `u16` text) and stored with
//!   the fewest bytes that address the shard (3 bytes up to 16 Mi tokens, 4 up to 2 Gi), the
//!   separator suffixes left out: with 2 bytes per token that is 5–6 bytes per token, plus
//!   40 bytes per record (where it starts, its content hash); 5.54 measured on short paragraphs
//!   (bench/RESULTS.md; infini-gram: 2 + 3–6 bytes, 5.17 on the same corpus).
//! - Files are read into memory at [`SpanIndex::open`], not memory-mapped: opening verifies every
//!   file's BLAKE3 checksum, which reads every byte anyway, and the workspace forbids `unsafe`
//!   (mapping a file is `unsafe` because another process may change it under us). A Datanet
//!   version of 100 M tokens holds about 600 MB; sharding bounds what one build holds at once.
//! - Overlapping maximal spans (`[0, 10)` and `[5, 15)`: two different verbatim quotes, maybe
//!   from different records) are both reported, as OLMoTrace does; the tokens they share appear
//!   in both, so a rule that pays per completion token counts the union once.

mod build;
mod format;
mod shard;
mod trace;

use std::path::Path;

pub use format::{FileEntry, INDEX_FORMAT, SpanIndexHeader, SpanShardHeader};
use openledger_core::ContentHash;
use openledger_ml::Tokenizer;

use crate::{AttributionError, Result};
use shard::Shard;

/// The token value written after every record; no tokenizer id may reach it.
pub const SEPARATOR_TOKEN: u16 = u16::MAX;
/// The most records [`crate::blend::SpanEvidence::records`] lists for one span (OLMoTrace shows
/// ten documents per span; the credit needs only the first, the rest are the evidence).
pub const MAX_RECORDS_PER_SPAN: usize = 16;
/// The largest shard libsais can sort with 32-bit suffix positions.
pub const MAX_SHARD_TOKENS: usize = i32::MAX as usize;

/// What a trace keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanParams {
    /// Shortest span credited, in tokens: 8, the verbatim rule ("a quote of ≥ 8 tokens is paid in
    /// full"); shorter runs are common phrases that prove nothing.
    pub min_span_tokens: usize,
    /// A span found more often than this is dropped: boilerplate (licences, greetings) that no
    /// one contributor owns. 100: a real quote of eight or more tokens is seldom that common
    /// in one Datanet, and listing the records stays cheap.
    pub max_occurrences: u64,
    /// At most `ceil(max_spans_per_token × completion tokens)` spans are kept, the rarest first
    /// (OLMoTrace: 0.05). At least one span is always kept when any passes the filters, so a
    /// short completion that quotes one record is never left without evidence.
    pub max_spans_per_token: f64,
    /// Longest text traced, in tokens; a longer one is refused (`InvalidInput`), since the work
    /// grows with tokens × span length. 4096: more than any completion the engine returns.
    pub max_completion_tokens: usize,
}

impl Default for SpanParams {
    fn default() -> Self {
        Self { min_span_tokens: 8, max_occurrences: 100, max_spans_per_token: 0.05, max_completion_tokens: 4096 }
    }
}

impl SpanParams {
    fn validate(&self) -> Result<()> {
        if self.min_span_tokens == 0 || self.max_occurrences == 0 || self.max_completion_tokens == 0 {
            return Err(AttributionError::invalid(
                "span parameters: min_span_tokens, max_occurrences and max_completion_tokens must be positive",
            ));
        }
        if !(self.max_spans_per_token.is_finite() && self.max_spans_per_token >= 0.0) {
            return Err(AttributionError::invalid("span parameters: max_spans_per_token must be a finite number ≥ 0"));
        }
        Ok(())
    }
}

/// An opened span index: every shard in memory, verified.
#[derive(Debug)]
pub struct SpanIndex {
    header: SpanIndexHeader,
    records: Vec<ContentHash>,
    shards: Vec<Shard>,
}

impl SpanIndex {
    /// Opens an index, verifying its format and every file's length and checksum.
    pub fn open(dir: &Path) -> Result<Self> {
        let (header, records, shards) = format::read_index(dir)?;
        Ok(Self { header, records, shards })
    }

    /// Opens an index and checks it was built with `tokenizer`.
    pub fn open_for(dir: &Path, tokenizer: &Tokenizer) -> Result<Self> {
        let index = Self::open(dir)?;
        index.check_tokenizer(tokenizer)?;
        Ok(index)
    }

    pub fn header(&self) -> &SpanIndexHeader {
        &self.header
    }

    /// `Mismatch` unless the index was built with this tokenizer. [`Self::trace`] does not check
    /// (the fingerprint serializes the whole tokenizer): check once after opening.
    pub fn check_tokenizer(&self, tokenizer: &Tokenizer) -> Result<()> {
        let fingerprint = tokenizer.fingerprint()?;
        if fingerprint != self.header.tokenizer {
            return Err(AttributionError::Mismatch(format!(
                "the span index of {} was built with tokenizer {}, this one is {fingerprint}: rebuild the index \
                 with the model's tokenizer",
                self.header.corpus, self.header.tokenizer
            )));
        }
        Ok(())
    }

    /// Occurrences of `tokens` across all shards (an empty pattern occurs at every token).
    pub fn count(&self, tokens: &[u32]) -> u64 {
        match narrow(tokens) {
            Some(pattern) => self.shards.iter().map(|shard| shard.find(&pattern).len() as u64).sum(),
            None => 0,
        }
    }

    /// The maximal spans of `text` found verbatim in the corpus that pass `params`, in text
    /// order, each credited to the first record (in corpus order) that holds it.
    pub fn trace(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        params: &SpanParams,
    ) -> Result<Vec<crate::blend::SpanEvidence>> {
        trace::trace(self, tokenizer, text, params)
    }
}

/// The `u16` form of a pattern, or `None` when a token cannot be in the index.
fn narrow(tokens: &[u32]) -> Option<Vec<u16>> {
    tokens.iter().map(|&t| u16::try_from(t).ok().filter(|&t| t != SEPARATOR_TOKEN)).collect()
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::testing::{corpus, word_tokenizer};
    use super::*;
    use crate::corpus::Corpus;

    const WIDE: usize = 1 << 20;

    fn build(dir: &Path, texts: &[&str], shard_tokens: usize) -> (SpanIndex, Tokenizer, Corpus) {
        let tokenizer = word_tokenizer(&dir.join("tok"), &[]);
        let corpus = corpus(texts);
        let index_dir = dir.join(format!("index-{shard_tokens}"));
        SpanIndex::build(&corpus, &tokenizer, &index_dir, shard_tokens, &mut |_, _| {}).unwrap();
        (SpanIndex::open_for(&index_dir, &tokenizer).unwrap(), tokenizer, corpus)
    }

    fn params(min_span_tokens: usize) -> SpanParams {
        SpanParams { min_span_tokens, max_spans_per_token: 1.0, ..SpanParams::default() }
    }

    #[test]
    fn a_quoted_run_is_one_maximal_span_mapped_to_its_bytes_and_record() {
        let dir = tempfile::tempdir().unwrap();
        let (index, tokenizer, corpus) = build(dir.path(), &["x y z", "a b c d e f g h i j k", "q r s"], WIDE);
        let text = "m n a b c d e f g h i j o p";
        let spans = index.trace(&tokenizer, text, &SpanParams::default()).unwrap();
        assert_eq!(spans.len(), 1, "{spans:?}");
        let span = &spans[0];
        assert_eq!(&text[span.start..span.end], "a b c d e f g h i j");
        assert_eq!((span.tokens, span.occurrences), (10, 1));
        assert_eq!(span.record, corpus.records[1].hash);
        assert_eq!(span.records, [corpus.records[1].hash]);
    }

    #[test]
    fn byte_level_spans_map_to_byte_offsets_after_multibyte_text() {
        let dir = tempfile::tempdir().unwrap();
        let model = openledger_ml::testing::TinyModel::new(openledger_ml::testing::TinySpec::default()).unwrap();
        let tokenizer =
            Tokenizer::from_file(&model.write_safetensors(dir.path()).unwrap().join("tokenizer.json")).unwrap();
        let corpus = corpus(&["zzz qqq", "the cat sat on the mat"]);
        let index_dir = dir.path().join("index");
        SpanIndex::build(&corpus, &tokenizer, &index_dir, WIDE, &mut |_, _| {}).unwrap();
        let index = SpanIndex::open_for(&index_dir, &tokenizer).unwrap();
        let text = "Ünïcödé, I think the cat sat on the mat today";
        let spans = index.trace(&tokenizer, text, &SpanParams::default()).unwrap();
        assert_eq!(spans.len(), 1, "{spans:?}");
        let quoted = &text[spans[0].start..spans[0].end];
        assert!(corpus.records[1].text.contains(quoted) && quoted.contains("cat sat on the mat"), "{quoted:?}");
        assert_eq!(spans[0].record, corpus.records[1].hash);
    }

    /// Byte-level BPE spells "the" after a space as one token and at the start of a text as
    /// two: a quote of a record's first words in running text still matches from its first word.
    #[test]
    fn a_quote_of_a_records_first_words_matches_from_the_first_word() {
        let dir = tempfile::tempdir().unwrap();
        let model = openledger_ml::testing::TinyModel::new(openledger_ml::testing::TinySpec::default()).unwrap();
        let tokenizer =
            Tokenizer::from_file(&model.write_safetensors(dir.path()).unwrap().join("tokenizer.json")).unwrap();
        let corpus = corpus(&["zzz qqq", "the ant ate a tiny bun in the inn"]);
        let index_dir = dir.path().join("index");
        SpanIndex::build(&corpus, &tokenizer, &index_dir, WIDE, &mut |_, _| {}).unwrap();
        let index = SpanIndex::open_for(&index_dir, &tokenizer).unwrap();
        let text = "so the ant ate a tiny bun in the inn ok";
        let spans = index.trace(&tokenizer, text, &SpanParams::default()).unwrap();
        assert_eq!(spans.len(), 1, "{spans:?}");
        assert_eq!(&text[spans[0].start..spans[0].end], "the ant ate a tiny bun in the inn");
    }

    #[test]
    fn the_first_accepted_copy_gets_the_credit_and_every_copy_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let quote = "a b c d e f g h";
        let (index, tokenizer, corpus) = build(dir.path(), &["x y z", quote, "q r s", quote], WIDE);
        let spans = index.trace(&tokenizer, quote, &SpanParams::default()).unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].occurrences, 2);
        assert_eq!(spans[0].record, corpus.records[1].hash);
        assert_eq!(spans[0].records, [corpus.records[1].hash, corpus.records[3].hash]);
    }

    #[test]
    fn no_span_crosses_a_record_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let (index, tokenizer, corpus) = build(dir.path(), &["a b c d e f", "g h i j k l"], WIDE);
        let text = "a b c d e f g h i j k l";
        let spans = index.trace(&tokenizer, text, &params(3)).unwrap();
        let found: Vec<(&str, ContentHash)> = spans.iter().map(|s| (&text[s.start..s.end], s.record)).collect();
        assert_eq!(found, [("a b c d e f", corpus.records[0].hash), ("g h i j k l", corpus.records[1].hash)]);
        assert_eq!(index.count(&tokenizer.encode("f g").unwrap()), 0);
        assert_eq!(index.count(&tokenizer.encode("e f").unwrap()), 1);
    }

    #[test]
    fn overlapping_maximal_spans_are_both_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (index, tokenizer, corpus) = build(dir.path(), &["a b c d e f", "d e f g h i"], WIDE);
        let text = "a b c d e f g h i";
        let spans = index.trace(&tokenizer, text, &params(4)).unwrap();
        let found: Vec<(&str, ContentHash)> = spans.iter().map(|s| (&text[s.start..s.end], s.record)).collect();
        assert_eq!(found, [("a b c d e f", corpus.records[0].hash), ("d e f g h i", corpus.records[1].hash)]);
    }

    #[test]
    fn spans_shorter_than_the_minimum_or_too_frequent_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let common = "a b c d e f g h";
        let (index, tokenizer, _) = build(dir.path(), &[common, common, common, "p q r s t u v"], WIDE);
        assert!(index.trace(&tokenizer, "p q r s t u v", &SpanParams::default()).unwrap().is_empty());
        let rare_only = SpanParams { max_occurrences: 2, ..params(7) };
        let spans = index.trace(&tokenizer, &format!("{common} z p q r s t u v"), &rare_only).unwrap();
        assert_eq!(spans.iter().map(|s| s.tokens).collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn the_density_limit_keeps_the_rarest_spans_but_never_none() {
        let dir = tempfile::tempdir().unwrap();
        // "a".."h" occur in many records, "p".."w" in one: the second span is rarer.
        let (index, tokenizer, corpus) =
            build(dir.path(), &["a b c d e f g h", "h g f e d c b a", "a a b b c c", "p q r s t u v w"], WIDE);
        let text = "a b c d e f g h z p q r s t u v w";
        let one = SpanParams { max_spans_per_token: 0.0, ..SpanParams::default() };
        let spans = index.trace(&tokenizer, text, &one).unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].record, corpus.records[3].hash);
        assert_eq!(index.trace(&tokenizer, text, &params(8)).unwrap().len(), 2);
    }

    #[test]
    fn sharded_and_unsharded_indexes_give_identical_traces() {
        let dir = tempfile::tempdir().unwrap();
        let texts: Vec<String> = (0..40)
            .map(|i| (0..12).map(|j| ((i * 7 + j * j) % 23).to_string()).collect::<Vec<_>>().join(" "))
            .collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (whole, tokenizer, _) = build(dir.path(), &texts, WIDE);
        let (sharded, _, _) = build(dir.path(), &texts, 30);
        assert_eq!(whole.header().shards.len(), 1);
        assert!(sharded.header().shards.len() > 10, "{}", sharded.header().shards.len());
        for text in [texts[3].to_string(), format!("{} 299 {} {}", texts[5], texts[9], texts[9]), "1 2 3".into()] {
            let a = whole.trace(&tokenizer, &text, &params(2)).unwrap();
            assert!(!a.is_empty());
            assert_eq!(a, sharded.trace(&tokenizer, &text, &params(2)).unwrap());
            let ids = tokenizer.encode(&text).unwrap();
            assert_eq!(whole.count(&ids[..3]), sharded.count(&ids[..3]));
        }
    }

    #[test]
    fn a_truncated_or_corrupted_file_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (index, _, _) = build(dir.path(), &["a b c", "d e f"], WIDE);
        let shard = &index.header().shards[0];
        let index_dir = dir.path().join(format!("index-{WIDE}"));
        let suffixes = index_dir.join(&shard.suffixes_file.name);
        let bytes = std::fs::read(&suffixes).unwrap();
        std::fs::write(&suffixes, &bytes[..bytes.len() - 1]).unwrap();
        let error = SpanIndex::open(&index_dir).unwrap_err();
        assert!(matches!(error, AttributionError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("rebuild the index"), "{error}");
        std::fs::write(&suffixes, &bytes).unwrap();
        SpanIndex::open(&index_dir).unwrap();

        let tokens = index_dir.join(&shard.tokens_file.name);
        let mut bytes = std::fs::read(&tokens).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&tokens, &bytes).unwrap();
        assert!(matches!(SpanIndex::open(&index_dir), Err(AttributionError::Corrupt { .. })));

        std::fs::write(index_dir.join("header.json"), "{\"format\":").unwrap();
        assert!(matches!(SpanIndex::open(&index_dir), Err(AttributionError::Corrupt { .. })));
    }

    #[test]
    fn an_index_queried_with_another_tokenizer_is_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (index, tokenizer, _) = build(dir.path(), &["a b c"], WIDE);
        index.check_tokenizer(&word_tokenizer(&dir.path().join("same"), &[])).unwrap();
        let other = word_tokenizer(&dir.path().join("other"), &["zebra"]);
        assert!(matches!(index.check_tokenizer(&other), Err(AttributionError::Mismatch(_))));
        assert_eq!(index.header().tokenizer, tokenizer.fingerprint().unwrap());
    }

    #[test]
    fn a_text_over_max_completion_tokens_is_invalid_input() {
        let dir = tempfile::tempdir().unwrap();
        let (index, tokenizer, _) = build(dir.path(), &["a b c"], WIDE);
        let short = SpanParams { max_completion_tokens: 3, ..SpanParams::default() };
        assert!(index.trace(&tokenizer, "a b c", &short).is_ok());
        let error = index.trace(&tokenizer, "a b c d", &short).unwrap_err();
        assert!(matches!(error, AttributionError::InvalidInput(_)), "{error}");
    }

    #[test]
    fn a_failed_or_crashed_build_leaves_no_index_directory() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = word_tokenizer(&dir.path().join("tok"), &[]);
        let too_long = "a ".repeat(openledger_ml::tokenizer::MAX_PROMPT_BYTES);
        let failing = corpus(&["a b c", "d e f", &too_long]);
        let index_dir = dir.path().join("index");
        assert!(SpanIndex::build(&failing, &tokenizer, &index_dir, 4, &mut |_, _| {}).is_err());
        assert!(!index_dir.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["tok"], "the staging directory is removed after a failure");

        let crash = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut crash_at_second = |done: u64, _| assert!(done < 2, "simulated crash");
            SpanIndex::build(&corpus(&["a b", "c d", "e f"]), &tokenizer, &index_dir, 2, &mut crash_at_second)
        }));
        assert!(crash.is_err());
        assert!(!index_dir.exists());
    }

    #[test]
    fn an_existing_directory_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = word_tokenizer(&dir.path().join("tok"), &[]);
        let error = SpanIndex::build(&corpus(&["a"]), &tokenizer, &dir.path().join("tok"), WIDE, &mut |_, _| {});
        assert!(matches!(error, Err(AttributionError::InvalidInput(_))));
    }

    #[test]
    fn the_index_costs_at_most_seven_bytes_per_token() {
        let dir = tempfile::tempdir().unwrap();
        let text = (0..5000).map(|i| (i % 300).to_string()).collect::<Vec<_>>().join(" ");
        let (index, _, _) = build(dir.path(), &[&text], WIDE);
        let shard = &index.header().shards[0];
        let bytes = shard.tokens_file.bytes + shard.suffixes_file.bytes + shard.starts_file.bytes;
        assert_eq!(shard.pointer_bytes, 2);
        assert!(bytes <= 7 * shard.tokens, "{bytes} bytes for {} tokens", shard.tokens);
    }

    fn naive_count(records: &[Vec<u32>], pattern: &[u32]) -> u64 {
        let windows = records.iter().flat_map(|r| r.windows(pattern.len().max(1)));
        if pattern.is_empty() {
            return records.iter().map(|r| r.len() as u64).sum();
        }
        windows.filter(|w| *w == pattern).count() as u64
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn count_equals_a_naive_substring_count(
            records in prop::collection::vec(prop::collection::vec(0u8..4, 0..12), 1..8),
            patterns in prop::collection::vec(prop::collection::vec(0u8..4, 1..4), 1..6),
            shard_tokens in 1usize..20,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let words = |ids: &[u8]| ids.iter().map(|&i| char::from(b'a' + i).to_string()).collect::<Vec<_>>().join(" ");
            let texts: Vec<String> = records.iter().map(|r| words(r)).collect();
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let (index, tokenizer, _) = build(dir.path(), &texts, shard_tokens);
            let ids: Vec<Vec<u32>> = texts.iter().map(|t| tokenizer.encode(t).unwrap()).collect();
            for pattern in &patterns {
                let pattern = tokenizer.encode(&words(pattern)).unwrap();
                prop_assert_eq!(index.count(&pattern), naive_count(&ids, &pattern));
            }
        }
    }
}
