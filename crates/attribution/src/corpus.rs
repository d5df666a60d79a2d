//! The records of one sealed Datanet version as attribution sees them: in the version's order
//! (its acceptance order, so the first copy of a text is the first accepted one), each with
//! its content hash, contribution and contributor.
//!
//! On disk this is the export `openledger datanet export` writes: a directory with
//! `records.jsonl` and `manifest.json`. Each line of `records.jsonl` is the record's own body
//! (`{"text"}`, `{"text","label"}`, `{"instruction","response"}` or `{"messages"}`, so
//! `openledger model finetune` trains on the file as it is) plus one member
//! `"_openledger": {"position", "record", "contribution", "contributor"}` that training ignores.

use std::path::Path;

use openledger_core::ContentHash;
use openledger_ml::train::data::{RecordKind, parse_records};
use serde::{Deserialize, Serialize};

use crate::{AttributionError, Result};

/// The file names of an export directory.
pub const RECORDS_FILE: &str = "records.jsonl";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const EXPORT_FORMAT: &str = "openledger-datanet-export/1";
/// The member of each exported line that names where the record came from.
pub const PROVENANCE_MEMBER: &str = "_openledger";

/// What an export is a copy of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub datanet_id: String,
    pub slug: String,
    pub version: u64,
    pub snapshot_id: String,
    /// The version's Merkle root, hex.
    pub merkle_root: String,
    pub records: u64,
}

impl Manifest {
    /// The manifest of the export a records file belongs to, if it is one (`manifest.json` in
    /// the same directory as `records.jsonl`).
    pub fn beside(records_file: &Path) -> Result<Option<Self>> {
        if records_file.file_name().is_none_or(|name| name != RECORDS_FILE) {
            return Ok(None);
        }
        let Some(dir) = records_file.parent() else { return Ok(None) };
        if !dir.join(MANIFEST_FILE).exists() {
            return Ok(None);
        }
        Self::read(dir).map(Some)
    }

    /// Reads and checks `manifest.json` of an export directory.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| AttributionError::io(&path, e))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| AttributionError::corrupt(path.display().to_string(), e))?;
        if manifest.format != EXPORT_FORMAT {
            return Err(AttributionError::corrupt(
                path.display().to_string(),
                format!("format {:?}, expected {EXPORT_FORMAT:?}", manifest.format),
            ));
        }
        Ok(manifest)
    }

    /// The name a lineage gives the dataset: `datanet:<slug>@<version>`.
    pub fn dataset_name(&self) -> String {
        format!("datanet:{}@{}", self.slug, self.version)
    }
}

/// Where one exported record came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub position: u64,
    /// The record's content hash, hex.
    pub record: String,
    pub contribution: String,
    /// The contributor's public key, hex.
    pub contributor: String,
}

/// Writes an export directory record by record, as `openledger datanet export` and the
/// attribution-worker read a version: into `<out>.partial`, then renamed to `out` once every
/// record hashed to its body and the records to the version's Merkle root, so a half-written
/// export is never read.
pub struct ExportWriter {
    out: std::path::PathBuf,
    partial: std::path::PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    leaves: Vec<ContentHash>,
}

impl ExportWriter {
    /// Starts an export into `out`, which must not exist.
    pub fn create(out: &Path) -> Result<Self> {
        if out.exists() {
            return Err(AttributionError::invalid(format!("{} exists: export into a new directory", out.display())));
        }
        let partial = out.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(|e| AttributionError::io(&partial, e))?;
        let path = partial.join(RECORDS_FILE);
        let file = std::fs::File::create(&path).map_err(|e| AttributionError::io(&path, e))?;
        Ok(Self { out: out.to_path_buf(), partial, file: std::io::BufWriter::new(file), leaves: Vec::new() })
    }

    /// Appends the next record of the version (its body as stored, a JSON object).
    pub fn push(&mut self, hash: ContentHash, contribution: &str, contributor: &[u8], body: &[u8]) -> Result<()> {
        use std::io::Write;
        if ContentHash::of(body) != hash {
            return Err(AttributionError::Mismatch(format!("record {hash} does not match its body")));
        }
        let mut value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| AttributionError::corrupt(format!("record {hash}"), e))?;
        let provenance = Provenance {
            position: self.leaves.len() as u64,
            record: hash.to_hex(),
            contribution: contribution.to_owned(),
            contributor: hex::encode(contributor),
        };
        let provenance = serde_json::to_value(provenance).map_err(|e| AttributionError::corrupt("provenance", e))?;
        value.insert(PROVENANCE_MEMBER.into(), provenance);
        let path = self.partial.join(RECORDS_FILE);
        serde_json::to_writer(&mut self.file, &value).map_err(|e| AttributionError::io(&path, e.into()))?;
        self.file.write_all(b"\n").map_err(|e| AttributionError::io(&path, e))?;
        self.leaves.push(hash);
        Ok(())
    }

    /// Records written so far.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// Checks the records against the version's root, writes the manifest and publishes the
    /// directory. `manifest.records` is set here; a root that does not match writes nothing.
    pub fn finish(self, mut manifest: Manifest) -> Result<Manifest> {
        let path = self.partial.join(RECORDS_FILE);
        let file = self.file.into_inner().map_err(|e| AttributionError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| AttributionError::io(&path, e))?;
        let root = openledger_core::MerkleTree::new(&self.leaves).root();
        if root.to_hex() != manifest.merkle_root {
            let _ = std::fs::remove_dir_all(&self.partial);
            return Err(AttributionError::Mismatch(format!(
                "the records read do not hash to version {}'s root {}: nothing was written",
                manifest.version, manifest.merkle_root
            )));
        }
        manifest.format = EXPORT_FORMAT.into();
        manifest.records = self.leaves.len() as u64;
        let path = self.partial.join(MANIFEST_FILE);
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| AttributionError::corrupt("manifest", e))?;
        std::fs::write(&path, bytes).map_err(|e| AttributionError::io(&path, e))?;
        std::fs::rename(&self.partial, &self.out).map_err(|e| AttributionError::io(&self.out, e))?;
        Ok(manifest)
    }
}

/// One record of a version.
#[derive(Clone, Debug, PartialEq)]
pub struct CorpusRecord {
    /// Place in the version's order: lower was accepted first.
    pub position: u64,
    pub hash: ContentHash,
    pub contribution: String,
    /// The contributor's public key, hex.
    pub contributor: String,
    /// The text spans are matched against: the record's string fields joined by newlines
    /// (prompt then completion; a chat's messages in order).
    pub text: String,
}

/// The records of one version, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Corpus {
    /// `datanet:<slug>@<version>`, or a file name for a corpus that is not a Datanet version.
    pub name: String,
    pub manifest: Option<Manifest>,
    pub kind: RecordKind,
    pub records: Vec<CorpusRecord>,
}

impl Corpus {
    /// Builds a corpus from records already in the version's order; positions must increase.
    pub fn new(name: impl Into<String>, kind: RecordKind, records: Vec<CorpusRecord>) -> Result<Self> {
        if records.is_empty() {
            return Err(AttributionError::invalid(
                "the corpus has no records: an empty Datanet version has nothing to attribute",
            ));
        }
        if let Some(pair) = records.windows(2).find(|pair| pair[0].position >= pair[1].position) {
            return Err(AttributionError::invalid(format!(
                "record positions must increase: {} comes after {}",
                pair[1].position, pair[0].position
            )));
        }
        Ok(Self { name: name.into(), manifest: None, kind, records })
    }

    /// Reads an export directory (see the module doc).
    pub fn read_export(dir: &Path) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        let records_path = dir.join(RECORDS_FILE);
        let text = std::fs::read_to_string(&records_path).map_err(|e| AttributionError::io(&records_path, e))?;
        let mut corpus = Self::parse_jsonl(&manifest.dataset_name(), &text)
            .map_err(|e| AttributionError::invalid(format!("{}: {e}", records_path.display())))?;
        if corpus.records.len() as u64 != manifest.records {
            return Err(AttributionError::corrupt(
                records_path.display().to_string(),
                format!("{} records, the manifest says {}", corpus.records.len(), manifest.records),
            ));
        }
        let leaves: Vec<ContentHash> = corpus.records.iter().map(|r| r.hash).collect();
        let root = openledger_core::MerkleTree::new(&leaves).root();
        if root.to_hex() != manifest.merkle_root {
            return Err(AttributionError::corrupt(
                records_path.display().to_string(),
                format!("its records hash to {root}, not to the version's root {}", manifest.merkle_root),
            ));
        }
        corpus.manifest = Some(manifest);
        Ok(corpus)
    }

    /// Parses exported JSONL: every line must carry its provenance, and its hash must be the
    /// hash of its body.
    pub fn parse_jsonl(name: &str, text: &str) -> std::result::Result<Self, String> {
        let (kind, parsed) = parse_records(text)?;
        let mut records = Vec::with_capacity(parsed.len());
        let lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
        for ((index, line), record) in lines.zip(parsed) {
            let line_no = index + 1;
            let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("line {line_no}: {e}"))?;
            let provenance = value.get(PROVENANCE_MEMBER).ok_or_else(|| {
                format!("line {line_no}: no {PROVENANCE_MEMBER:?} member: export the version with `openledger datanet export`")
            })?;
            let provenance: Provenance = serde_json::from_value(provenance.clone())
                .map_err(|e| format!("line {line_no}: {PROVENANCE_MEMBER}: {e}"))?;
            if provenance.record != record.hash.to_hex() {
                return Err(format!(
                    "line {line_no}: the record's hash is {}, its provenance says {}",
                    record.hash, provenance.record
                ));
            }
            let mut text = String::new();
            for message in &record.prompt {
                text.push_str(&message.content);
                text.push('\n');
            }
            text.push_str(&record.completion);
            records.push(CorpusRecord {
                position: provenance.position,
                hash: record.hash,
                contribution: provenance.contribution,
                contributor: provenance.contributor,
                text,
            });
        }
        Self::new(name, kind, records).map_err(|e| e.to_string())
    }

    /// Distinct contributors, sorted.
    pub fn contributors(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.records.iter().map(|r| r.contributor.as_str()).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The index of a record by hash (the first one, if a hash repeats).
    pub fn position_of(&self, hash: &ContentHash) -> Option<usize> {
        self.records.iter().position(|r| r.hash == *hash)
    }
}

/// A corpus of `(text, contributor)` pairs for tests: record `i` is contribution `c{i}`, at
/// position `i`, named by a hash of its index and text (so equal texts are distinct records).
#[cfg(test)]
pub(crate) fn test_corpus(records: &[(&str, &str)]) -> Corpus {
    let records = records
        .iter()
        .enumerate()
        .map(|(i, (text, contributor))| CorpusRecord {
            position: i as u64,
            hash: ContentHash::of(format!("{i}/{text}").as_bytes()),
            contribution: format!("c{i}"),
            contributor: (*contributor).into(),
            text: (*text).into(),
        })
        .collect();
    Corpus::new("test", RecordKind::Text, records).expect("a test corpus has records")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openledger_core::record::record_hash;

    use super::*;

    fn line(position: u64, text: &str, label: &str, contribution: &str, contributor: &str) -> String {
        let hash = record_hash(&[("text", text), ("label", label)]);
        serde_json::json!({
            "text": text, "label": label,
            "_openledger": {"position": position, "record": hash.to_hex(), "contribution": contribution, "contributor": contributor},
        })
        .to_string()
    }

    #[test]
    fn an_export_line_keeps_its_provenance_and_text() {
        let text = [line(0, "good food", "pos", "c1", "aa"), line(3, "bad food", "neg", "c2", "bb")].join("\n");
        let corpus = Corpus::parse_jsonl("datanet:x@1", &text).unwrap();
        assert_eq!(corpus.kind, RecordKind::Labelled);
        assert_eq!(corpus.records[1].position, 3);
        assert_eq!(corpus.records[1].contribution, "c2");
        assert_eq!(corpus.records[1].text, "bad food\nneg");
        assert_eq!(corpus.contributors(), ["aa", "bb"]);
    }

    #[test]
    fn a_line_without_provenance_or_with_a_wrong_hash_is_refused() {
        let error = Corpus::parse_jsonl("x", r#"{"text":"a b","label":"c"}"#).unwrap_err();
        assert!(error.contains("openledger datanet export"), "{error}");
        let forged = line(0, "a b", "c", "c1", "aa").replace("\"a b\"", "\"a c\"");
        assert!(Corpus::parse_jsonl("x", &forged).unwrap_err().contains("hash"));
    }

    #[test]
    fn an_export_directory_is_checked_against_its_manifest_and_root() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [line(0, "good food", "pos", "c1", "aa"), line(1, "bad food", "neg", "c2", "bb")];
        let corpus = Corpus::parse_jsonl("x", &lines.join("\n")).unwrap();
        let leaves: Vec<ContentHash> = corpus.records.iter().map(|r| r.hash).collect();
        let mut manifest = Manifest {
            format: EXPORT_FORMAT.into(),
            datanet_id: "d".into(),
            slug: "food".into(),
            version: 2,
            snapshot_id: "s".into(),
            merkle_root: openledger_core::MerkleTree::new(&leaves).root().to_hex(),
            records: 2,
        };
        std::fs::write(dir.path().join(RECORDS_FILE), lines.join("\n")).unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), serde_json::to_vec(&manifest).unwrap()).unwrap();
        let read = Corpus::read_export(dir.path()).unwrap();
        assert_eq!(read.name, "datanet:food@2");
        assert_eq!(Manifest::beside(&dir.path().join(RECORDS_FILE)).unwrap(), Some(manifest.clone()));
        manifest.merkle_root = ContentHash::of(b"other").to_hex();
        std::fs::write(dir.path().join(MANIFEST_FILE), serde_json::to_vec(&manifest).unwrap()).unwrap();
        assert!(matches!(Corpus::read_export(dir.path()), Err(AttributionError::Corrupt { .. })));
    }

    #[test]
    fn positions_must_increase_and_a_corpus_is_not_empty() {
        let text = [line(2, "a", "x", "c1", "aa"), line(1, "b", "x", "c1", "aa")].join("\n");
        assert!(Corpus::parse_jsonl("x", &text).unwrap_err().contains("increase"));
        assert!(Corpus::new("x", RecordKind::Text, vec![]).is_err());
    }
}
