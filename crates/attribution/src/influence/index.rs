//! The gradient index of one adapter: the projected per-example gradient of every training
//! record (rows as `openledger_ml`'s gradient files hold them), bound by a manifest to the
//! adapter's weights, its lineage's dataset, the projection and each record's contribution.
//!
//! Layout of the directory (by default `<adapter>/gradient-index`):
//! `grads/{header.json,grads.bin,index.bin}` (written by [`GradientProbe::write`]) and
//! `manifest.json` with the BLAKE3 of each of those files. It is written into a staging
//! directory beside the target and renamed into place, so an index exists only whole.
//!
//! An index can also be built in shards ([`GradientIndex::build_shard`], each a contiguous
//! range of the training records, as separate processes may) and joined by
//! [`GradientIndex::merge`] into the files a whole build writes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use openledger_core::ContentHash;
use openledger_ml::AdapterPrecision;
use openledger_ml::adapters::{ADAPTER_WEIGHTS, load_adapter_dir_as};
use openledger_ml::train::data::{Example, Record, Tokenize, read_records};
use openledger_ml::train::grads::{GradDType, GradFile, GradHeader, GradientProbe, Projection};
use openledger_ml::train::{LINEAGE_FILE, Lineage, hash_path};
use openledger_ml::{LlamaModel, LoraAdapter, Tokenizer};
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

/// Which gradients an index holds, and so which gradients its probes take: projected or
/// whole, of every layer or from a later one (see `GradientProbe::from_layer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Probing {
    pub projection: Option<Projection>,
    pub first_layer: usize,
}

/// Fewest layers an index holds by default (all of a shallower model).
pub const MIN_INDEXED_LAYERS: usize = 8;

/// The first layer an index holds by default: the upper half of the model's layers, but at
/// least [`MIN_INDEXED_LAYERS`]. On the SmolLM2 evaluation (bench/RESULTS.md, "Influence from
/// the upper layers") the upper 15 of 30 detect harmful contributors and predict retraining as
/// well as all 30 or better on both seeds (the lower layers' gradients add noise), with half
/// the index and a probe about 1.5× faster; the upper 10 slip on one seed, the last 4 or fewer
/// lose detection.
pub fn default_first_layer(layers: usize) -> usize {
    layers.saturating_sub(layers.div_ceil(2).max(MIN_INDEXED_LAYERS))
}

impl Probing {
    /// A probe of `adapter` taking these gradients.
    pub fn probe(&self, model: &LlamaModel, adapter: &LoraAdapter) -> Result<GradientProbe> {
        Ok(GradientProbe::new(model, adapter, self.projection)?.from_layer(self.first_layer)?)
    }
}

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
    /// Set on a shard's index only: which part of the records it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardOf>,
}

/// Which part of a lineage's training records a shard's index holds: the records (each once,
/// in training order) `[total × shard / shards, total × (shard + 1) / shards)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOf {
    pub shard: usize,
    pub shards: usize,
    /// Records of the whole index.
    pub total_records: usize,
}

impl ShardOf {
    /// The record positions this shard covers.
    pub fn range(&self) -> std::ops::Range<usize> {
        debug_assert!(self.shard < self.shards);
        self.total_records * self.shard / self.shards..self.total_records * (self.shard + 1) / self.shards
    }
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
        probing: Probing,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        Self::build_shard(model, tokenizer, adapter_dir, corpus_dir, out_dir, probing, (0, 1), on_progress)
    }

    /// [`Self::build`] of shard `shard` of `shards` only (see [`ShardOf`]): an index of its
    /// records whose manifest says which part it is, for [`Self::merge`]. Shard 0 of 1 is the
    /// whole index.
    #[allow(clippy::too_many_arguments)]
    pub fn build_shard(
        model: &LlamaModel,
        tokenizer: &Tokenizer,
        adapter_dir: &Path,
        corpus_dir: &Path,
        out_dir: &Path,
        probing: Probing,
        (shard, shards): (usize, usize),
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        if shard >= shards {
            return Err(AttributionError::invalid(format!("shard {shard} of {shards}: shards count from 0")));
        }
        if out_dir.exists() {
            return Err(AttributionError::invalid(format!(
                "{} already exists: remove it to rebuild the index",
                out_dir.display()
            )));
        }
        let lineage = read_lineage(adapter_dir)?;
        let max_tokens = lineage.config.max_seq_tokens.unwrap_or(model.config().context_length);
        let tokenize = Tokenize { tokenizer, max_tokens };
        let (mut examples, mut indexed) =
            corpus_examples(&lineage.train_records, corpus_dir, &tokenize, &lineage.dataset)?;
        let shard = (shards > 1).then_some(ShardOf { shard, shards, total_records: indexed.len() });
        if let Some(shard) = shard {
            let range = shard.range();
            examples = examples.drain(range.clone()).collect();
            indexed = indexed.drain(range).collect();
        }
        let adapter = load_adapter_dir_as("attribution", adapter_dir, model, AdapterPrecision::Exact)?;
        let probe = probing.probe(model, &adapter)?;
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
                projection: probing.projection,
                records: indexed,
                checksums: Vec::new(),
                shard,
            };
            finish(&staging, manifest, out_dir)
        });
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        Self::open(out_dir)
    }

    /// Joins the indexes of shards `0..shard_dirs.len()` (each opened and checked: a missing,
    /// damaged or foreign shard is refused) into `out_dir`, which must not exist yet: rows and
    /// records in shard order, the record index and header rebuilt and the checksums
    /// rewritten, so the files are those a whole build writes (a row's gradient does not depend
    /// on the batch it was computed in; the test compares the bytes).
    pub fn merge(shard_dirs: &[PathBuf], out_dir: &Path) -> Result<Self> {
        if out_dir.exists() {
            return Err(AttributionError::invalid(format!(
                "{} already exists: remove it to merge the shards again",
                out_dir.display()
            )));
        }
        let shards = shard_dirs.len();
        let mut parts = Vec::with_capacity(shards);
        for (at, dir) in shard_dirs.iter().enumerate() {
            let part = Self::open(dir).map_err(|e| {
                AttributionError::corrupt(
                    format!("gradient index shard {at} of {shards}"),
                    format!("{e}: build the shard again"),
                )
            })?;
            check_shard(&part, parts.first(), at, shards)?;
            parts.push(part);
        }
        let Some(first) = parts.first() else {
            return Err(AttributionError::invalid("merging a gradient index needs at least one shard"));
        };
        let total = first.manifest.shard.map(|s| s.total_records).unwrap_or_default();
        let held: usize = parts.iter().map(Self::len).sum();
        if held != total {
            return Err(AttributionError::corrupt(
                "gradient index shards",
                format!("{held} records in {shards} shards, the whole index has {total}"),
            ));
        }
        let staging = staging_dir(out_dir)?;
        let result = merge_files(&parts, &staging).and_then(|header| {
            let manifest = IndexManifest {
                records: parts.iter().flat_map(|p| p.manifest.records.iter().cloned()).collect(),
                checksums: Vec::new(),
                shard: None,
                ..first.manifest.clone()
            };
            let grads = staging.join(GRADS_DIR);
            let text = serde_json::to_string_pretty(&header).map_err(|e| AttributionError::invalid(e.to_string()))?;
            let path = grads.join(GRAD_FILES[0]);
            std::fs::write(&path, text).map_err(|e| AttributionError::io(&path, e))?;
            finish(&staging, manifest, out_dir)
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

    /// The gradients this index holds: what its probes must take.
    pub fn probing(&self) -> Probing {
        Probing { projection: self.manifest.projection, first_layer: self.header.first_layer }
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

/// Writes the manifest (with the checksums of `staging`'s gradient files) and renames the
/// staging directory to `out_dir`.
fn finish(staging: &Path, mut manifest: IndexManifest, out_dir: &Path) -> Result<()> {
    manifest.checksums = GRAD_FILES
        .iter()
        .map(|f| Ok((f.to_string(), hash_path(&staging.join(GRADS_DIR).join(f))?)))
        .collect::<Result<_>>()?;
    let path = staging.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| AttributionError::invalid(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| AttributionError::io(&path, e))?;
    std::fs::rename(staging, out_dir).map_err(|e| AttributionError::io(out_dir, e))
}

/// Shard `at` of `shards` says it is that shard, of the same whole index as the first.
fn check_shard(part: &GradientIndex, first: Option<&GradientIndex>, at: usize, shards: usize) -> Result<()> {
    let what = || format!("gradient index shard {at} of {shards} ({})", part.dir.display());
    let Some(shard) = part.manifest.shard else {
        return Err(AttributionError::corrupt(what(), "it is a whole index, not a shard"));
    };
    if shard.shard != at || shard.shards != shards {
        return Err(AttributionError::corrupt(
            what(),
            format!("its manifest says shard {} of {}: give the shards in order", shard.shard, shard.shards),
        ));
    }
    if shard.range().len() != part.len() {
        return Err(AttributionError::corrupt(
            what(),
            format!("{} records, its range holds {}", part.len(), shard.range().len()),
        ));
    }
    if let Some(first) = first {
        let (a, b) = (&first.manifest, &part.manifest);
        let same = a.format == b.format
            && a.adapter_weights_blake3 == b.adapter_weights_blake3
            && a.base_model_blake3 == b.base_model_blake3
            && a.dataset_blake3 == b.dataset_blake3
            && a.projection == b.projection
            && a.shard.map(|s| s.total_records) == Some(shard.total_records)
            && first.header.layer_dims == part.header.layer_dims
            && first.header.first_layer == part.header.first_layer
            && first.header.dtype == part.header.dtype;
        if !same {
            return Err(AttributionError::Mismatch(format!(
                "{} was built for other inputs than shard 0 (adapter, base model, dataset, projection, layers or \
                 size): build every shard again",
                what()
            )));
        }
    }
    Ok(())
}

/// Writes `grads.bin` (the shards' rows in order) and `index.bin` (every record's hash and row,
/// by hash) under `staging`; returns the header of the joined file.
fn merge_files(parts: &[GradientIndex], staging: &Path) -> Result<GradHeader> {
    let grads = staging.join(GRADS_DIR);
    std::fs::create_dir_all(&grads).map_err(|e| AttributionError::io(&grads, e))?;
    let rows_path = grads.join(GRAD_FILES[1]);
    let file = std::fs::File::create(&rows_path).map_err(|e| AttributionError::io(&rows_path, e))?;
    let mut rows = std::io::BufWriter::new(file);
    let mut index = std::collections::BTreeMap::new();
    for part in parts {
        let path = part.dir.join(GRADS_DIR).join(GRAD_FILES[1]);
        let mut from = std::fs::File::open(&path).map_err(|e| AttributionError::io(&path, e))?;
        std::io::copy(&mut from, &mut rows).map_err(|e| AttributionError::io(&rows_path, e))?;
        for record in &part.manifest.records {
            let hash: ContentHash = record.record.parse().map_err(|_| {
                AttributionError::corrupt("gradient index manifest", format!("record {:?}", record.record))
            })?;
            let row = index.len() as u64;
            if index.insert(hash, row).is_some() {
                return Err(AttributionError::corrupt(
                    "gradient index shards",
                    format!("record {} is in two shards: build every shard again", record.record),
                ));
            }
        }
    }
    rows.into_inner()
        .map_err(|e| AttributionError::io(&rows_path, e.into_error()))?
        .sync_all()
        .map_err(|e| AttributionError::io(&rows_path, e))?;
    let mut index_bytes = Vec::with_capacity(index.len() * 40);
    for (hash, row) in &index {
        index_bytes.extend_from_slice(hash.as_bytes());
        index_bytes.extend_from_slice(&row.to_le_bytes());
    }
    let path = grads.join(GRAD_FILES[2]);
    std::fs::write(&path, index_bytes).map_err(|e| AttributionError::io(&path, e))?;
    let mut header = parts[0].header.clone();
    header.records = index.len();
    Ok(header)
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
    const PROBING: Probing = Probing { projection: Some(PROJECTION), first_layer: 0 };

    fn build(f: &crate::influence::fixture::Fixture, out: &Path) -> GradientIndex {
        build_with(f, out, PROBING)
    }

    fn build_with(f: &crate::influence::fixture::Fixture, out: &Path, probing: Probing) -> GradientIndex {
        let mut progress = Vec::new();
        let index = GradientIndex::build(&f.model, &f.tokenizer, &f.adapter, &f.corpus, out, probing, &mut |d, t| {
            progress.push((d, t))
        })
        .unwrap();
        assert_eq!(progress.last().map(|p| p.0), Some(index.len()));
        index
    }

    #[test]
    fn by_default_an_index_holds_the_upper_half_of_the_layers_but_at_least_eight() {
        assert_eq!([2, 8, 12, 16, 30, 31].map(default_first_layer), [0, 0, 4, 8, 15, 15]);
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
        let adapter = load_adapter_dir_as("a", &f.adapter, &f.model, AdapterPrecision::Exact).unwrap();
        let probe = GradientProbe::new(&f.model, &adapter, Some(PROJECTION)).unwrap();
        let direct = probe.gradients(&[(&examples[0].tokens, examples[0].first_scored)]).unwrap().remove(0);
        let largest = direct.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in set.row(0).iter().zip(direct.iter().flatten()) {
            assert!((a - b).abs() <= 1e-2 * b.abs().max(largest / 100.0), "{a} vs {b}");
        }
        let err = GradientIndex::build(
            &f.model,
            &f.tokenizer,
            &f.adapter,
            &f.corpus,
            &out,
            Probing::default(),
            &mut |_, _| {},
        );
        assert!(err.err().unwrap().to_string().contains("already exists"));
    }

    fn build_shards(f: &crate::influence::fixture::Fixture, shards: usize) -> Vec<PathBuf> {
        (0..shards)
            .map(|shard| build_shard(f, &f.dir.path().join(format!("shard-{shard}")), PROBING, (shard, shards)))
            .collect()
    }

    fn build_shard(
        f: &crate::influence::fixture::Fixture,
        out: &Path,
        probing: Probing,
        part: (usize, usize),
    ) -> PathBuf {
        GradientIndex::build_shard(&f.model, &f.tokenizer, &f.adapter, &f.corpus, out, probing, part, &mut |_, _| {})
            .unwrap();
        out.to_path_buf()
    }

    /// An index of the last layer's gradients: its header says so, the index's own probing
    /// takes the same gradients (a record probes itself first), and a shard of all layers does
    /// not merge with it.
    #[test]
    fn an_index_of_the_last_layer_probes_the_last_layer() {
        let f = fixture(32, 1, |_| false);
        let layers = f.model.config().num_layers;
        let last = Probing { first_layer: layers - 1, ..PROBING };
        let index = build_with(&f, &f.dir.path().join("last"), last);
        assert_eq!((index.header.first_layer, index.header.layer_dims.len()), (layers - 1, 1));
        assert_eq!(index.probing(), last);
        assert_eq!(index.bytes_per_record(), 48 * 2);
        let set = index.gradients().unwrap();
        let adapter = load_adapter_dir_as("a", &f.adapter, &f.model, AdapterPrecision::Exact).unwrap();
        let probe = index.probing().probe(&f.model, &adapter).unwrap();
        let (_, bodies) = read_records(&f.corpus.join(RECORDS_FILE)).unwrap();
        let target = set.records[5];
        let body = bodies.iter().find(|b| b.hash == target).unwrap();
        let gradient = probe_gradient(&probe, &f.tokenizer, Some(&body.prompt[0].content), &body.completion).unwrap();
        assert_eq!(gradient.len(), 1);
        let s = scores(&set, &gradient, Estimator::Cosine).unwrap();
        let best = (0..s.len()).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap();
        assert_eq!(set.records[best], target, "best {best} {s:?}");

        let shards = [
            build_shard(&f, &f.dir.path().join("s0"), PROBING, (0, 2)),
            build_shard(&f, &f.dir.path().join("s1"), last, (1, 2)),
        ];
        let refused = GradientIndex::merge(&shards, &f.dir.path().join("merged"));
        assert!(matches!(refused, Err(AttributionError::Mismatch(_))), "{:?}", refused.err());
    }

    #[test]
    fn three_shards_merged_are_the_whole_index_file_for_file() {
        let f = fixture(32, 1, |_| false);
        let whole = build(&f, &f.dir.path().join("whole"));
        let shards = build_shards(&f, 3);
        let lens: Vec<usize> = shards.iter().map(|d| GradientIndex::open(d).unwrap().len()).collect();
        assert_eq!(lens.iter().sum::<usize>(), whole.len());
        assert!(lens.iter().all(|&n| n > 0 && n < whole.len()), "{lens:?}");
        let merged = GradientIndex::merge(&shards, &f.dir.path().join("merged")).unwrap();
        assert_eq!(merged.manifest, whole.manifest);
        assert_eq!(merged.header, whole.header);
        // Each row's gradient does not depend on the other records of its batch, so the bytes
        // are the same; the checksums in the manifests (equal above) say so.
        for file in GRAD_FILES {
            let read = |index: &GradientIndex| std::fs::read(index.dir.join(GRADS_DIR).join(file)).unwrap();
            assert!(read(&merged) == read(&whole), "{file} differs");
        }
        let read = |index: &GradientIndex| std::fs::read(index.dir.join(MANIFEST_FILE)).unwrap();
        assert_eq!(read(&merged), read(&whole));
        // And so the scores of a query.
        let (a, b) = (whole.gradients().unwrap(), merged.gradients().unwrap());
        assert_eq!(a.records, b.records);
        let query: Vec<Vec<f32>> = a.layers(3).map(<[f32]>::to_vec).collect();
        for estimator in [Estimator::Cosine, Estimator::DataInfNormalized] {
            assert_eq!(scores(&a, &query, estimator).unwrap(), scores(&b, &query, estimator).unwrap());
        }
    }

    #[test]
    fn a_missing_corrupt_foreign_or_misplaced_shard_is_refused_at_merge() {
        let f = fixture(16, 1, |_| false);
        let shards = build_shards(&f, 3);
        let out = f.dir.path().join("merged");
        let refused = |dirs: &[PathBuf]| {
            let err = GradientIndex::merge(dirs, &out).err().unwrap().to_string();
            assert!(!out.exists(), "{err}");
            err
        };
        // Two of three: the first shard already says there are three.
        let err = refused(&shards[..2]);
        assert!(err.contains("shard 0 of 2") && err.contains("says shard 0 of 3"), "{err}");
        let swapped = [shards[1].clone(), shards[0].clone(), shards[2].clone()];
        let err = refused(&swapped);
        assert!(err.contains("shard 0 of 3") && err.contains("in order"), "{err}");
        let whole = build(&f, &f.dir.path().join("whole"));
        let err = refused(&[shards[0].clone(), whole.dir.clone(), shards[2].clone()]);
        assert!(err.contains("shard 1 of 3") && err.contains("whole index"), "{err}");
        let rows = shards[2].join(GRADS_DIR).join("grads.bin");
        let mut bytes = std::fs::read(&rows).unwrap();
        bytes[1] ^= 0x40;
        std::fs::write(&rows, &bytes).unwrap();
        let err = refused(&shards);
        assert!(err.contains("shard 2 of 3 is corrupt") && err.contains("checksum"), "{err}");
        std::fs::remove_dir_all(&shards[2]).unwrap();
        let err = refused(&shards);
        assert!(err.contains("shard 2 of 3 is corrupt") && err.contains("manifest.json"), "{err}");
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
        let adapter = load_adapter_dir_as("a", &f.adapter, &f.model, AdapterPrecision::Exact).unwrap();
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
