//! Per-example gradients of the LoRA parameters: the signal the attribution worker's influence
//! methods (DataInf, TRAK, LoGra) combine layer by layer.
//!
//! One batched forward and backward gives every example's gradient at once. The forward adds a
//! zero "probe" variable to each LoRA output; its gradient `g_t = ∂L/∂(LoRA output)` and the
//! recorded LoRA input `x_t` and `u_t = A·x_t` give each example's gradients as sums of outer
//! products over its own tokens:
//!
//! `∂L_e/∂B = s · Σ_t g_t u_tᵀ` and `∂L_e/∂A = s · Σ_t (Bᵀ g_t) x_tᵀ` (`s` the LoRA scale).
//!
//! The optional random projection is LoGra's: the large side of each matrix is projected before
//! the outer product (`x_t → P_in x_t`, `g_t → P_out g_t`, `P` Rademacher or Gaussian scaled by
//! `1/√d`), so no gradient is ever materialised at full size and inner products are preserved in
//! expectation. An example's loss is the mean negative log-likelihood of its scored tokens.
//!
//! Files: a directory with `grads.bin` (one row per record, layers in order, little-endian f32
//! or bf16), `index.bin` (32-byte record hash and u64 row, sorted by hash) and `header.json`
//! (written last: a directory without it is incomplete).

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use openledger_core::ContentHash;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::data::micro_batches;
use super::net::{Batch, LoraVars, Mode, TrainBase};
use crate::error::{MlError, Result};
use crate::lora::{LoraAdapter, Target};
use crate::model::LlamaModel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionKind {
    Rademacher,
    Gaussian,
}

/// A seeded random projection to `dim` dimensions per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    pub kind: ProjectionKind,
    pub dim: usize,
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradDType {
    F32,
    Bf16,
}

impl GradDType {
    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }
}

/// The layout of a gradient row, stored in `header.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradHeader {
    pub format: String,
    pub records: usize,
    pub dtype: GradDType,
    /// Values per layer, in layer order; a row is their concatenation.
    pub layer_dims: Vec<usize>,
    /// Within a layer: for each target in this order, `A`'s gradient then `B`'s, row-major.
    pub targets: Vec<Target>,
    pub rank: usize,
    pub projection: Option<Projection>,
    /// Per target: `(A rows, A cols, B rows, B cols)` as stored.
    pub shapes: Vec<(usize, usize, usize, usize)>,
    pub adapter: String,
    /// The first layer whose gradients a row holds (`layer_dims` are of `first_layer..`); 0,
    /// every layer, in files written before probes could start later.
    #[serde(default)]
    pub first_layer: usize,
}

/// Format 2 records `first_layer`; format 1 files (every layer) are read as ever.
pub const GRADS_FORMAT: &str = "openledger-grads/2";
const GRADS_FORMAT_EVERY_LAYER: &str = "openledger-grads/1";
const HEADER_FILE: &str = "header.json";
const ROWS_FILE: &str = "grads.bin";
const INDEX_FILE: &str = "index.bin";

/// Computes per-example gradients of one adapter on one base model. Probes on the same
/// [`LlamaModel`] share its f32 copy of the weights (538 MB for SmolLM2-135M) while any holds it.
pub struct GradientProbe {
    base: std::sync::Arc<TrainBase>,
    vars: LoraVars,
    targets: Vec<Target>,
    layers: usize,
    /// Gradients of layers `first_layer..layers` only (see [`Self::from_layer`]).
    first_layer: usize,
    projection: Option<Projection>,
    /// Per (layer, target): `P_in` `(d, in)` and `P_out` `(d, out)`.
    matrices: BTreeMap<(usize, Target), (Tensor, Tensor)>,
}

impl GradientProbe {
    pub fn new(model: &LlamaModel, adapter: &LoraAdapter, projection: Option<Projection>) -> Result<Self> {
        let base = TrainBase::shared(model)?;
        let vars = super::vars_from_adapter(&base, adapter)?;
        let targets: Vec<Target> =
            Target::ALL.into_iter().filter(|t| vars.pairs.keys().any(|(_, target)| target == t)).collect();
        let layers = base.config.num_layers;
        if vars.pairs.len() != layers * targets.len() {
            return Err(MlError::InvalidRequest(
                "per-example gradients need an adapter with the same targets on every layer".into(),
            ));
        }
        let mut matrices = BTreeMap::new();
        if let Some(p) = projection {
            let per_layer = 2 * vars.rank * targets.len();
            if p.dim == 0 || p.dim % per_layer != 0 {
                return Err(MlError::InvalidRequest(format!(
                    "projection dimension {} must be a positive multiple of {per_layer} (2 × rank {} × {} targets)",
                    p.dim,
                    vars.rank,
                    targets.len()
                )));
            }
            let d = p.dim / per_layer;
            for &(layer, target) in vars.pairs.keys() {
                let (in_f, out_f) = base.config.projection_shape(target);
                let seed = p.seed ^ ((layer as u64) << 8 | target.index() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut rng = StdRng::seed_from_u64(seed);
                let mut matrix = |cols: usize| -> Result<Tensor> {
                    let scale = 1.0 / (d as f32).sqrt();
                    let values: Vec<f32> = (0..d * cols).map(|_| scale * sample(p.kind, &mut rng)).collect();
                    Ok(Tensor::from_vec(values, (d, cols), base.device())?)
                };
                matrices.insert((layer, target), (matrix(in_f)?, matrix(out_f)?));
            }
        }
        Ok(Self { base, vars, targets, layers, first_layer: 0, projection, matrices })
    }

    /// The same probe, taking the gradients of layers `first_layer..` only: the layers before
    /// run forward only and the backward pass stops at them, so a probe of the last few layers
    /// costs a forward pass and a short backward (LoGra and TRAK measure what this keeps).
    pub fn from_layer(mut self, first_layer: usize) -> Result<Self> {
        if first_layer >= self.layers {
            return Err(MlError::InvalidRequest(format!(
                "gradients from layer {first_layer}: the model has {} layers (0-based)",
                self.layers
            )));
        }
        if first_layer > 0 && !self.base.device().is_cpu() {
            return Err(MlError::InvalidRequest("gradients from a later layer are computed on the CPU only".into()));
        }
        self.first_layer = first_layer;
        self.matrices.retain(|&(layer, _), _| layer >= first_layer);
        Ok(self)
    }

    /// The row layout this probe produces.
    pub fn header(&self, records: usize, dtype: GradDType, adapter: &str) -> GradHeader {
        let rank = self.vars.rank;
        let shapes: Vec<(usize, usize, usize, usize)> = self
            .targets
            .iter()
            .map(|&t| {
                let (in_f, out_f) = self.base.config.projection_shape(t);
                match self.projection {
                    Some(p) => {
                        let d = p.dim / (2 * rank * self.targets.len());
                        (rank, d, d, rank)
                    }
                    None => (rank, in_f, out_f, rank),
                }
            })
            .collect();
        let per_layer = shapes.iter().map(|(a, b, c, d)| a * b + c * d).sum();
        GradHeader {
            format: GRADS_FORMAT.into(),
            records,
            dtype,
            layer_dims: vec![per_layer; self.layers - self.first_layer],
            targets: self.targets.clone(),
            rank,
            projection: self.projection,
            shapes,
            adapter: adapter.into(),
            first_layer: self.first_layer,
        }
    }

    /// Each example's gradient, one vector per probed layer (`first_layer..`). `examples`:
    /// tokens and the index of the first scored token (a prompt's length, or 1 for free text).
    pub fn gradients(&self, examples: &[(&[u32], usize)]) -> Result<Vec<Vec<Vec<f32>>>> {
        let batch = Batch::new(examples, self.base.device())?;
        let (b, t) = batch.tokens.dims2()?;
        let (nll, probes) = self.base.forward(Some(&self.vars), &batch, &Mode::probed(self.first_layer))?;
        // Each example's loss is the mean over its scored tokens: weight rows by 1 / count.
        let mut counts = vec![0usize; b];
        for &e in &batch.row_example {
            counts[e] += 1;
        }
        if let Some(e) = counts.iter().position(|&c| c == 0) {
            return Err(MlError::InvalidRequest(format!("example {e} has no scored token")));
        }
        let weights: Vec<f32> = batch.row_example.iter().map(|&e| 1.0 / counts[e] as f32).collect();
        let weights = Tensor::from_vec(weights, nll.shape(), nll.device())?;
        let grads = (nll * weights)?.sum_all()?.backward()?;
        let scale = self.vars.scale;
        let mut out: Vec<Vec<Vec<f32>>> = vec![vec![Vec::new(); self.layers - self.first_layer]; b];
        for (&(layer, target), probe) in &probes {
            let g = grads
                .get(probe.output.as_tensor())
                .ok_or_else(|| MlError::corrupt("gradients", "a probe got no gradient"))?;
            let (_, b_var) = &self.vars.pairs[&(layer, target)];
            let g = g.reshape((b, t, ()))?;
            let x = probe.x.reshape((b, t, ()))?;
            let u = probe.u.reshape((b, t, ()))?;
            let c = g.broadcast_matmul(b_var.as_tensor())?; // (b, t, rank): Bᵀ g_t per token
            let (x, g) = match self.matrices.get(&(layer, target)) {
                Some((p_in, p_out)) => (x.broadcast_matmul(&p_in.t()?)?, g.broadcast_matmul(&p_out.t()?)?),
                None => (x, g),
            };
            let grad_a = (c.transpose(1, 2)?.matmul(&x)? * scale)?; // (b, rank, in or d)
            let grad_b = (g.transpose(1, 2)?.matmul(&u)? * scale)?; // (b, out or d, rank)
            let grad_a: Vec<Vec<f32>> = grad_a.flatten_from(1)?.to_vec2()?;
            let grad_b: Vec<Vec<f32>> = grad_b.flatten_from(1)?.to_vec2()?;
            for (e, (ga, gb)) in grad_a.into_iter().zip(grad_b).enumerate() {
                out[e][layer - self.first_layer].extend(ga);
                out[e][layer - self.first_layer].extend(gb);
            }
        }
        Ok(out)
    }

    /// Writes the gradients of `examples` (hash, tokens, first scored) to `dir`, in batches of at
    /// most `batch_tokens` padded tokens; a record hash seen twice is written once.
    pub fn write(
        &self,
        dir: &Path,
        examples: &[(ContentHash, &[u32], usize)],
        batch_tokens: usize,
        dtype: GradDType,
        adapter: &str,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<GradHeader> {
        std::fs::create_dir_all(dir).map_err(|e| MlError::io(dir, e))?;
        let _ = std::fs::remove_file(dir.join(HEADER_FILE));
        let rows_path = dir.join(ROWS_FILE);
        let file = std::fs::File::create(&rows_path).map_err(|e| MlError::io(&rows_path, e))?;
        let mut rows = BufWriter::new(file);
        let mut index: BTreeMap<ContentHash, u64> = BTreeMap::new();
        let mut unique = Vec::new();
        for (i, (hash, _, _)) in examples.iter().enumerate() {
            if !index.contains_key(hash) {
                index.insert(*hash, unique.len() as u64);
                unique.push(i);
            }
        }
        let mut done = 0;
        for chunk in micro_batches(&unique, |i| examples[i].1.len(), batch_tokens) {
            let batch: Vec<(&[u32], usize)> = chunk.iter().map(|&i| (examples[i].1, examples[i].2)).collect();
            for grads in self.gradients(&batch)? {
                for value in grads.iter().flatten() {
                    let written = match dtype {
                        GradDType::F32 => rows.write_all(&value.to_le_bytes()),
                        GradDType::Bf16 => rows.write_all(&half::bf16::from_f32(*value).to_le_bytes()),
                    };
                    written.map_err(|e| MlError::io(&rows_path, e))?;
                }
            }
            done += chunk.len();
            on_progress(done, unique.len());
        }
        rows.into_inner()
            .map_err(|e| MlError::io(&rows_path, e.into_error()))?
            .sync_all()
            .map_err(|e| MlError::io(&rows_path, e))?;
        let mut index_bytes = Vec::with_capacity(index.len() * 40);
        for (hash, row) in &index {
            index_bytes.extend_from_slice(hash.as_bytes());
            index_bytes.extend_from_slice(&row.to_le_bytes());
        }
        super::checkpoint::write_file(&dir.join(INDEX_FILE), &index_bytes)?;
        let header = self.header(unique.len(), dtype, adapter);
        super::checkpoint::write_json(&dir.join(HEADER_FILE), &header)?;
        Ok(header)
    }
}

fn sample(kind: ProjectionKind, rng: &mut StdRng) -> f32 {
    match kind {
        ProjectionKind::Rademacher => {
            if rng.random::<bool>() {
                1.0
            } else {
                -1.0
            }
        }
        ProjectionKind::Gaussian => {
            // Box–Muller.
            let u1: f32 = rng.random_range(f32::EPSILON..1.0);
            let u2: f32 = rng.random();
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        }
    }
}

/// A gradient directory opened for reading.
pub struct GradFile {
    pub header: GradHeader,
    dir: PathBuf,
    index: Vec<(ContentHash, u64)>,
}

impl GradFile {
    pub fn open(dir: &Path) -> Result<Self> {
        let header_path = dir.join(HEADER_FILE);
        let text = std::fs::read_to_string(&header_path).map_err(|e| MlError::io(&header_path, e))?;
        let header: GradHeader = serde_json::from_str(&text).map_err(|e| MlError::corrupt("gradient header", e))?;
        if header.format != GRADS_FORMAT && header.format != GRADS_FORMAT_EVERY_LAYER {
            return Err(MlError::unsupported("gradient file", header.format));
        }
        let index_path = dir.join(INDEX_FILE);
        let bytes = std::fs::read(&index_path).map_err(|e| MlError::io(&index_path, e))?;
        if bytes.len() != header.records * 40 {
            return Err(MlError::corrupt(
                "gradient index",
                format!("{} bytes for {} records", bytes.len(), header.records),
            ));
        }
        let index = bytes
            .chunks_exact(40)
            .map(|c| {
                let hash: [u8; 32] = c[..32].try_into().unwrap_or([0; 32]);
                let row = u64::from_le_bytes(c[32..].try_into().unwrap_or([0; 8]));
                (ContentHash::from_bytes(hash), row)
            })
            .collect();
        let rows = dir.join(ROWS_FILE);
        let expected = (header.records * header.layer_dims.iter().sum::<usize>() * header.dtype.size()) as u64;
        let actual = std::fs::metadata(&rows).map_err(|e| MlError::io(&rows, e))?.len();
        if actual != expected {
            return Err(MlError::corrupt("gradient rows", format!("{actual} bytes, the header implies {expected}")));
        }
        Ok(Self { header, dir: dir.to_path_buf(), index })
    }

    pub fn bytes_per_record(&self) -> usize {
        self.header.layer_dims.iter().sum::<usize>() * self.header.dtype.size()
    }

    /// The row of a record, if it is in the file.
    pub fn row_of(&self, hash: &ContentHash) -> Option<u64> {
        self.index.binary_search_by(|(h, _)| h.cmp(hash)).ok().map(|i| self.index[i].1)
    }

    /// One record's gradient, split per layer.
    pub fn read(&self, hash: &ContentHash) -> Result<Option<Vec<Vec<f32>>>> {
        use std::io::{Read, Seek, SeekFrom};
        let Some(row) = self.row_of(hash) else { return Ok(None) };
        let path = self.dir.join(ROWS_FILE);
        let mut file = std::fs::File::open(&path).map_err(|e| MlError::io(&path, e))?;
        let width = self.bytes_per_record();
        file.seek(SeekFrom::Start(row * width as u64)).map_err(|e| MlError::io(&path, e))?;
        let mut bytes = vec![0u8; width];
        file.read_exact(&mut bytes).map_err(|e| MlError::io(&path, e))?;
        let values: Vec<f32> = match self.header.dtype {
            GradDType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            GradDType::Bf16 => {
                bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
        };
        let mut layers = Vec::with_capacity(self.header.layer_dims.len());
        let mut rest = values.as_slice();
        for &dim in &self.header.layer_dims {
            let (layer, tail) = rest.split_at(dim);
            layers.push(layer.to_vec());
            rest = tail;
        }
        Ok(Some(layers))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::Device;
    use candle_core::quantized::GgmlDType;

    use super::*;
    use crate::adapters::load_adapter_dir_as;
    use crate::testing::{TinyModel, TinySpec, write_peft_adapter};

    struct Setup {
        _dir: tempfile::TempDir,
        model: LlamaModel,
        adapter: LoraAdapter,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let tiny = TinyModel::new(TinySpec::default()).unwrap();
        let model =
            LlamaModel::from_gguf(&tiny.write_gguf(&dir.path().join("t.gguf"), GgmlDType::F32).unwrap(), &Device::Cpu)
                .unwrap();
        let path = dir.path().join("adapter");
        write_peft_adapter(&path, model.config(), 4, &[Target::Q, Target::V, Target::Down], 2, false).unwrap();
        let adapter = load_adapter_dir_as("a", &path, &model, crate::lora::AdapterPrecision::Exact).unwrap();
        Setup { _dir: dir, model, adapter }
    }

    fn examples() -> Vec<Vec<u32>> {
        vec![(1..=9).map(|i| i * 7 % 250).collect(), (1..=4).map(|i| i * 11 % 250).collect(), (1..=6).collect()]
    }

    /// Gradients from one batched pass equal autograd's gradient of each example run alone.
    /// Probes on one model share its f32 copy while any holds it; the last one gone frees it.
    #[test]
    fn probes_on_one_model_share_its_f32_weights() {
        let s = setup();
        let first = GradientProbe::new(&s.model, &s.adapter, None).unwrap();
        let projection = Projection { kind: ProjectionKind::Rademacher, dim: 2 * 4 * 3 * 5, seed: 11 };
        let second = GradientProbe::new(&s.model, &s.adapter, Some(projection)).unwrap();
        assert!(std::sync::Arc::ptr_eq(&first.base, &second.base));
        drop((first, second));
        assert!(s.model.frozen_base().lock().unwrap().upgrade().is_none(), "freed with its last probe");
        let again = GradientProbe::new(&s.model, &s.adapter, None).unwrap();
        assert_eq!(std::sync::Arc::strong_count(&again.base), 1);
    }

    #[test]
    fn batched_per_example_gradients_equal_single_runs() {
        let s = setup();
        let probe = GradientProbe::new(&s.model, &s.adapter, None).unwrap();
        let examples = examples();
        let batch: Vec<(&[u32], usize)> = examples.iter().map(|e| (e.as_slice(), 2)).collect();
        let batched = probe.gradients(&batch).unwrap();
        for (e, tokens) in examples.iter().enumerate() {
            let alone = Batch::new(&[(tokens.as_slice(), 2)], probe.base.device()).unwrap();
            let (nll, _) = probe.base.forward(Some(&probe.vars), &alone, &Mode::train(None)).unwrap();
            let grads = nll.mean_all().unwrap().backward().unwrap();
            for (layer, got) in batched[e].iter().enumerate() {
                let mut expected = Vec::new();
                for &target in &probe.targets {
                    let (a, b) = &probe.vars.pairs[&(layer, target)];
                    for var in [a, b] {
                        expected.extend(
                            grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                        );
                    }
                }
                assert_eq!(got.len(), expected.len());
                let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(
                    scale > 0.0 && worst < 1e-4 * scale.max(1.0),
                    "example {e} layer {layer}: {worst} (scale {scale})"
                );
            }
        }
    }

    /// A probe from a later layer gives exactly the full probe's gradients of those layers
    /// (the earlier layers' forward is the same; only the backward stops sooner).
    #[test]
    fn probing_from_a_later_layer_keeps_those_layers_gradients() {
        let s = setup();
        let projection = Projection { kind: ProjectionKind::Rademacher, dim: 2 * 4 * 3 * 5, seed: 11 };
        let full = GradientProbe::new(&s.model, &s.adapter, Some(projection)).unwrap();
        let layers = full.layers;
        assert!(layers >= 2, "the tiny model has {layers} layers");
        let last = GradientProbe::new(&s.model, &s.adapter, Some(projection)).unwrap().from_layer(layers - 1).unwrap();
        let examples = examples();
        let batch: Vec<(&[u32], usize)> = examples.iter().map(|e| (e.as_slice(), 2)).collect();
        let (f, l) = (full.gradients(&batch).unwrap(), last.gradients(&batch).unwrap());
        for e in 0..examples.len() {
            assert_eq!(l[e].len(), 1);
            let scale = f[e][layers - 1].iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = l[e][0].iter().zip(&f[e][layers - 1]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(scale > 0.0 && worst <= 1e-5 * scale.max(1.0), "example {e}: {worst} (scale {scale})");
        }
        let header = last.header(3, GradDType::F32, "a");
        assert_eq!((header.first_layer, header.layer_dims.len()), (layers - 1, 1));
        let err = GradientProbe::new(&s.model, &s.adapter, None).unwrap().from_layer(layers).err().unwrap();
        assert!(err.to_string().contains("layers"), "{err}");
    }

    /// The projected gradient is exactly `P_in` / `P_out` applied to the full one, and the
    /// header's layout matches the rows.
    #[test]
    fn projection_is_the_factored_map_of_the_full_gradient() {
        let s = setup();
        let full = GradientProbe::new(&s.model, &s.adapter, None).unwrap();
        let projection = Projection { kind: ProjectionKind::Rademacher, dim: 2 * 4 * 3 * 5, seed: 11 };
        let projected = GradientProbe::new(&s.model, &s.adapter, Some(projection)).unwrap();
        let examples = examples();
        let batch: Vec<(&[u32], usize)> = examples.iter().map(|e| (e.as_slice(), 1)).collect();
        let (f, p) = (full.gradients(&batch).unwrap(), projected.gradients(&batch).unwrap());
        let header = projected.header(3, GradDType::F32, "a");
        assert_eq!(header.layer_dims[0], projection.dim);
        for e in 0..3 {
            for layer in 0..full.layers {
                assert_eq!(p[e][layer].len(), projection.dim);
                let mut expected = Vec::new();
                let mut offset = 0;
                for &target in &full.targets {
                    let (in_f, out_f) = full.base.config.projection_shape(target);
                    let ga =
                        Tensor::from_slice(&f[e][layer][offset..offset + 4 * in_f], (4, in_f), &Device::Cpu).unwrap();
                    offset += 4 * in_f;
                    let gb =
                        Tensor::from_slice(&f[e][layer][offset..offset + out_f * 4], (out_f, 4), &Device::Cpu).unwrap();
                    offset += out_f * 4;
                    let (p_in, p_out) = &projected.matrices[&(layer, target)];
                    expected.extend(
                        ga.matmul(&p_in.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    );
                    expected.extend(p_out.matmul(&gb).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
                }
                let worst = p[e][layer].iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-4, "{worst}");
            }
        }
        let bad = Projection { dim: 7, ..projection };
        let err = GradientProbe::new(&s.model, &s.adapter, Some(bad)).err().unwrap();
        assert!(err.to_string().contains("multiple of 24"), "{err}");
    }

    #[test]
    fn files_round_trip_by_record_hash() {
        let s = setup();
        let probe = GradientProbe::new(&s.model, &s.adapter, None).unwrap();
        let examples = examples();
        let hashes: Vec<ContentHash> = (0..3u8).map(|i| ContentHash::of(&[i])).collect();
        // The first record twice: it is written once.
        let mut records: Vec<(ContentHash, &[u32], usize)> =
            examples.iter().zip(&hashes).map(|(e, h)| (*h, e.as_slice(), 1)).collect();
        records.push(records[0]);
        let dir = tempfile::tempdir().unwrap();
        for dtype in [GradDType::F32, GradDType::Bf16] {
            let out = dir.path().join(format!("{dtype:?}"));
            let mut progress = Vec::new();
            let header = probe.write(&out, &records, 20, dtype, "a", &mut |d, t| progress.push((d, t))).unwrap();
            assert_eq!(header.records, 3);
            assert_eq!(progress.last(), Some(&(3, 3)));
            assert!(progress.len() >= 2, "batches of 20 padded tokens: {progress:?}");
            let file = GradFile::open(&out).unwrap();
            let direct = probe.gradients(&[(examples[1].as_slice(), 1)]).unwrap().remove(0);
            let read = file.read(&hashes[1]).unwrap().unwrap();
            let tolerance = if dtype == GradDType::F32 { 1e-4 } else { 1e-2 };
            // Relative to each value, with a floor at 1% of the largest: the batched and the
            // single-record passes round differently, which shows on the smallest entries.
            let largest = direct.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in read.iter().flatten().zip(direct.iter().flatten()) {
                assert!((a - b).abs() <= tolerance * b.abs().max(largest / 100.0), "{a} vs {b}");
            }
            assert!(file.read(&ContentHash::of(b"absent")).unwrap().is_none());
        }
        // A format 1 file (written before rows could start at a later layer) holds every layer.
        let header_path = dir.path().join("F32").join(HEADER_FILE);
        let mut old: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&header_path).unwrap()).unwrap();
        old["format"] = "openledger-grads/1".into();
        old.as_object_mut().unwrap().remove("first_layer");
        std::fs::write(&header_path, old.to_string()).unwrap();
        assert_eq!(GradFile::open(&dir.path().join("F32")).unwrap().header.first_layer, 0);
        std::fs::write(dir.path().join("F32").join(ROWS_FILE), b"short").unwrap();
        assert!(GradFile::open(&dir.path().join("F32")).err().unwrap().to_string().contains("header implies"));
    }
}
