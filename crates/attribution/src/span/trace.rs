//! A trace, OLMoTrace's rule on a token-level suffix array: for every start position the
//! longest run of the text that occurs in the corpus; the maximal ones (not inside another)
//! of at least `min_span_tokens` and at most `max_occurrences`; the rarest by span unigram
//! probability up to the density limit; each mapped to its bytes in the text and its records.

use std::collections::HashMap;

use openledger_ml::Tokenizer;

use super::{MAX_RECORDS_PER_SPAN, SEPARATOR_TOKEN, SpanIndex, SpanParams, narrow};
use crate::blend::SpanEvidence;
use crate::{AttributionError, Result};

/// A maximal span before it is mapped: tokens `start..end` of the text.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    start: usize,
    end: usize,
    occurrences: u64,
    /// Σ log P(token), P from the corpus's unigram counts: lower is rarer.
    log_probability: f64,
}

pub(super) fn trace(
    index: &SpanIndex,
    tokenizer: &Tokenizer,
    text: &str,
    params: &SpanParams,
) -> Result<Vec<SpanEvidence>> {
    params.validate()?;
    let (ids, offsets) = tokenizer.encode_with_offsets(text)?;
    if ids.len() > params.max_completion_tokens {
        return Err(AttributionError::invalid(format!(
            "the text is {} tokens; a trace takes at most max_completion_tokens = {}: trace a shorter text",
            ids.len(),
            params.max_completion_tokens
        )));
    }
    let blank: Vec<bool> = offsets.iter().map(|&(start, end)| text[start..end].trim().is_empty()).collect();
    let mut candidates = maximal_spans(index, &ids, &blank, params);
    rank_and_limit(index, &ids, &mut candidates, params);
    candidates.iter().map(|candidate| evidence(index, text, &ids, &offsets, candidate)).collect()
}

/// The maximal spans that pass the length and frequency filters, in text order. A span's edge
/// tokens that are only whitespace are trimmed first: whether a quote is followed by a space or
/// a line break in the corpus must not decide which record holds it (the trimmed span's records
/// are the ones credited).
fn maximal_spans(index: &SpanIndex, ids: &[u32], blank: &[bool], params: &SpanParams) -> Vec<Candidate> {
    // A token the index cannot hold becomes the separator, which ends every match there.
    let text: Vec<u16> = ids.iter().map(|&id| u16::try_from(id).unwrap_or(SEPARATOR_TOKEN)).collect();
    let mut spans = Vec::new();
    let mut previous_end = 0;
    for start in 0..text.len() {
        let length = index.shards.iter().map(|shard| shard.longest_prefix(&text[start..])).max().unwrap_or(0);
        let end = start + length;
        // Ends never decrease with the start, so a span is maximal when it ends further right.
        let maximal = end > previous_end;
        previous_end = previous_end.max(end);
        if !maximal {
            continue;
        }
        let (start, end) = trim_blank(blank, start, end);
        if end - start < params.min_span_tokens {
            continue;
        }
        let occurrences = index.count(&ids[start..end]);
        if occurrences <= params.max_occurrences {
            spans.push(Candidate { start, end, occurrences, log_probability: 0.0 });
        }
    }
    spans
}

/// `start..end` without whitespace-only tokens at either edge.
fn trim_blank(blank: &[bool], mut start: usize, mut end: usize) -> (usize, usize) {
    while start < end && blank[start] {
        start += 1;
    }
    while end > start && blank[end - 1] {
        end -= 1;
    }
    (start, end)
}

/// Keeps the rarest spans, at most `ceil(max_spans_per_token × tokens)` but at least one.
fn rank_and_limit(index: &SpanIndex, ids: &[u32], candidates: &mut Vec<Candidate>, params: &SpanParams) {
    let total = index.header.tokens.max(1) as f64;
    let mut unigram: HashMap<u32, f64> = HashMap::new();
    for candidate in candidates.iter_mut() {
        candidate.log_probability = ids[candidate.start..candidate.end]
            .iter()
            .map(|&id| *unigram.entry(id).or_insert_with(|| (index.count(&[id]).max(1) as f64 / total).ln()))
            .sum();
    }
    let limit = ((params.max_spans_per_token * ids.len() as f64).ceil() as usize).max(1);
    candidates.sort_by(|a, b| a.log_probability.total_cmp(&b.log_probability).then(a.start.cmp(&b.start)));
    candidates.truncate(limit);
    candidates.sort_by_key(|candidate| candidate.start);
}

/// The span's records and its bytes in `text`, without the whitespace a first token may carry
/// (byte-level BPE spells a word with the space before it).
fn evidence(
    index: &SpanIndex,
    text: &str,
    ids: &[u32],
    offsets: &[(usize, usize)],
    candidate: &Candidate,
) -> Result<SpanEvidence> {
    let pattern = narrow(&ids[candidate.start..candidate.end]).unwrap_or_default();
    let mut records: Vec<usize> = Vec::new();
    for shard in &index.shards {
        records.extend(shard.find(&pattern).map(|rank| shard.record_of(shard.suffix(rank))));
    }
    records.sort_unstable();
    records.dedup();
    records.truncate(MAX_RECORDS_PER_SPAN);
    let hashes: Vec<_> = records.iter().filter_map(|&record| index.records.get(record).copied()).collect();
    let first = hashes
        .first()
        .copied()
        .ok_or_else(|| AttributionError::corrupt("span index", "a span was counted but no record holds it"))?;
    let (start, end) = (offsets[candidate.start].0, offsets[candidate.end - 1].1);
    let quoted = &text[start..end];
    let start = start + (quoted.len() - quoted.trim_start().len());
    let end = end - (quoted.len() - quoted.trim_end().len());
    Ok(SpanEvidence {
        start,
        end,
        tokens: candidate.end - candidate.start,
        occurrences: candidate.occurrences,
        record: first,
        records: hashes,
    })
}
