//! Verbatim credit: outputs that quote eight or more tokens of a record must pay that record's
//! contribution (the first accepted record holding the quote). Quotes are cut from random
//! records, wrapped in words that are not in the corpus, and attributed span-only; the share
//! credited to the right contribution is the measure (target 100%).

use serde::{Deserialize, Serialize};

use crate::attribute::Attributor;
use crate::corpus::Corpus;
use crate::credit::CreditGroups;
use crate::span::{SpanIndex, SpanParams};
use crate::{AttributionError, Result};
use openledger_ml::Tokenizer;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerbatimCheck {
    pub quotes: usize,
    /// Quotes whose expected contribution got a positive weight.
    pub credited: usize,
    /// Quotes where it got the whole weight.
    pub credited_in_full: usize,
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
    let mut result = VerbatimCheck { quotes: 0, credited: 0, credited_in_full: 0 };
    let step = (corpus.records.len() / quotes.max(1)).max(1);
    for record in corpus.records.iter().step_by(step).take(quotes) {
        let (ids, offsets) = tokenizer.encode_with_offsets(&record.text)?;
        if ids.len() < quote_tokens {
            continue;
        }
        let start = offsets[(ids.len() - quote_tokens) / 2].0;
        let end = offsets[(ids.len() - quote_tokens) / 2 + quote_tokens - 1].1;
        let quote = &record.text[start..end];
        let expected = corpus
            .records
            .iter()
            .find(|r| r.text.contains(quote))
            .ok_or_else(|| AttributionError::invalid("a quote is missing from its own record"))?;
        let output = format!("Well, zqxj vvkw: {quote} … zqxj vvkw.");
        let attribution = attributor.attribute(None, &output)?.attribution;
        let weight =
            attribution.weights.iter().find(|w| w.contribution == expected.contribution).map_or(0, |w| w.weight_ppb);
        result.quotes += 1;
        result.credited += usize::from(weight > 0);
        result.credited_in_full += usize::from(weight == crate::blend::PPB);
    }
    Ok(result)
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
