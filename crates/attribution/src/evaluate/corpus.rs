//! A seeded, labelled text-classification corpus with known good and bad contributors, generated
//! offline from templates and topic vocabularies (no dataset download), and its export directory.
//!
//! Each sentence draws its content words from its topic's vocabulary, with some words borrowed
//! from other topics, so a classifier must weigh several words rather than look one up. The
//! contributors' roles: honest (right labels), label-flipping (most labels replaced by a wrong
//! one), off-domain (texts of topics outside the label set, labels at random), spam (word salad,
//! labels at random) and copying (exact or about 10%-edited copies of honest records, under
//! identities of their own). The trusted validation split and the test split are honest texts
//! that are not in the corpus.
//!
//! On disk: the export format `openledger datanet export` writes (see [`crate::corpus`]) plus
//! `validation.jsonl`, `test.jsonl` (`{"text","label"}`) and `truth.json` (each contributor's
//! role and each record's copy source), so `openledger model finetune` trains on `records.jsonl`
//! as it is and `openledger attribution evaluate` reads the whole directory.

use std::path::Path;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::corpus::{Corpus, EXPORT_FORMAT, MANIFEST_FILE, Manifest, PROVENANCE_MEMBER, RECORDS_FILE};
use crate::{AttributionError, Result};

pub const VALIDATION_FILE: &str = "validation.jsonl";
pub const TEST_FILE: &str = "test.jsonl";
pub const TRUTH_FILE: &str = "truth.json";

/// Most contributors and records a generated corpus may have (it is held in memory, and every
/// record is trained on several times by the evaluation).
pub const MAX_GENERATED_CONTRIBUTORS: usize = 1000;
pub const MAX_GENERATED_RECORDS: usize = 100_000;

/// What a contributor does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Honest,
    LabelFlipping,
    OffDomain,
    Spam,
    Copying,
}

impl Role {
    pub const ALL: [Role; 5] = [Self::Honest, Self::LabelFlipping, Self::OffDomain, Self::Spam, Self::Copying];

    /// Whether the contributor's records hurt a model trained on them: what quality detection
    /// must find. Copiers' records are as good as their sources; replication-robust credit, not
    /// detection, answers them.
    pub fn is_harmful(self) -> bool {
        matches!(self, Self::LabelFlipping | Self::OffDomain | Self::Spam)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Honest => "honest",
            Self::LabelFlipping => "label_flipping",
            Self::OffDomain => "off_domain",
            Self::Spam => "spam",
            Self::Copying => "copying",
        }
    }
}

/// How many contributors of each role, and what they contribute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorpusSpec {
    pub seed: u64,
    pub honest: usize,
    pub label_flipping: usize,
    pub off_domain: usize,
    pub spam: usize,
    pub copying: usize,
    pub records_per_contributor: usize,
    /// Share of a label-flipper's records whose label is replaced by a wrong one.
    pub flip_share: f64,
    /// Share of a copier's records that are edited (about a tenth of their words) rather than exact.
    pub edited_copy_share: f64,
    pub validation_records: usize,
    pub test_records: usize,
}

impl CorpusSpec {
    /// A corpus small enough for a unit test with the tiny model.
    pub fn ci(seed: u64) -> Self {
        Self {
            seed,
            honest: 8,
            label_flipping: 2,
            off_domain: 1,
            spam: 1,
            copying: 1,
            records_per_contributor: 8,
            flip_share: 1.0,
            edited_copy_share: 0.5,
            validation_records: 12,
            test_records: 8,
        }
    }

    fn contributors(&self) -> usize {
        self.honest + self.label_flipping + self.off_domain + self.spam + self.copying
    }

    fn validate(&self) -> Result<()> {
        let records = self.contributors() * self.records_per_contributor;
        if self.honest == 0 || self.records_per_contributor == 0 {
            return Err(AttributionError::invalid("a corpus needs honest contributors with records"));
        }
        if self.contributors() > MAX_GENERATED_CONTRIBUTORS || records > MAX_GENERATED_RECORDS {
            return Err(AttributionError::invalid(format!(
                "{} contributors and {records} records exceed the limits {MAX_GENERATED_CONTRIBUTORS} and {MAX_GENERATED_RECORDS}",
                self.contributors()
            )));
        }
        if !(0.0..=1.0).contains(&self.flip_share) || !(0.0..=1.0).contains(&self.edited_copy_share) {
            return Err(AttributionError::invalid("flip and edited-copy shares must be in [0, 1]"));
        }
        if self.validation_records == 0 || self.test_records == 0 {
            return Err(AttributionError::invalid("validation and test splits need at least one record each"));
        }
        Ok(())
    }
}

/// One labelled text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelledText {
    pub text: String,
    pub label: String,
}

/// A contributor's role, by public key (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContributorTruth {
    pub contributor: String,
    pub role: Role,
}

/// What the evaluation knows that attribution must find out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub contributors: Vec<ContributorTruth>,
    /// Per corpus record: the index of the record it copies, for copiers' records.
    pub copy_of: Vec<Option<usize>>,
    pub labels: Vec<String>,
}

impl GroundTruth {
    pub fn role(&self, contributor: &str) -> Option<Role> {
        self.contributors.iter().find(|c| c.contributor == contributor).map(|c| c.role)
    }
}

/// A generated (or read back) evaluation corpus.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedCorpus {
    pub corpus: Corpus,
    /// The corpus records' bodies, in corpus order.
    pub records: Vec<LabelledText>,
    pub truth: GroundTruth,
    pub validation: Vec<LabelledText>,
    pub test: Vec<LabelledText>,
}

/// A topic: its label and its vocabulary (nouns, verbs, adjectives).
type Topic = (&'static str, [&'static str; 10], [&'static str; 6], [&'static str; 6]);

/// The topics that are labels.
const TOPICS: [Topic; 4] = [
    (
        "sport",
        ["goal", "match", "coach", "team", "striker", "league", "stadium", "referee", "season", "trophy"],
        ["scored", "defended", "trained", "tackled", "won", "passed"],
        ["fast", "tired", "winning", "strong", "rival", "home"],
    ),
    (
        "food",
        ["soup", "bread", "chef", "recipe", "oven", "garlic", "butter", "kitchen", "dinner", "spice"],
        ["baked", "tasted", "cooked", "seasoned", "served", "roasted"],
        ["fresh", "spicy", "sweet", "crispy", "warm", "salty"],
    ),
    (
        "tech",
        ["laptop", "server", "chip", "code", "network", "robot", "browser", "battery", "screen", "software"],
        ["compiled", "crashed", "booted", "updated", "encrypted", "deployed"],
        ["digital", "wireless", "faster", "smart", "virtual", "quiet"],
    ),
    (
        "nature",
        ["forest", "river", "eagle", "mountain", "meadow", "wolf", "glacier", "rain", "valley", "oak"],
        ["flowed", "bloomed", "grew", "migrated", "froze", "sheltered"],
        ["wild", "green", "misty", "ancient", "calm", "snowy"],
    ),
];

/// Topics outside the label set, for off-domain contributors.
const OFF_TOPICS: [([&str; 10], [&str; 6], [&str; 6]); 2] = [
    (
        ["court", "judge", "contract", "lawyer", "verdict", "clause", "tenant", "appeal", "witness", "statute"],
        ["ruled", "signed", "appealed", "testified", "sued", "drafted"],
        ["legal", "binding", "formal", "guilty", "civil", "void"],
    ),
    (
        ["violin", "chord", "singer", "album", "melody", "drummer", "opera", "rhythm", "choir", "piano"],
        ["played", "sang", "recorded", "tuned", "composed", "rehearsed"],
        ["loud", "minor", "live", "acoustic", "soft", "classical"],
    ),
];

const TEMPLATES: [&str; 6] = [
    "the {adj} {noun} {verb} near the {noun}",
    "a {noun} {verb} the {adj} {noun} today",
    "we saw the {noun} and the {adj} {noun}",
    "my {adj} {noun} {verb} after the {noun}",
    "every {noun} {verb} with a {adj} {noun}",
    "the {noun} {verb} while the {noun} was {adj}",
];

/// Chance that a slot borrows its word from another topic: noise a classifier must outvote.
const BORROWED_WORD_SHARE: f64 = 0.15;

type Vocabulary<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str]);

fn topic_vocabulary(t: usize) -> Vocabulary<'static> {
    let (_, nouns, verbs, adjectives) = &TOPICS[t];
    (nouns, verbs, adjectives)
}

fn sentence(rng: &mut StdRng, own: Vocabulary<'_>, others: &[Vocabulary<'_>]) -> String {
    let template = TEMPLATES.choose(rng).copied().unwrap_or(TEMPLATES[0]);
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').unwrap_or(0);
        let source = if rng.random_bool(BORROWED_WORD_SHARE) { *others.choose(rng).unwrap_or(&own) } else { own };
        let words = match &rest[start + 1..end] {
            "noun" => source.0,
            "verb" => source.1,
            _ => source.2,
        };
        out.push_str(words.choose(rng).copied().unwrap_or("thing"));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn honest_text(rng: &mut StdRng) -> LabelledText {
    let t = rng.random_range(0..TOPICS.len());
    let others: Vec<Vocabulary> = (0..TOPICS.len()).filter(|&o| o != t).map(topic_vocabulary).collect();
    LabelledText { text: sentence(rng, topic_vocabulary(t), &others), label: TOPICS[t].0.to_string() }
}

fn random_label(rng: &mut StdRng) -> String {
    TOPICS[rng.random_range(0..TOPICS.len())].0.to_string()
}

fn wrong_label(rng: &mut StdRng, right: &str) -> String {
    let wrong: Vec<&str> = TOPICS.iter().map(|t| t.0).filter(|l| *l != right).collect();
    wrong.choose(rng).copied().unwrap_or(right).to_string()
}

fn off_domain_text(rng: &mut StdRng) -> LabelledText {
    let (nouns, verbs, adjectives) = OFF_TOPICS.choose(rng).unwrap_or(&OFF_TOPICS[0]);
    LabelledText { text: sentence(rng, (nouns, verbs, adjectives), &[]), label: random_label(rng) }
}

/// Word salad: words from every vocabulary in no order, and made-up letter strings.
fn spam_text(rng: &mut StdRng) -> LabelledText {
    let mut all: Vec<&str> = TOPICS.iter().flat_map(|t| t.1.iter().chain(&t.2).chain(&t.3)).copied().collect();
    all.extend(OFF_TOPICS.iter().flat_map(|t| t.0.iter().chain(&t.1).chain(&t.2)));
    let words = rng.random_range(5..9);
    let salad: Vec<String> = (0..words)
        .map(|_| {
            if rng.random_bool(0.3) {
                (0..rng.random_range(3..8)).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect()
            } else {
                all.choose(rng).copied().unwrap_or("x").to_string()
            }
        })
        .collect();
    LabelledText { text: salad.join(" "), label: random_label(rng) }
}

/// About a tenth of the words replaced by a filler word (at least one).
fn edited(rng: &mut StdRng, source: &LabelledText) -> LabelledText {
    const FILLERS: [&str; 5] = ["really", "quite", "also", "then", "just"];
    LabelledText { text: replace_tenth(rng, &source.text, &FILLERS), label: source.label.clone() }
}

/// `text` with about a tenth of its space-separated words (at least one) replaced by words of
/// `vocabulary`: the evaluation's "lightly edited copy".
pub(crate) fn replace_tenth(rng: &mut StdRng, text: &str, vocabulary: &[&str]) -> String {
    let mut words: Vec<&str> = text.split(' ').collect();
    let edits = (words.len() / 10).max(1);
    for _ in 0..edits {
        let at = rng.random_range(0..words.len());
        words[at] = vocabulary.choose(rng).copied().unwrap_or(words[at]);
    }
    words.join(" ")
}

fn contributor_key(seed: u64, index: usize) -> String {
    blake3::hash(format!("openledger-evaluation-contributor/{seed}/{index}").as_bytes()).to_hex().to_string()
}

impl GeneratedCorpus {
    /// Generates the corpus `spec` describes; the same spec gives the same corpus.
    pub fn generate(spec: &CorpusSpec) -> Result<Self> {
        spec.validate()?;
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let roles: Vec<Role> = [
            (Role::Honest, spec.honest),
            (Role::LabelFlipping, spec.label_flipping),
            (Role::OffDomain, spec.off_domain),
            (Role::Spam, spec.spam),
            (Role::Copying, spec.copying),
        ]
        .into_iter()
        .flat_map(|(role, n)| std::iter::repeat_n(role, n))
        .collect();
        let truth: Vec<ContributorTruth> = roles
            .iter()
            .enumerate()
            .map(|(i, &role)| ContributorTruth { contributor: contributor_key(spec.seed, i), role })
            .collect();
        // Originals in a shuffled acceptance order; copies are accepted after what they copy.
        let mut originals: Vec<(usize, LabelledText)> = Vec::new();
        for (c, &role) in roles.iter().enumerate() {
            for _ in 0..spec.records_per_contributor {
                let record = match role {
                    Role::Honest => honest_text(&mut rng),
                    Role::LabelFlipping => {
                        let mut r = honest_text(&mut rng);
                        if rng.random_bool(spec.flip_share) {
                            r.label = wrong_label(&mut rng, &r.label);
                        }
                        r
                    }
                    Role::OffDomain => off_domain_text(&mut rng),
                    Role::Spam => spam_text(&mut rng),
                    Role::Copying => continue,
                };
                originals.push((c, record));
            }
        }
        originals.shuffle(&mut rng);
        let honest_sources: Vec<usize> =
            (0..originals.len()).filter(|&i| roles[originals[i].0] == Role::Honest).collect();
        let mut copies: Vec<(usize, LabelledText, usize)> = Vec::new();
        for (c, _) in roles.iter().enumerate().filter(|(_, r)| **r == Role::Copying) {
            for _ in 0..spec.records_per_contributor {
                let source = *honest_sources.choose(&mut rng).unwrap_or(&0);
                let body = &originals[source].1;
                let copy = if rng.random_bool(spec.edited_copy_share) { edited(&mut rng, body) } else { body.clone() };
                copies.push((c, copy, source));
            }
        }
        copies.shuffle(&mut rng);
        let mut copy_of = vec![None; originals.len()];
        copy_of.extend(copies.iter().map(|(_, _, source)| Some(*source)));
        let entries: Vec<(usize, LabelledText)> =
            originals.into_iter().chain(copies.into_iter().map(|(c, body, _)| (c, body))).collect();
        let validation = (0..spec.validation_records).map(|_| honest_text(&mut rng)).collect();
        let test = (0..spec.test_records).map(|_| honest_text(&mut rng)).collect();
        let labels = TOPICS.iter().map(|t| t.0.to_string()).collect();
        let truth = GroundTruth { contributors: truth, copy_of, labels };
        let lines = export_lines(&entries, &truth)?;
        let corpus = Corpus::parse_jsonl(&format!("datanet:evaluation-{}@1", spec.seed), &lines.join("\n"))
            .map_err(AttributionError::invalid)?;
        let records = entries.into_iter().map(|(_, body)| body).collect();
        Ok(Self { corpus, records, truth, validation, test })
    }

    /// Writes the export directory (see the module doc).
    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| AttributionError::io(dir, e))?;
        let owners: Vec<(usize, LabelledText)> = self
            .corpus
            .records
            .iter()
            .zip(&self.records)
            .map(|(r, body)| {
                let owner = self.truth.contributors.iter().position(|c| c.contributor == r.contributor);
                let owner = owner.ok_or_else(|| no_role(&r.contributor))?;
                Ok((owner, body.clone()))
            })
            .collect::<Result<_>>()?;
        let lines = export_lines(&owners, &self.truth)?;
        let hashes: Vec<_> = self.corpus.records.iter().map(|r| r.hash).collect();
        let manifest = Manifest {
            format: EXPORT_FORMAT.into(),
            datanet_id: "evaluation".into(),
            slug: self.corpus.name.trim_start_matches("datanet:").trim_end_matches("@1").into(),
            version: 1,
            snapshot_id: "generated".into(),
            merkle_root: openledger_core::MerkleTree::new(&hashes).root().to_hex(),
            records: lines.len() as u64,
        };
        write(&dir.join(RECORDS_FILE), &(lines.join("\n") + "\n"))?;
        write(&dir.join(MANIFEST_FILE), &json(&manifest)?)?;
        write(&dir.join(VALIDATION_FILE), &jsonl(&self.validation)?)?;
        write(&dir.join(TEST_FILE), &jsonl(&self.test)?)?;
        write(&dir.join(TRUTH_FILE), &json(&self.truth)?)
    }

    /// Reads a directory `write_dir` wrote.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        let corpus = Corpus::read_export(dir)?;
        let records = read_jsonl(&dir.join(RECORDS_FILE))?;
        let truth_path = dir.join(TRUTH_FILE);
        let truth: GroundTruth = serde_json::from_str(&read(&truth_path)?)
            .map_err(|e| AttributionError::corrupt(truth_path.display().to_string(), e))?;
        if truth.copy_of.len() != corpus.records.len() {
            return Err(AttributionError::corrupt(
                truth_path.display().to_string(),
                "one copy entry per record expected",
            ));
        }
        if let Some(r) = corpus.records.iter().find(|r| truth.role(&r.contributor).is_none()) {
            return Err(no_role(&r.contributor));
        }
        let validation = read_jsonl(&dir.join(VALIDATION_FILE))?;
        let test = read_jsonl(&dir.join(TEST_FILE))?;
        Ok(Self { corpus, records, truth, validation, test })
    }
}

fn no_role(contributor: &str) -> AttributionError {
    AttributionError::invalid(format!("contributor {contributor} has no role in {TRUTH_FILE}: regenerate the corpus"))
}

/// Export lines: each body with its provenance, positions in order.
fn export_lines(entries: &[(usize, LabelledText)], truth: &GroundTruth) -> Result<Vec<String>> {
    entries
        .iter()
        .enumerate()
        .map(|(position, (owner, body))| {
            let hash = openledger_core::record::record_hash(&[("text", &body.text), ("label", &body.label)]);
            let contributor = &truth.contributors[*owner].contributor;
            let line = serde_json::json!({
                "text": body.text, "label": body.label,
                PROVENANCE_MEMBER: {
                    "position": position, "record": hash.to_hex(),
                    "contribution": format!("evaluation-{}-{position}", &contributor[..8]), "contributor": contributor,
                },
            });
            serde_json::to_string(&line).map_err(|e| AttributionError::invalid(e.to_string()))
        })
        .collect()
}

fn json(value: &impl Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| AttributionError::invalid(e.to_string()))
}

fn jsonl(records: &[LabelledText]) -> Result<String> {
    let lines: Vec<String> = records
        .iter()
        .map(serde_json::to_string)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| AttributionError::invalid(e.to_string()))?;
    Ok(lines.join("\n") + "\n")
}

fn read_jsonl(path: &Path) -> Result<Vec<LabelledText>> {
    read(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| AttributionError::corrupt(path.display().to_string(), e)))
        .collect()
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| AttributionError::io(path, e))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| AttributionError::io(path, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openledger_ml::train::data::RecordKind;

    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_corpus_and_another_seed_another() {
        let a = GeneratedCorpus::generate(&CorpusSpec::ci(1)).unwrap();
        assert_eq!(a, GeneratedCorpus::generate(&CorpusSpec::ci(1)).unwrap());
        assert_ne!(a.records, GeneratedCorpus::generate(&CorpusSpec::ci(2)).unwrap().records);
    }

    #[test]
    fn every_contributor_has_its_records_and_its_role() {
        let spec = CorpusSpec::ci(3);
        let g = GeneratedCorpus::generate(&spec).unwrap();
        assert_eq!(g.corpus.kind, RecordKind::Labelled);
        assert_eq!(g.corpus.records.len(), 13 * spec.records_per_contributor);
        assert_eq!(g.corpus.contributors().len(), 13);
        for c in &g.truth.contributors {
            let n = g.corpus.records.iter().filter(|r| r.contributor == c.contributor).count();
            assert_eq!(n, spec.records_per_contributor, "{:?}", c.role);
        }
        assert_eq!(g.validation.len(), spec.validation_records);
        assert_eq!(g.test.len(), spec.test_records);
    }

    #[test]
    fn flippers_labels_are_wrong_and_copies_come_after_their_honest_source() {
        let g = GeneratedCorpus::generate(&CorpusSpec::ci(4)).unwrap();
        let role = |i: usize| g.truth.role(&g.corpus.records[i].contributor).unwrap();
        for (i, body) in g.records.iter().enumerate() {
            if role(i) == Role::LabelFlipping {
                // flip_share 1: the label is never the topic whose words dominate the text.
                let topic = TOPICS.iter().find(|t| t.0 == body.label).unwrap();
                let own =
                    body.text.split(' ').filter(|w| topic.1.contains(w) || topic.2.contains(w) || topic.3.contains(w));
                assert!(own.count() <= 2, "{body:?}");
            }
            if let Some(source) = g.truth.copy_of[i] {
                assert_eq!(role(i), Role::Copying);
                assert_eq!(role(source), Role::Honest);
                assert!(source < i);
                assert_eq!(g.records[source].label, body.label);
            }
        }
        assert!(g.truth.copy_of.iter().any(Option::is_some));
    }

    #[test]
    fn the_export_directory_reads_back_as_the_same_corpus() {
        let g = GeneratedCorpus::generate(&CorpusSpec::ci(5)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        g.write_dir(dir.path()).unwrap();
        let back = GeneratedCorpus::read_dir(dir.path()).unwrap();
        assert_eq!(back.corpus.records, g.corpus.records);
        assert_eq!((back.records, back.truth, back.validation, back.test), (g.records, g.truth, g.validation, g.test));
        // `openledger model finetune` reads records.jsonl as labelled records.
        let (kind, parsed) = openledger_ml::train::data::read_records(&dir.path().join(RECORDS_FILE)).unwrap();
        assert_eq!((kind, parsed.len()), (RecordKind::Labelled, g.corpus.records.len()));
    }
}
