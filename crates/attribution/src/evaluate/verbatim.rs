//! Verbatim credit: outputs that quote eight or more tokens of a record must pay that record's
//! contribution (the first accepted record holding the quote, or the first accepted copy of its
//! credit group when that record is a near copy). Quotes of whole words holding
//! at least `quote_tokens + 1` of the record's tokens are cut from records spread over the
//! corpus, wrapped in words that are not in it, and attributed span-only; the share credited to
//! the right contribution is the measure (target 100%). A quote more common than the span
//! filter's frequency limit is boilerplate and pays nobody: it counts as a miss.

use serde::{Deserialize, Serialize};

use crate::attribute::Attributor;
use crate::corpus::Corpus;
use crate::credit::CreditGroups;
use crate::span::{SpanIndex, SpanParams};
use crate::{AttributionError, Result};
use openledger_ml::Tokenizer;

/// Misses a check lists at most.
pub const MAX_MISSES_LISTED: usize = 5;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerbatimCheck {
    pub quotes: usize,
    /// Quotes whose expected contribution got a positive weight.
    pub credited: usize,
    /// Quotes where it got the whole weight.
    pub credited_in_full: usize,
    /// Quotes whose record is a later near copy, so the credit went to its group's first copy.
    pub moved_to_first_copy: usize,
    /// The first few quotes that were not credited, with what was paid instead.
    pub misses: Vec<String>,
}

impl VerbatimCheck {
    pub fn credited_share(&self) -> f64 {
        if self.quotes == 0 { 0.0 } else { self.credited as f64 / self.quotes as f64 }
    }
}

/// Cuts `quotes` quotes of `quote_tokens` tokens from records spread over `corpus`, and checks
/// each is credited to the contribution of the first record whose text holds it.
pub fn check(
    corpus: &Corpus,
    groups: &CreditGroups,
    index: &SpanIndex,
    tokenizer: &Tokenizer,
    quotes: usize,
    quote_tokens: usize,
) -> Result<VerbatimCheck> {
    let attributor =
        Attributor { corpus, groups, tokenizer, spans: index, span_params: SpanParams::default(), influence: None };
    let mut result =
        VerbatimCheck { quotes: 0, credited: 0, credited_in_full: 0, moved_to_first_copy: 0, misses: Vec::new() };
    let step = (corpus.records.len() / quotes.max(1)).max(1);
    for record in corpus.records.iter().step_by(step).take(quotes) {
        let (ids, offsets) = tokenizer.encode_with_offsets(&record.text)?;
        // One token more than asked, then out to whole words: a quote starts and ends where a
        // reader's would, so the output tokenizes it as the record did.
        if ids.len() < quote_tokens + 1 {
            continue;
        }
        let first = (ids.len() - quote_tokens - 1) / 2;
        let (start, end) = whole_words(&record.text, offsets[first].0, offsets[first + quote_tokens].1);
        let quote = record.text[start..end].trim();
        let holder = corpus
            .records
            .iter()
            .position(|r| holds_words(&r.text, quote))
            .ok_or_else(|| AttributionError::invalid("a quote is missing from its own record"))?;
        // The credit rule pays a near copy's quotes to the first accepted copy of its group.
        let expected = &corpus.records[groups.first_copy(holder)];
        result.moved_to_first_copy += usize::from(groups.is_later_copy(holder));
        let output = format!("Well, zqxj vvkw: {quote} … zqxj vvkw.");
        let attribution = attributor.attribute(None, &output)?.attribution;
        let weight =
            attribution.weights.iter().find(|w| w.contribution == expected.contribution).map_or(0, |w| w.weight_ppb);
        result.quotes += 1;
        result.credited += usize::from(weight > 0);
        result.credited_in_full += usize::from(weight == crate::blend::PPB);
        if weight == 0 && result.misses.len() < MAX_MISSES_LISTED {
            let spans: Vec<(&str, u64)> =
                attribution.spans.iter().map(|s| (&output[s.start..s.end], s.occurrences)).collect();
            result.misses.push(format!("{quote:?} of {}: spans {spans:?}", expected.contribution));
        }
    }
    Ok(result)
}

/// `start..end` widened to the word boundaries (whitespace) around it.
fn whole_words(text: &str, start: usize, end: usize) -> (usize, usize) {
    let start = text[..start].rfind(char::is_whitespace).map_or(0, |i| i + 1);
    let end = text[end..].find(char::is_whitespace).map_or(text.len(), |i| end + i);
    (start, end)
}

/// Whether `text` holds `quote` as whole words (not inside a longer word).
fn holds_words(text: &str, quote: &str) -> bool {
    text.match_indices(quote).any(|(at, _)| {
        let before = text[..at].chars().next_back().is_none_or(char::is_whitespace);
        let after = text[at + quote.len()..].chars().next().is_none_or(char::is_whitespace);
        before && after
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::credit::CreditParams;
    use crate::span::testing::{corpus, word_tokenizer};

    #[test]
    fn every_quote_of_ten_tokens_is_credited_to_its_first_accepted_record() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = word_tokenizer(&dir.path().join("tok"), &[]);
        let texts: Vec<String> = (0..12)
            .map(|i| (0..14).map(|j| ((i * 17 + j * 5) % 290).to_string()).collect::<Vec<_>>().join(" "))
            .collect();
        let mut refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        refs.push(refs[3]); // a later copy: the quote stays with record 3
        let corpus = corpus(&refs);
        SpanIndex::build(&corpus, &tokenizer, &dir.path().join("spans"), 1 << 20, &mut |_, _| {}).unwrap();
        let index = SpanIndex::open_for(&dir.path().join("spans"), &tokenizer).unwrap();
        let groups = CreditGroups::build(&corpus, &CreditParams::default()).unwrap();
        let result = check(&corpus, &groups, &index, &tokenizer, 13, 10).unwrap();
        assert_eq!(result.quotes, 13);
        assert_eq!(result.credited, 13, "{result:?}");
        assert_eq!(result.credited_share(), 1.0);
    }
}
