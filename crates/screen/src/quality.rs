//! A cheap quality score for one record's text, 0 to 1000, from signals in the spirit of the
//! Gopher and C4 rules: repetition, character classes, how word-like the words are and their
//! mean length. It owns no policy beyond the defaults below; review and acceptance are the
//! caller's. Default policy: accept automatically at 600 and above, reject below 300, send the
//! rest to review.
//!
//! The score is
//! `1000 × (1 − repetition) × language_likeness × diversity × characters^½ × word_length^½`,
//! each factor in 0..=1: language-likeness and diversity weigh fully, the character classes and
//! the mean word length half as much, and repetition scales the whole, so one bad signal sinks
//! the score where a weighted sum would let the others carry it.
//!
//! - `repetition`: the worst of three shares past a natural allowance: duplicate word 3-grams
//!   (past 10%, all of it at 60%), the most frequent token (past 25% with at least 20 tokens, all
//!   of it at 60%), and lines of 10 or more characters repeating an earlier line (past 20%, all
//!   of it at 70%).
//! - `diversity`: how many distinct words the text uses, judged against its length. Type-token
//!   ratio falls with length, so the measure is the *effective vocabulary*: the size `k` of a
//!   vocabulary from which `n` uniform random draws would show, on average, as many distinct
//!   words as the text's `n` words do (`k (1 − (1 − 1/k)ⁿ) = distinct`). Word salad drawn from
//!   six words has an effective vocabulary of about 6 at any length; natural prose of 20 to 60
//!   words 14 or more, code 9 or more (Debian descriptions and the Python standard library, see
//!   the `screen` bench). Words are whitespace tokens without edge punctuation, lower-cased. The
//!   factor is 0 at an effective vocabulary of 6 and full from 12; it weighs in from 8 words
//!   and fully from 16 (ten words say too little: repetitive code looks like salad there).
//! - `characters`: the share of letters among non-space characters, 0 at 30% and full from 65%
//!   (code and prose with numbers stay in; symbol lines, hex and tables of numbers drop out).
//! - `word_length`: mean length of whitespace tokens without their edge punctuation, full from
//!   2.5 to 12 characters, 0 at 1 and at 30 (base64 and hex runs are long single tokens).
//! - `language_likeness`: the share of words that look like words. A word is a run of two or
//!   more letters, cut at camel case; in a token whose letters and digits take turns three times
//!   or more (hex, base64) every run of letters is a word that does not look like one. In Latin
//!   script it looks like one when it has at most 25 letters, a vowel,
//!   no run of more than 4 consonants (`ch`, `sh`, `th`, `ph`, `gh`, `ck` and `sch` count as one)
//!   and no run of more than 3 vowels, or when it is an acronym of at most 6 capitals. With at
//!   least 8 Latin words, the stop-word rate then weighs in: a text in a Latin-script language
//!   uses function words (`the`, `de`, `und`, `và`, …; about 25 languages and the keywords of
//!   common programming languages are listed), keyboard mash and strings of sales words do not.
//!   Without any, the Latin words count 70% at 8 words, falling to 45% at 24 words and more (a
//!   sentence that long without one function word is rare in the listed languages), and full
//!   from a rate of 8%: mild on short texts, because a language missing from the list must not
//!   fail on it alone (the two checks cost 0.6% of natural short texts their automatic
//!   acceptance, mostly noun-phrase descriptions in Slovak, Czech, Polish, Hungarian and data
//!   tables in code: bench/RESULTS.md, 2026-12-04). Other scripts are judged by character class only, so they are not penalised
//!   for not being English: a word of Cyrillic, Greek, Arabic, Hebrew, Indic… letters looks like
//!   one up to 30 letters, and each character of the scripts written without spaces (Chinese,
//!   Japanese, Korean, Thai, Lao, Khmer, Myanmar) counts as a word that looks like one. A word
//!   mixing Latin with another script (homoglyph spam) does not look like one.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

/// Default policy: records scoring at least this are accepted without review.
pub const AUTO_ACCEPT_SCORE: u32 = 600;
/// Default policy: records scoring below this are rejected.
pub const REJECT_BELOW_SCORE: u32 = 300;

/// The measurements a score is made of, each share in 0..=1.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QualitySignals {
    /// How repetitive the text is, past natural repetition: the worst of the three shares below.
    pub repetition: f64,
    pub duplicate_trigram_ratio: f64,
    pub top_token_ratio: f64,
    pub repeated_line_ratio: f64,
    /// Shares of all characters.
    pub letter_ratio: f64,
    pub digit_ratio: f64,
    pub symbol_ratio: f64,
    pub whitespace_ratio: f64,
    /// Share of words that look like words, scaled down by a missing stop-word rate.
    pub language_likeness: f64,
    /// Share of Latin words (of two or more letters) that are common function words.
    pub stop_word_ratio: f64,
    /// Mean length, in characters, of whitespace tokens without edge punctuation.
    pub mean_word_len: f64,
    /// Distinct words over words (whitespace tokens without edge punctuation, lower-cased).
    pub distinct_word_ratio: f64,
    /// The vocabulary size uniform random draws would need to show as many distinct words at
    /// this length; infinite when no word repeats.
    pub effective_vocabulary: f64,
    /// The diversity factor of the score, in 0..=1.
    pub diversity: f64,
    /// Tokens separated by whitespace.
    pub tokens: usize,
}

/// A record's quality: the score in 0..=1000 and what it was made of.
#[derive(Clone, Debug, PartialEq)]
pub struct Quality {
    pub score: u32,
    pub signals: QualitySignals,
}

/// The word-salad checks a score applies; [`Rules::default`] is the policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rules {
    /// Whether the diversity factor (effective vocabulary against length) applies.
    pub diversity: bool,
    /// How much Latin words without any function word count from 24 words on.
    pub no_function_words_floor: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Self { diversity: true, no_function_words_floor: 0.45 }
    }
}

impl Rules {
    /// The score before the word-salad checks of 2026-12-04, for comparison (the `screen` bench).
    pub const BEFORE_2026_12_04: Rules = Rules { diversity: false, no_function_words_floor: 0.70 };
}

/// Scores a text under the default rules; the empty text scores 0.
pub fn score(text: &str) -> Quality {
    score_with(text, Rules::default())
}

/// Scores a text under `rules`; the empty text scores 0.
pub fn score_with(text: &str, rules: Rules) -> Quality {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut signals = QualitySignals { tokens: tokens.len(), ..QualitySignals::default() };
    if tokens.is_empty() {
        return Quality { score: 0, signals };
    }
    measure_repetition(text, &tokens, &mut signals);
    measure_characters(text, &mut signals);
    measure_words(text, &tokens, rules, &mut signals);
    if rules.diversity {
        measure_diversity(&tokens, &mut signals);
    } else {
        signals.diversity = 1.0;
    }

    let characters = ramp(signals.letter_ratio_of_visible(), 0.30, 0.65);
    let word_length = ramp(signals.mean_word_len, 1.0, 2.5).min(1.0 - ramp(signals.mean_word_len, 12.0, 30.0));
    let quality = (1.0 - signals.repetition)
        * signals.language_likeness
        * signals.diversity
        * characters.sqrt()
        * word_length.sqrt();
    let score = (quality * 1000.0).round().clamp(0.0, 1000.0) as u32;
    debug_assert!(score <= 1000);
    Quality { score, signals }
}

impl QualitySignals {
    /// Letters among the characters that are not whitespace.
    fn letter_ratio_of_visible(&self) -> f64 {
        let visible = 1.0 - self.whitespace_ratio;
        if visible <= 0.0 { 0.0 } else { self.letter_ratio / visible }
    }
}

/// 0 at or below `low`, 1 at or above `high`, linear between.
fn ramp(value: f64, low: f64, high: f64) -> f64 {
    ((value - low) / (high - low)).clamp(0.0, 1.0)
}

fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

fn measure_repetition(text: &str, tokens: &[&str], signals: &mut QualitySignals) {
    let lowered: Vec<String> = tokens.iter().map(|token| token.to_lowercase()).collect();
    let trigrams = lowered.windows(3).count();
    let distinct_trigrams: HashSet<&[String]> = lowered.windows(3).collect();
    signals.duplicate_trigram_ratio = share(trigrams - distinct_trigrams.len(), trigrams);

    let mut counts: HashMap<&str, usize> = HashMap::new();
    for token in &lowered {
        *counts.entry(token.as_str()).or_default() += 1;
    }
    let top = counts.values().copied().max().unwrap_or(0);
    signals.top_token_ratio = share(top, lowered.len());

    let lines: Vec<&str> = text.lines().map(str::trim).filter(|line| line.chars().count() >= 10).collect();
    let distinct_lines: HashSet<&str> = lines.iter().copied().collect();
    signals.repeated_line_ratio = share(lines.len() - distinct_lines.len(), lines.len());

    let top_token_excess = if lowered.len() >= 20 { ramp(signals.top_token_ratio, 0.25, 0.60) } else { 0.0 };
    signals.repetition = ramp(signals.duplicate_trigram_ratio, 0.10, 0.60).max(top_token_excess).max(ramp(
        signals.repeated_line_ratio,
        0.20,
        0.70,
    ));
}

fn measure_characters(text: &str, signals: &mut QualitySignals) {
    let (mut letters, mut digits, mut whitespace, mut total) = (0, 0, 0, 0);
    for c in text.chars() {
        total += 1;
        if c.is_alphabetic() {
            letters += 1;
        } else if c.is_numeric() {
            digits += 1;
        } else if c.is_whitespace() {
            whitespace += 1;
        }
    }
    signals.letter_ratio = share(letters, total);
    signals.digit_ratio = share(digits, total);
    signals.whitespace_ratio = share(whitespace, total);
    signals.symbol_ratio = share(total - letters - digits - whitespace, total);
}

fn measure_words(text: &str, tokens: &[&str], rules: Rules, signals: &mut QualitySignals) {
    let lengths: Vec<usize> = tokens
        .iter()
        .map(|token| token.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|word| !word.is_empty() && !word.chars().any(is_unspaced_script))
        .map(|word| word.chars().count())
        .collect();
    // Text written without spaces has no word lengths to judge: it passes this signal.
    signals.mean_word_len =
        if lengths.is_empty() { 5.0 } else { lengths.iter().sum::<usize>() as f64 / lengths.len() as f64 };

    let words = WordCounts::of(text);
    signals.stop_word_ratio = share(words.latin_stop_words, words.latin);
    let looks_like_words = share(words.plausible, words.total);
    let latin_share = share(words.latin, words.total);
    let stop_word_factor = if words.latin >= 8 {
        let without_any = 0.70 - (0.70 - rules.no_function_words_floor) * ramp(words.latin as f64, 8.0, 24.0);
        without_any + (1.0 - without_any) * ramp(signals.stop_word_ratio, 0.0, 0.08)
    } else {
        1.0
    };
    signals.language_likeness = looks_like_words * (1.0 - latin_share * (1.0 - stop_word_factor));
}

fn measure_diversity(tokens: &[&str], signals: &mut QualitySignals) {
    let words: Vec<String> = tokens
        .iter()
        .map(|token| token.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .filter(|word| !word.is_empty())
        .collect();
    let distinct = words.iter().collect::<HashSet<_>>().len();
    signals.distinct_word_ratio = share(distinct, words.len());
    signals.effective_vocabulary = effective_vocabulary(words.len(), distinct);
    let weight = ramp(words.len() as f64, 8.0, 16.0);
    signals.diversity = 1.0 - weight * (1.0 - ramp(signals.effective_vocabulary, 6.0, 12.0));
}

/// The `k` for which `n` uniform draws from `k` words show `distinct` distinct ones on average:
/// `k (1 − (1 − 1/k)ⁿ) = distinct`, which grows with `k` towards `n`. Infinite when every word
/// is distinct (no finite vocabulary repeats nothing on average).
fn effective_vocabulary(n: usize, distinct: usize) -> f64 {
    debug_assert!(distinct <= n);
    if distinct >= n {
        return f64::INFINITY;
    }
    let (n, distinct) = (n as f64, distinct as f64);
    let expected_distinct = |k: f64| k * -(n * (-1.0 / k).ln_1p()).exp_m1();
    // Bisection. One repeat in `n` words means `k` ≈ n²/2, so `n² + 1` brackets every case.
    let (mut low, mut high) = (distinct.max(1.0), n * n + 1.0);
    for _ in 0..60 {
        let middle = (low + high) / 2.0;
        if expected_distinct(middle) < distinct { low = middle } else { high = middle }
    }
    (low + high) / 2.0
}

/// Words of a text by kind, and how many look like words.
#[derive(Default)]
struct WordCounts {
    total: usize,
    plausible: usize,
    latin: usize,
    latin_stop_words: usize,
}

impl WordCounts {
    fn of(text: &str) -> Self {
        let mut counts = Self::default();
        for token in text.split_whitespace() {
            // Letters and digits taking turns (`3f9a2b7c`, base64) make no words at all.
            let noise = letter_digit_turns(token) >= 3;
            for run in token.split(|c: char| !c.is_alphabetic()).filter(|run| !run.is_empty()) {
                if noise {
                    counts.total += 1;
                } else if run.chars().any(is_unspaced_script) {
                    let characters = run.chars().count();
                    counts.total += characters;
                    counts.plausible += characters;
                } else {
                    camel_case_parts(run).into_iter().for_each(|word| counts.add(word));
                }
            }
        }
        counts
    }

    /// Counts one word; a single letter says nothing either way and is left out.
    fn add(&mut self, word: &str) {
        let letters = word.chars().count();
        if letters < 2 {
            return;
        }
        self.total += 1;
        let latin_letters = word.chars().filter(|&c| is_latin(c)).count();
        if latin_letters == 0 {
            self.plausible += usize::from(letters <= 30);
            return;
        }
        self.latin += 1;
        if latin_letters == letters {
            self.latin_stop_words += usize::from(STOP_WORDS.contains(word.to_lowercase().as_str()));
            self.plausible += usize::from(looks_like_latin_word(word));
        }
    }
}

/// How often a token switches between letters and digits.
fn letter_digit_turns(token: &str) -> usize {
    let classes: Vec<bool> = token.chars().filter(|c| c.is_alphanumeric()).map(char::is_alphabetic).collect();
    classes.windows(2).filter(|pair| pair[0] != pair[1]).count()
}

/// Splits `parseConfigFile` into `parse`, `Config`, `File`; capitals in a row stay together.
fn camel_case_parts(run: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut previous_lower = false;
    for (index, c) in run.char_indices() {
        if c.is_uppercase() && previous_lower {
            parts.push(&run[start..index]);
            start = index;
        }
        previous_lower = c.is_lowercase();
    }
    parts.push(&run[start..]);
    parts
}

fn looks_like_latin_word(word: &str) -> bool {
    let letters: Vec<char> = word.chars().collect();
    if letters.len() > 25 {
        return false;
    }
    if letters.len() <= 6 && letters.iter().all(|c| c.is_uppercase()) {
        return true;
    }
    let lower = word.to_lowercase();
    let (mut vowels, mut consonant_run, mut vowel_run) = (0, 0, 0);
    let mut rest = lower.as_str();
    while let Some(c) = rest.chars().next() {
        let digraph = ["sch", "ch", "sh", "th", "ph", "gh", "ck"].into_iter().find(|digraph| rest.starts_with(digraph));
        rest = &rest[digraph.map_or(c.len_utf8(), str::len)..];
        if digraph.is_none() && is_latin_vowel(c) {
            vowels += 1;
            vowel_run += 1;
            consonant_run = 0;
        } else {
            consonant_run += 1;
            vowel_run = 0;
        }
        if consonant_run > 4 || vowel_run > 3 {
            return false;
        }
    }
    vowels > 0
}

fn is_latin(c: char) -> bool {
    c.is_ascii_alphabetic() || (matches!(c, '\u{C0}'..='\u{24F}' | '\u{1E00}'..='\u{1EFF}') && c.is_alphabetic())
}

fn is_latin_vowel(c: char) -> bool {
    matches!(
        c,
        'a' | 'e' | 'i' | 'o' | 'u' | 'y' | 'à'..='æ' | 'è'..='ï' | 'ò'..='ö' | 'ø'..='ü' | 'ý' | 'ÿ' | 'œ'
            | 'ā' | 'ă' | 'ą' | 'ē' | 'ė' | 'ę' | 'ě' | 'ī' | 'į' | 'ı' | 'ō' | 'ő' | 'ū' | 'ů' | 'ű' | 'ų'
            | 'ơ' | 'ư' | '\u{1EA0}'..='\u{1EF9}'
    )
}

/// Scripts written without spaces between words: CJK ideographs and kana, Hangul, Thai, Lao,
/// Myanmar, Khmer.
fn is_unspaced_script(c: char) -> bool {
    matches!(
        c,
        '\u{0E00}'..='\u{0EFF}'
            | '\u{1000}'..='\u{109F}'
            | '\u{1780}'..='\u{17FF}'
            | '\u{3040}'..='\u{30FF}'
            | '\u{3400}'..='\u{4DBF}'
            | '\u{4E00}'..='\u{9FFF}'
            | '\u{AC00}'..='\u{D7AF}'
            | '\u{F900}'..='\u{FAFF}'
            | '\u{20000}'..='\u{3134F}'
    )
}

/// Frequent function words of Latin-script languages, two letters or more.
static STOP_WORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    [
        // English
        "the an and or but of to in on at by for with from as is are was were be been it its this that these \
         those not no if then so do does did have has had will would can could should may you he she we they \
         me my your his her our their what which who when where how there here all any some than into about \
         also just only very more most one",
        // French
        "le la les un une des du de et ou mais en dans sur pour par avec sans est sont été être ont ce cet cette \
         ces il elle ils elles nous vous je on qui que qu ne pas plus se son sa ses leur au aux",
        // German
        "der die das den dem des ein eine einen einem einer und oder aber im auf mit von zu zum zur für ist sind \
         war wird werden hat haben nicht auch es er sie wir ich sich als wie bei an am aus nach dass noch nur",
        // Spanish, Italian, Portuguese, Romanian
        "el los las una del que es son por para con se su sus lo al como más pero il gli di da che non per uno \
         della nel sono si os um uma do da dos das em no na não com și în care este nu din cu pe",
        // Dutch, Scandinavian
        "het een van op te dat niet met voor zijn er aan ook och att det som ett på är av för til og ikke jeg \
         har var",
        // Polish, Czech, Slovak, Slovenian, Croatian, Hungarian, Finnish, Estonian, Turkish
        "na się nie to że jest są jak ale po co tak za od aby kiedy oraz przez dla je jsou az és hogy egy is \
         van meg ja ei että oli hän kun mutta ve bir bu için ile çok ne gibi daha olarak lub ich jego które \
         który która można ze we se pro jako nebo jejich které při ve sa pre ako aj alebo ktoré ktorý ktorá už \
         pri in ki ali pa tudi kot lahko su ili kao koji što nem ez el ki mint csak még már vagy amely ami \
         ha on se tai myös voi kuin ovat sen jos niin joka jotka ka kui mis ning või de ya veya ki",
        // Basque, Catalan, Danish and Norwegian, Swedish
        "eta da ez du dira bat ere edo baina hau hori izan dute zen bere baita beste dago els amb és als \
         og er til af med den kan de ikke som har for men kun och är till kan inte",
        // Indonesian and Malay, Vietnamese
        "yang dan di ini itu dengan untuk dari dalam tidak ke akan pada juga adalah và của có là không được \
         trong cho những các một người này với đã",
        // Keywords of common programming languages: the function words of code
        "const let var function return else elif while def class import from fn pub self this new null \
         true false none int void public private static struct impl match case break continue try catch",
    ]
    .iter()
    .flat_map(|line| line.split_whitespace())
    .collect()
});

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn assert_high(text: &str) {
        let quality = score(text);
        assert!(quality.score >= AUTO_ACCEPT_SCORE, "expected ≥ {AUTO_ACCEPT_SCORE}: {quality:#?}\n{text}");
    }

    fn assert_low(text: &str) {
        let quality = score(text);
        assert!(quality.score <= REJECT_BELOW_SCORE, "expected ≤ {REJECT_BELOW_SCORE}: {quality:#?}\n{text}");
    }

    /// `len` characters drawn from `alphabet` by a seeded generator (the same samples every run).
    fn string(rng: &mut StdRng, alphabet: &[u8], len: usize) -> String {
        (0..len).map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())])).collect()
    }

    #[test]
    fn english_prose_scores_high() {
        assert_high(
            "Soil moisture sensors measure the volumetric water content of the ground. Farmers use the \
             readings to decide when to irrigate, which saves water and keeps the roots from rotting. The \
             cheapest sensors measure electrical resistance between two probes; better ones measure the \
             dielectric constant of the soil, which changes with the amount of water it holds.",
        );
    }

    #[test]
    fn instruction_and_response_score_high() {
        assert_high(
            "Explain in two sentences why the sky is blue.\nSunlight is scattered by the molecules of the air, \
             and blue light is scattered much more than red light because it has a shorter wavelength. So when \
             we look at any part of the sky away from the sun, we see mostly that scattered blue light.",
        );
        assert_high("What is the capital of Australia?\nThe capital of Australia is Canberra, not Sydney.");
    }

    #[test]
    fn code_scores_high() {
        assert_high(
            "fn parse_config(path: &Path) -> Result<Config, Error> {\n    let text = std::fs::read_to_string(path)?;\n    \
             let mut config = Config::default();\n    for line in text.lines() {\n        \
             if let Some((key, value)) = line.split_once('=') {\n            config.set(key.trim(), value.trim())?;\n        \
             }\n    }\n    Ok(config)\n}",
        );
        assert_high(
            "def mean(values):\n    \"\"\"Return the arithmetic mean of a non-empty list.\"\"\"\n    if not values:\n        \
             raise ValueError(\"mean of an empty list\")\n    return sum(values) / len(values)\n",
        );
    }

    #[test]
    fn other_languages_score_high() {
        assert_high(
            "Le sol retient l'eau de pluie et la restitue lentement aux plantes. Les agriculteurs mesurent son \
             humidité pour savoir quand il faut arroser, ce qui permet d'économiser de l'eau et de protéger les \
             racines.",
        );
        assert_high(
            "Der Boden speichert das Regenwasser und gibt es langsam an die Pflanzen ab. Landwirte messen die \
             Bodenfeuchte, um zu entscheiden, wann bewässert werden muss; das spart Wasser und schützt die \
             Wurzeln vor Fäulnis.",
        );
        assert_high(
            "土壤能够储存雨水，并慢慢地把水分提供给植物。农民通过测量土壤湿度来决定什么时候需要灌溉，\
             这样既可以节约用水，又能保护植物的根系不会腐烂。",
        );
        assert_high(
            "Почва удерживает дождевую воду и постепенно отдаёт её растениям. Фермеры измеряют влажность почвы, \
             чтобы решить, когда нужен полив.",
        );
    }

    #[test]
    fn repeated_phrases_score_low() {
        assert_low(&"buy now ".repeat(60));
        assert_low(&"Click here to win a free prize! ".repeat(20));
        let quality = score(&"buy now ".repeat(60));
        assert!(quality.signals.repetition > 0.9 && quality.signals.duplicate_trigram_ratio > 0.9, "{quality:#?}");
    }

    #[test]
    fn random_encodings_score_low() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let base64_alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let base64: Vec<String> = (0..6).map(|_| string(&mut rng, base64_alphabet, 76)).collect();
        assert_low(&base64.join("\n"));
        for token_len in [16, 32, 64] {
            let hex: Vec<String> = (0..12).map(|_| string(&mut rng, b"0123456789abcdef", token_len)).collect();
            assert_low(&hex.join(" "));
        }
    }

    #[test]
    fn keyboard_mash_and_symbols_score_low() {
        assert_low(
            "asdkjh qwpoeiu zxmcnv lkjhsdf poiuqwe mnbvcx ghfjdk wqeiop xcvbnm sdfhjk qweuio zxcvbn \
             hjgkfd oiuytr asdfgh lkjpoi",
        );
        assert_low("asdkjh qwpoeiu zxmcnv");
        assert_low("!!!!$$$$%%%%");
        assert_low("!!!! $$$$ %%%% &&&& **** ####");
        assert_eq!(score("").score, 0);
        assert_eq!(score(" \n\t ").score, 0);
    }

    /// Sales words a spammer draws from, the first `k` for a vocabulary of `k`.
    const SPAM_WORDS: &str = "buy cheap best deal free click offer now discount sale win prize limited exclusive \
        bonus save order today money fast easy guaranteed instant cash credit lowest price amazing special gift \
        winner unlimited hot deals pills loan casino bet jackpot crypto bitcoin invest profit earn income rich \
        trial subscribe shipping coupon promo";

    fn word_salad(rng: &mut StdRng, vocabulary: usize, words: usize) -> String {
        let spam: Vec<&str> = SPAM_WORDS.split_whitespace().take(vocabulary).collect();
        (0..words).map(|_| spam[rng.random_range(0..spam.len())]).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn thirty_words_drawn_from_six_are_rejected() {
        let mut rng = StdRng::seed_from_u64(6);
        for _ in 0..50 {
            let text = word_salad(&mut rng, 6, 30);
            let quality = score(&text);
            assert!(quality.score < REJECT_BELOW_SCORE, "{quality:#?}\n{text}");
            // Under the rules before 2026-12-04 the same text was not rejected.
            assert!(score_with(&text, Rules::BEFORE_2026_12_04).score >= REJECT_BELOW_SCORE, "{text}");
        }
    }

    #[test]
    fn salad_of_a_larger_sales_vocabulary_is_not_accepted() {
        let mut rng = StdRng::seed_from_u64(50);
        for vocabulary in [20, 30, 50] {
            for words in [20, 30, 60] {
                let text = word_salad(&mut rng, vocabulary, words);
                let quality = score(&text);
                assert!(quality.score < AUTO_ACCEPT_SCORE, "{quality:#?}\n{text}");
            }
        }
    }

    #[test]
    fn natural_short_texts_stay_accepted() {
        for text in [
            "Great little kettle. It boils a full litre in under three minutes and the handle never gets hot.",
            "Q: How do I reset my password? A: Open the settings page, choose Security, and follow the link we \
             email to you.",
            "Die Lieferung kam pünktlich an, aber die Verpackung war beschädigt und ein Glas war zerbrochen.",
            "El hotel está cerca de la playa y el desayuno es excelente, pero las habitaciones son pequeñas.",
            "for (key, value) in map.iter() {\n    if value.is_empty() { continue; }\n    println!(\"{key}: {value}\");\n}",
            "Kirjasto tarjoaa yksinkertaisen rajapinnan, jonka avulla voi lukea ja kirjoittaa tiedostoja verkon yli.",
            "Programi omogoča urejanje slik in je namenjen začetnikom, ki želijo hitro popraviti fotografije.",
            "Приложение позволяет быстро находить файлы на диске и просматривать их содержимое без лишних действий.",
        ] {
            assert_high(text);
        }
    }

    #[test]
    fn effective_vocabulary_is_the_size_uniform_draws_need() {
        assert_eq!(effective_vocabulary(10, 10), f64::INFINITY);
        // 30 draws from 6 words show 5.96 distinct ones on average.
        assert!((effective_vocabulary(30, 6) - 6.0).abs() < 1.5, "{}", effective_vocabulary(30, 6));
        assert!(effective_vocabulary(30, 25) > 60.0);
        assert!(effective_vocabulary(60, 20) < effective_vocabulary(30, 20));
    }

    #[test]
    fn signals_report_the_character_classes() {
        let quality = score("ab 12 !?");
        let signals = &quality.signals;
        assert_eq!((signals.letter_ratio, signals.digit_ratio, signals.symbol_ratio), (0.25, 0.25, 0.25));
        assert_eq!(signals.whitespace_ratio, 0.25);
        assert_eq!(signals.tokens, 3);
        assert_eq!(camel_case_parts("parseHTTPHeaderValue"), ["parse", "HTTPHeader", "Value"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn score_stays_in_range(text in "\\PC{0,400}") {
            let quality = score(&text);
            prop_assert!(quality.score <= 1000);
            prop_assert!((0.0..=1.0).contains(&quality.signals.repetition));
            prop_assert!((0.0..=1.0).contains(&quality.signals.language_likeness));
        }

        #[test]
        fn score_stays_in_range_on_words(
            words in prop::collection::vec("[a-zA-Z]{1,12}|[0-9]{1,4}|[.,!?]|\n", 0..200),
        ) {
            let quality = score(&words.join(" "));
            prop_assert!(quality.score <= 1000);
        }
    }
}
