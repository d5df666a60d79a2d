//! The gradient index of one adapter: the projected per-example gradient of every training
//! record (rows as `openledger_ml`'s gradient files hold them), bound by a manifest to the
//! adapter's weights, its lineage's dataset, the projection and each record's contribution.
//!
//! Layout of the directory (by default `<adapter>/gradient-index`):
//! `grads/{header.json,grads.bin,index.bin}` (written by [`GradientProbe::write`]) and
//! `manifest.json` with the BLAKE3 of each of those files. It is written into a staging
//! directory beside the target and renamed into place, so an index exists only whole.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use openledger_core::ContentHash;
use openledger_ml::adapters::{ADAPTER_WEIGHTS, load_adapter_dir};
use openledger_ml::train::data::{Example, Record, Tokenize, read_records};
use openledger_ml::train::grads::{GradDType, GradFile, GradHeader, GradientProbe, Projection};
use openledger_ml::train::{LINEAGE_FILE, Lineage, hash_path};
use openledger_ml::{LlamaModel, Tokenizer};
use serde::{Deserialize, Serialize};

use super::GradientSet;
use crate::corpus::{Corpus, RECORDS_FILE};
use crate::{AttributionError, Result};

pub const INDEX_FORMAT: &str = "openledger-gradient-index/1";
/// Where an adapter's index lives unless the caller says otherwise.
pub const DEFAULT_INDEX_DIR: &str = "gradient-index";
const MANIFEST_FILE: &str = "manifest.json";
const GRADS_DIR: &str = "grads";
const GRAD_FILES: [&str; 3] = ["header.json", "grads.bin", "index.bin"];
/// Padded tokens per batch of the gradient pass (as `openledger model grads` defaults).
pub const INDEX_BATCH_TOKENS: usize = 2048;
/// Storage of the rows: bf16 halves the index and its read time; scores move by ~0.4% relative
/// (bf16's 8-bit mantissa), far below the spread between records.
pub const INDEX_DTYPE: GradDType = GradDType::Bf16;

/// One indexed record: which contribution pays for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedRecord {
    /// Content hash, hex.
    pub record: String,
    pub contribution: String,
    /// Public key, hex.
    pub contributor: String,
}

/// What an index was built from, and the checksums of its files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexManifest {
    pub format: String,
    /// BLAKE3 of the adapter's weights file: an index is valid for those weights only.
    pub adapter_weights_blake3: String,
    pub base_model_blake3: String,
    /// The lineage's dataset name and identity (BLAKE3 over the training record hashes).
    pub dataset: String,
    pub dataset_blake3: String,
    pub projection: Option<Projection>,
    /// In row order: row `i` of the gradient file is `records[i]`.
    pub records: Vec<IndexedRecord>,
    /// File name under `grads/` → BLAKE3 hex.
    pub checksums: Vec<(String, String)>,
}

/// An opened, verified gradient index.
pub struct GradientIndex {
    pub dir: PathBuf,
    pub manifest: IndexManifest,
    pub header: GradHeader,
}

impl GradientIndex {
    /// The default index directory of an adapter.
    pub fn default_dir(adapter_dir: &Path) -> PathBuf {
        adapter_dir.join(DEFAULT_INDEX_DIR)
    }

    /// Computes the gradient of every training record the adapter's lineage lists (records
    /// read from the exported corpus directory) and writes the index to `out_dir`, which must
    /// not exist yet. `on_progress(done, total)` after each batch.
    pub fn build(
        model: &LlamaModel,
        tokenizer: &Tokenizer,
        adapter_dir: &Path,
        corpus_dir: &Path,
        out_dir: &Path,
        projection: Option<Projection>,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        if out_dir.exists() {
            return Err(AttributionError::invalid(format!(
                "{} already exists: remove it to rebuild the index",
                out_dir.display()
            )));
        }
        let lineage = read_lineage(adapter_dir)?;
        let max_tokens = lineage.config.max_seq_tokens.unwrap_or(model.config().context_length);
        let tokenize = Tokenize { tokenizer, max_tokens };
        let (examples, indexed) = corpus_examples(&lineage.train_records, corpus_dir, &tokenize, &lineage.dataset)?;
        let adapter = load_adapter_dir("attribution", adapter_dir, model)?;
        let probe = GradientProbe::new(model, &adapter, projection)?;
        let staging = staging_dir(out_dir)?;
        let rows: Vec<(ContentHash, &[u32], usize)> =
            examples.iter().map(|e| (e.hash, e.tokens.as_slice(), e.first_scored)).collect();
        let written = probe.write(
            &staging.join(GRADS_DIR),
            &rows,
            INDEX_BATCH_TOKENS,
            INDEX_DTYPE,
            &lineage.dataset,
            on_progress,
        );
        let result = written.map_err(AttributionError::from).and_then(|_| {
            let manifest = IndexManifest {
                format: INDEX_FORMAT.into(),
                adapter_weights_blake3: hash_path(&adapter_dir.join(ADAPTER_WEIGHTS))?,
                base_model_blake3: lineage.base_model_blake3.clone(),
                dataset: lineage.dataset.clone(),
                dataset_blake3: lineage.dataset_blake3.clone(),
                projection,
                records: indexed,
                checksums: GRAD_FILES
                    .iter()
                    .map(|f| Ok((f.to_string(), hash_path(&staging.join(GRADS_DIR).join(f))?)))
                    .collect::<Result<_>>()?,
            };
            let path = staging.join(MANIFEST_FILE);
            let text = serde_json::to_string_pretty(&manifest).map_err(|e| AttributionError::invalid(e.to_string()))?;
            std::fs::write(&path, text).map_err(|e| AttributionError::io(&path, e))?;
            std::fs::rename(&staging, out_dir).map_err(|e| AttributionError::io(out_dir, e))
        });
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        Self::open(out_dir)
    }

    /// Opens an index, checking its format, every checksum and the rows' size. A directory
    /// without an index is [`Self::find`]'s `None`; here it is an I/O error.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| AttributionError::io(&path, e))?;
        let what = || format!("gradient index {}", dir.display());
        let manifest: IndexManifest = serde_json::from_str(&text).map_err(|e| AttributionError::corrupt(what(), e))?;
        if manifest.format != INDEX_FORMAT {
            return Err(AttributionError::corrupt(
                what(),
                format!("format {:?}, expected {INDEX_FORMAT:?}", manifest.format),
            ));
        }
        for (file, expected) in &manifest.checksums {
            if !GRAD_FILES.contains(&file.as_str()) {
                return Err(AttributionError::corrupt(what(), format!("unknown file {file:?} in the manifest")));
            }
            let actual = hash_path(&dir.join(GRADS_DIR).join(file))?;
            if &actual != expected {
                return Err(AttributionError::corrupt(
                    what(),
                    format!("{file} has checksum {actual}, the manifest says {expected}: rebuild the index"),
                ));
            }
        }
        if manifest.checksums.len() != GRAD_FILES.len() {
            return Err(AttributionError::corrupt(what(), "the manifest does not list every file"));
        }
        let file = GradFile::open(&dir.join(GRADS_DIR)).map_err(|e| AttributionError::corrupt(what(), e))?;
        if file.header.records != manifest.records.len() {
            return Err(AttributionError::corrupt(
                what(),
                format!("{} gradient rows for {} records", file.header.records, manifest.records.len()),
            ));
        }
        Ok(Self { dir: dir.to_path_buf(), manifest, header: file.header })
    }

    /// `Ok(None)` when `dir` holds no index (the caller falls back to span-only attribution);
    /// a damaged index is still an error.
    pub fn find(dir: &Path) -> Result<Option<Self>> {
        if !dir.join(MANIFEST_FILE).is_file() {
            return Ok(None);
        }
        Self::open(dir).map(Some)
    }

    /// Checks the index was built for the adapter in `adapter_dir` (its weights' BLAKE3).
    pub fn check_adapter(&self, adapter_dir: &Path) -> Result<()> {
        let actual = hash_path(&adapter_dir.join(ADAPTER_WEIGHTS))?;
        if actual != self.manifest.adapter_weights_blake3 {
            return Err(AttributionError::Mismatch(format!(
                "the gradient index {} was built for other adapter weights: rebuild it for {}",
                self.dir.display(),
                adapter_dir.display()
            )));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.manifest.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.manifest.records.is_empty()
    }

    /// Bytes of gradient per record on disk.
    pub fn bytes_per_record(&self) -> usize {
        self.header.layer_dims.iter().sum::<usize>() * if self.header.dtype == GradDType::F32 { 4 } else { 2 }
    }

    /// Every row, read in one bulk read and widened to f32, in manifest order.
    pub fn gradients(&self) -> Result<GradientSet> {
        let path = self.dir.join(GRADS_DIR).join(GRAD_FILES[1]);
        let bytes = std::fs::read(&path).map_err(|e| AttributionError::io(&path, e))?;
        let records = self
            .manifest
            .records
            .iter()
            .map(|r| {
                r.record
                    .parse()
                    .map_err(|_| AttributionError::corrupt("gradient index manifest", format!("record {:?}", r.record)))
            })
            .collect::<Result<Vec<ContentHash>>>()?;
        GradientSet::from_le_bytes(records, self.header.layer_dims.clone(), self.header.dtype, &bytes)
    }
}

/// The tokenized examples of `hashes` (each once, in first-seen order) from an exported
/// corpus directory, with their provenance. `dataset` names the version for error messages.
pub(crate) fn corpus_examples(
    hashes: &[String],
    corpus_dir: &Path,
    tokenize: &Tokenize<'_>,
    dataset: &str,
) -> Result<(Vec<Example>, Vec<IndexedRecord>)> {
    let corpus = Corpus::read_export(corpus_dir)?;
    let (kind, bodies) = read_records(&corpus_dir.join(RECORDS_FILE))?;
    let bodies: HashMap<ContentHash, &Record> = bodies.iter().map(|b| (b.hash, b)).collect();
    // First record of each hash, as `Corpus::position_of` would find it, without its scan.
    let mut positions = HashMap::with_capacity(corpus.records.len());
    for (at, record) in corpus.records.iter().enumerate() {
        positions.entry(record.hash).or_insert(at);
    }
    let mut examples = Vec::with_capacity(hashes.len());
    let mut indexed = Vec::with_capacity(hashes.len());
    let mut seen = HashSet::new();
    for hex in hashes {
        let hash: ContentHash =
            hex.parse().map_err(|_| AttributionError::corrupt(LINEAGE_FILE, format!("record hash {hex:?}")))?;
        let (Some(&at), Some(body)) = (positions.get(&hash), bodies.get(&hash)) else {
            return Err(AttributionError::Mismatch(format!(
                "record {hex} is not in {}: give the export of the version the adapter was trained on ({dataset})",
                corpus_dir.display()
            )));
        };
        if seen.insert(hash) {
            let record = &corpus.records[at];
            indexed.push(IndexedRecord {
                record: hex.clone(),
                contribution: record.contribution.clone(),
                contributor: record.contributor.clone(),
            });
            examples.push(tokenize.example(body, kind)?);
        }
    }
    Ok((examples, indexed))
}

pub(crate) fn read_lineage(adapter_dir: &Path) -> Result<Lineage> {
    let path = adapter_dir.join(LINEAGE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| AttributionError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| AttributionError::corrupt(path.display().to_string(), e))
}

/// A fresh staging directory beside `out_dir` (same file system, so the rename is atomic).
fn staging_dir(out_dir: &Path) -> Result<PathBuf> {
    let name = out_dir.file_name().and_then(|n| n.to_str()).unwrap_or("gradient-index");
    let staging = out_dir.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| AttributionError::io(&staging, e))?;
    Ok(staging)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openledger_ml::train::grads::ProjectionKind;

    use super::*;
    use crate::influence::fixture::fixture;
    use crate::influence::{Estimator, probe_gradient, scores};

    const PROJECTION: Projection = Projection { kind: ProjectionKind::Rademacher, dim: 48, seed: 3 };

    fn build(f: &crate::influence::fixture::Fixture, out: &Path) -> GradientIndex {
        let mut progress = Vec::new();
        let index =
            GradientIndex::build(&f.model, &f.tokenizer, &f.adapter, &f.corpus, out, Some(PROJECTION), &mut |d, t| {
                progress.push((d, t))
            })
            .unwrap();
        assert_eq!(progress.last().map(|p| p.0), Some(index.len()));
        index
    }

    #[test]
    fn an_index_round_trips_and_its_rows_are_the_training_records_gradients() {
        let f = fixture(32, 1, |_| false);
        let out = GradientIndex::default_dir(&f.adapter);
        let built = build(&f, &out);
        let lineage = read_lineage(&f.adapter).unwrap();
        assert_eq!(built.len(), lineage.train_records.len());
        let index = GradientIndex::open(&out).unwrap();
        index.check_adapter(&f.adapter).unwrap();
        assert_eq!(index.manifest, built.manifest);
        // Two layers of 48 projected values, bf16.
        assert_eq!(index.bytes_per_record(), 2 * 48 * 2);
        let set = index.gradients().unwrap();
        let records: Vec<String> = set.records.iter().map(|h| h.to_hex()).collect();
        assert_eq!(records, lineage.train_records);
        let first = &index.manifest.records[0];
        let at: usize = first.contribution[1..].parse().unwrap();
        assert!(first.contributor == format!("k{}", at / 2), "{first:?}");

        // Row 0 is record 0's gradient under the same projection (to bf16 precision).
        let tokenize = Tokenize { tokenizer: &f.tokenizer, max_tokens: 64 };
        let (examples, _) = corpus_examples(&lineage.train_records[..1], &f.corpus, &tokenize, "x").unwrap();
        let adapter = load_adapter_dir("a", &f.adapter, &f.model).unwrap();
        let probe = GradientProbe::new(&f.model, &adapter, Some(PROJECTION)).unwrap();
        let direct = probe.gradients(&[(&examples[0].tokens, examples[0].first_scored)]).unwrap().remove(0);
        let largest = direct.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in set.row(0).iter().zip(direct.iter().flatten()) {
            assert!((a - b).abs() <= 1e-2 * b.abs().max(largest / 100.0), "{a} vs {b}");
        }
        let err = GradientIndex::build(&f.model, &f.tokenizer, &f.adapter, &f.corpus, &out, None, &mut |_, _| {});
        assert!(err.err().unwrap().to_string().contains("already exists"));
    }

    #[test]
    fn a_damaged_index_is_corrupt_and_a_missing_one_is_none() {
        let f = fixture(16, 1, |_| false);
        let out = f.dir.path().join("index");
        assert!(GradientIndex::find(&out).unwrap().is_none());
        build(&f, &out);
        assert!(GradientIndex::find(&out).unwrap().is_some());
        let rows = out.join(GRADS_DIR).join("grads.bin");
        let mut bytes = std::fs::read(&rows).unwrap();
        bytes[5] ^= 0x40;
        std::fs::write(&rows, &bytes).unwrap();
        let err = GradientIndex::open(&out).err().unwrap();
        assert!(matches!(err, AttributionError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("rebuild"), "{err}");
        std::fs::write(&rows, &bytes[..bytes.len() - 2]).unwrap();
        assert!(matches!(GradientIndex::find(&out), Err(AttributionError::Corrupt { .. })));
        std::fs::write(out.join(MANIFEST_FILE), "{\"format\":").unwrap();
        assert!(matches!(GradientIndex::open(&out), Err(AttributionError::Corrupt { .. })));
        // Another adapter's weights: a mismatch.
        let other = f.dir.path().join("other");
        openledger_ml::testing::write_peft_adapter(&other, f.model.config(), 4, &[openledger_ml::Target::Q], 9, false)
            .unwrap();
        std::fs::write(
            out.join(MANIFEST_FILE),
            serde_json::to_string(&build(&f, &f.dir.path().join("i2")).manifest).unwrap(),
        )
        .unwrap();
        let index = GradientIndex::open(&f.dir.path().join("i2")).unwrap();
        assert!(matches!(index.check_adapter(&other), Err(AttributionError::Mismatch(_))));
    }

    #[test]
    fn a_training_record_used_as_the_probe_ranks_itself_first() {
        let f = fixture(32, 1, |_| false);
        let index = build(&f, &f.dir.path().join("index"));
        let set = index.gradients().unwrap();
        let adapter = load_adapter_dir("a", &f.adapter, &f.model).unwrap();
        let probe = GradientProbe::new(&f.model, &adapter, Some(PROJECTION)).unwrap();
        let (_, bodies) = read_records(&f.corpus.join(RECORDS_FILE)).unwrap();
        let target = set.records[5];
        let body = bodies.iter().find(|b| b.hash == target).unwrap();
        let gradient = probe_gradient(&probe, &f.tokenizer, Some(&body.prompt[0].content), &body.completion).unwrap();
        for estimator in [Estimator::Cosine, Estimator::DataInfNormalized] {
            let s = scores(&set, &gradient, estimator).unwrap();
            let best = (0..s.len()).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap();
            assert_eq!(set.records[best], target, "{estimator:?}: best {best} {s:?}");
        }
    }
}
