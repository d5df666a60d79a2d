//! Ingest screening on short records (10–60 words), each figure next to the scheme before
//! 2026-12-04 in the same run: the quality score on natural texts and on word salad, and
//! near-duplicate detection of lightly edited copies and of distinct texts on the same topic.
//! Run: `cargo bench -p openledger-screen --bench screen -- [--natural PATH] [--records N]`.
//!
//! The natural texts come from `bench/screen/natural_corpus.py` (Debian's AppStream package
//! descriptions in 28 languages and the Python standard library; JSON lines with `group`, `lang`,
//! `kind` and `text`), by default at `/var/tmp/openledger-tools/screen/natural.jsonl`.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use openledger_screen::dedup::{DedupParams, MinHasher, NearDuplicateIndex};
use openledger_screen::quality::{self, AUTO_ACCEPT_SCORE, REJECT_BELOW_SCORE, Rules};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

/// Words of the sales vocabulary word salad is drawn from (the first `k` for a vocabulary of `k`).
const SPAM_WORDS: &str = "buy cheap best deal free click offer now discount sale win prize limited exclusive \
    bonus save order today money fast easy guaranteed instant cash credit lowest price amazing special gift \
    winner unlimited hot deals pills loan casino bet jackpot crypto bitcoin invest profit earn income rich \
    trial subscribe shipping coupon promo";
const SALAD_VOCABULARIES: [usize; 5] = [6, 10, 20, 30, 50];
const SALAD_LENGTHS: [usize; 5] = [10, 20, 30, 45, 60];
const SALAD_SAMPLES: usize = 200;
/// One word in this many is replaced in an edited copy (at least one).
const WORDS_PER_EDIT: usize = 10;

struct Natural {
    group: String,
    lang: String,
    kind: String,
    text: String,
}

fn load(path: &str) -> Vec<Natural> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("{path}: {error}: run bench/screen/natural_corpus.py {path} first"));
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let field = |name: &str| value[name].as_str().expect("a string field").to_owned();
            Natural { group: field("group"), lang: field("lang"), kind: field("kind"), text: field("text") }
        })
        .collect()
}

/// (accepted ≥ 600, rejected < 300) over `texts` under `rules`.
fn verdicts<'a>(texts: impl Iterator<Item = &'a str>, rules: Rules) -> (usize, usize, usize) {
    let (mut accepted, mut rejected, mut total) = (0, 0, 0);
    for text in texts {
        let score = quality::score_with(text, rules).score;
        accepted += usize::from(score >= AUTO_ACCEPT_SCORE);
        rejected += usize::from(score < REJECT_BELOW_SCORE);
        total += 1;
    }
    (accepted, rejected, total)
}

fn percent(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

fn quality_on_natural_texts(corpus: &[Natural]) {
    println!(
        "quality on natural texts: auto-accepted (≥ {AUTO_ACCEPT_SCORE}) and rejected (< {REJECT_BELOW_SCORE}), before → now"
    );
    let mut by_lang: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for record in corpus {
        by_lang.entry(record.lang.as_str()).or_default().push(&record.text);
    }
    by_lang.insert("all", corpus.iter().map(|record| record.text.as_str()).collect());
    for (lang, texts) in &by_lang {
        let (old_accepted, old_rejected, total) = verdicts(texts.iter().copied(), Rules::BEFORE_2026_12_04);
        let (accepted, rejected, _) = verdicts(texts.iter().copied(), Rules::default());
        println!(
            "  {lang:>6}: {total:>5} texts: accepted {:.2}% → {:.2}%, rejected {:.2}% → {:.2}%",
            percent(old_accepted, total),
            percent(accepted, total),
            percent(old_rejected, total),
            percent(rejected, total)
        );
    }
    let timed = |rules: Rules| {
        let started = Instant::now();
        let total: u64 = corpus.iter().map(|record| u64::from(quality::score_with(&record.text, rules).score)).sum();
        std::hint::black_box(total);
        started.elapsed().as_secs_f64() * 1e6 / corpus.len().max(1) as f64
    };
    let (before, now) = (timed(Rules::BEFORE_2026_12_04), timed(Rules::default()));
    println!("  scoring: {before:.1} µs per text before, {now:.1} µs now");
    // The natural texts the new rules take acceptance from, for a reader to judge.
    let lost: Vec<&Natural> = corpus
        .iter()
        .filter(|record| {
            quality::score_with(&record.text, Rules::BEFORE_2026_12_04).score >= AUTO_ACCEPT_SCORE
                && quality::score(&record.text).score < AUTO_ACCEPT_SCORE
        })
        .collect();
    println!("  natural texts no longer auto-accepted: {} of {}", lost.len(), corpus.len());
    let examples = lost.iter().filter(|record| record.kind == "prose").take(5);
    for record in examples.chain(lost.iter().filter(|record| record.kind == "code").take(5)) {
        let quality = quality::score(&record.text);
        println!(
            "    [{} {} {}] score {} (vocabulary {:.1}, function words {:.2}): {}",
            record.kind,
            record.lang,
            record.group,
            quality.score,
            quality.signals.effective_vocabulary,
            quality.signals.stop_word_ratio,
            record.text.chars().take(160).collect::<String>().replace('\n', " ⏎ ")
        );
    }
}

fn quality_on_word_salad() {
    println!("quality on word salad ({SALAD_SAMPLES} texts per cell): accepted / rejected, before → now");
    let spam: Vec<&str> = SPAM_WORDS.split_whitespace().collect();
    let mut rng = StdRng::seed_from_u64(0x5a1a_d000);
    for vocabulary in SALAD_VOCABULARIES {
        let mut cells = Vec::new();
        for words in SALAD_LENGTHS {
            let texts: Vec<String> = (0..SALAD_SAMPLES)
                .map(|_| (0..words).map(|_| spam[rng.random_range(0..vocabulary)]).collect::<Vec<_>>().join(" "))
                .collect();
            let (old_accepted, old_rejected, total) =
                verdicts(texts.iter().map(String::as_str), Rules::BEFORE_2026_12_04);
            let (accepted, rejected, _) = verdicts(texts.iter().map(String::as_str), Rules::default());
            cells.push(format!(
                "{words} words {:.0}%/{:.0}% → {:.0}%/{:.0}%",
                percent(old_accepted, total),
                percent(old_rejected, total),
                percent(accepted, total),
                percent(rejected, total)
            ));
        }
        println!("  vocabulary of {vocabulary:>2}: {}", cells.join("; "));
    }
}

/// A copy of `text` with one word in `WORDS_PER_EDIT` replaced by a word of another text.
fn edited_copy(text: &str, vocabulary: &[&str], rng: &mut StdRng) -> String {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    let edits = (words.len() / WORDS_PER_EDIT).max(1);
    let mut positions: Vec<usize> = (0..words.len()).collect();
    positions.shuffle(rng);
    for &at in &positions[..edits] {
        words[at] = vocabulary[rng.random_range(0..vocabulary.len())];
    }
    words.join(" ")
}

fn word_jaccard(a: &str, b: &str) -> f64 {
    let a: HashSet<String> = a.split_whitespace().map(str::to_lowercase).collect();
    let b: HashSet<String> = b.split_whitespace().map(str::to_lowercase).collect();
    a.intersection(&b).count() as f64 / a.union(&b).count().max(1) as f64
}

/// Indexes the natural texts in order (counting those flagged against an earlier one: distinct
/// texts, many on the same topic), then looks up an edited copy of `originals` of them.
fn dedup_on_short_records(corpus: &[Natural], originals: usize, label: &str, params: DedupParams) {
    let hasher = MinHasher::new(params);
    let mut index: NearDuplicateIndex<usize> = NearDuplicateIndex::new(params);
    let started = Instant::now();
    let (mut flagged_distinct, mut flagged_alike) = (0, 0);
    let mut distinct = 0;
    let mut examples = Vec::new();
    for (id, record) in corpus.iter().enumerate() {
        let signatures = hasher.signatures(&record.text).expect("words");
        if let Some((found, _)) = index.nearest_to(&signatures) {
            // Texts sharing most of their words are near-duplicates in the corpus itself
            // (a stock sentence reworded, pt and pt_BR): flagging them is right.
            if word_jaccard(&corpus[found].text, &record.text) >= 0.5 {
                flagged_alike += 1;
            } else {
                flagged_distinct += 1;
                if examples.len() < 3 {
                    examples.push((found, id));
                }
            }
        }
        index.insert(id, signatures.indexed).expect("room");
        distinct += 1;
    }
    let indexing = started.elapsed().as_secs_f64();
    let vocabulary: Vec<&str> = corpus.iter().flat_map(|record| record.text.split_whitespace()).collect();
    let mut rng = StdRng::seed_from_u64(0xed17_0000);
    let mut eligible: Vec<usize> =
        (0..corpus.len()).filter(|&id| corpus[id].text.split_whitespace().count() >= 10).collect();
    eligible.shuffle(&mut rng);
    let (mut found, mut tried) = (0, 0);
    let mut by_length: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for &id in eligible.iter().take(originals) {
        let copy = edited_copy(&corpus[id].text, &vocabulary, &mut rng);
        let hit = index.nearest_to(&hasher.signatures(&copy).expect("words")).is_some_and(|(match_id, _)| {
            match_id == id || word_jaccard(&corpus[match_id].text, &corpus[id].text) >= 0.5
        });
        tried += 1;
        found += usize::from(hit);
        let words = corpus[id].text.split_whitespace().count().min(59) / 10 * 10;
        let cell = by_length.entry(words).or_default();
        cell.0 += usize::from(hit);
        cell.1 += 1;
    }
    let lengths: Vec<String> = by_length
        .iter()
        .map(|(words, (hit, total))| format!("{words}–{}: {:.1}%", words + 9, percent(*hit, *total)))
        .collect();
    println!(
        "  {label}: edited copies flagged {found} / {tried} ({:.1}%; by words {}); distinct texts flagged \
         {flagged_distinct} / {distinct} ({:.2}%), plus {flagged_alike} flagged sharing ≥ half their words; \
         {:.1} µs per record to sign, look up and index",
        percent(found, tried),
        lengths.join(", "),
        percent(flagged_distinct, distinct),
        indexing * 1e6 / corpus.len().max(1) as f64
    );
    for (earlier, later) in examples {
        println!("      {:?}\n      ~ {:?}", corpus[earlier].text, corpus[later].text);
    }
}

fn main() {
    let mut natural_path = "/var/tmp/openledger-tools/screen/natural.jsonl".to_owned();
    let mut originals = 5_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--natural" => natural_path = args.next().expect("--natural needs a path"),
            "--records" => originals = args.next().and_then(|n| n.parse().ok()).expect("--records needs a count"),
            _ => {}
        }
    }
    let corpus = load(&natural_path);
    println!("{} natural short texts from {natural_path}", corpus.len());
    quality_on_natural_texts(&corpus);
    quality_on_word_salad();
    println!("near-duplicates on short records (one word in {WORDS_PER_EDIT} replaced, at least one):");
    let now = DedupParams::default();
    dedup_on_short_records(
        &corpus,
        originals,
        "before (word 5-grams)",
        DedupParams { short_record_max_chars: 0, ..now },
    );
    for chars in [3, 4, 5] {
        let label =
            format!("now, {chars}-character shingles{}", if chars == now.shingle_chars { " (default)" } else { "" });
        dedup_on_short_records(&corpus, originals, &label, DedupParams { shingle_chars: chars, ..now });
    }
}
