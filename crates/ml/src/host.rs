//! The CPU forward pass on plain `f32` slices: RMSNorm, RoPE, causal attention over a host KV
//! cache and SwiGLU, fused so that a decode step allocates a handful of buffers per layer
//! instead of running two dozen tensor operations. Projections still run on the block kernels
//! (`kernels/`) and LoRA deltas on `LoraPlan::apply_host`. The tensor path in `model.rs` is
//! the same computation for other devices (and the reference the tests hold this one to).

use crate::error::{MlError, Result};
use crate::kernels::Dense;

/// A contiguous CPU tensor's elements, of the tensor's own dtype.
fn host_slice<'a, T: candle_core::WithDType>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
) -> Result<&'a [T]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(cpu), Some((start, end))) => Ok(&cpu.as_slice::<T>()?[start..end]),
        _ => Err(MlError::corrupt("model", format!("expected a contiguous CPU {:?} tensor", T::DTYPE))),
    }
}

/// Runs `f` on the elements of a contiguous CPU f32 tensor without copying them.
pub(crate) fn with_f32<R>(t: &candle_core::Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    f(host_slice(&storage, layout)?)
}

/// f32 dot product in eight independent lanes, so the compiler can vectorize it.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            lanes[i] += ca[i] * cb[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `y += a·x`.
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `eˣ` of each value in place, as a branch-free polynomial the compiler vectorizes (libm's
/// `expf` is a scalar call per value): `eˣ = 2ⁿ·eʳ` with `n = round(x·log₂e)`, `|r| ≤ ln2/2`, and
/// `eʳ` by its degree-6 Taylor polynomial. Relative error below 4e-7 (tested); inputs below
/// −87.3 give 0, above 88.7 the largest finite range is clamped (inputs here are ≤ 0 or small).
pub(crate) fn exp_in_place(xs: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    for x in xs.iter_mut() {
        let v = x.clamp(-87.3, 88.7);
        let n = (v * LOG2E + ROUND) - ROUND;
        let r = v - n * LN2_HI - n * LN2_LO;
        let p =
            1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
        *x = if *x < -87.3 { 0.0 } else { p * scale };
    }
}

/// RMSNorm of each `weight.len()`-wide row of `x`.
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let width = weight.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(width) {
        let scale = 1.0 / (dot(row, row) / width as f32 + eps).sqrt();
        out.extend(row.iter().zip(weight).map(|(v, w)| v * scale * w));
    }
    out
}

/// `silu(gate) · up` for rows laid out as `[gate | up]`, each half `width` wide.
pub(crate) fn swiglu(gate_up: &[f32], width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks_exact(2 * width) {
        let (gate, up) = row.split_at(width);
        out.extend(gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u));
    }
    out
}

/// `x += y`, element by element.
pub(crate) fn add_assign(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

/// Rotates one head vector in place by the angles of one position (`cos`, `sin`: `d / 2` each).
/// Interleaved rotates pairs `(2i, 2i+1)` (GGUF's layout); otherwise `(i, i + d/2)` (Hugging Face's).
pub(crate) fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = cos.len();
    for i in 0..half {
        let (a, b) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
        let (xa, xb) = (x[a], x[b]);
        x[a] = xa * cos[i] - xb * sin[i];
        x[b] = xa * sin[i] + xb * cos[i];
    }
}

/// Softmax of `scale·s` over each `width`-wide row of scores, causally: row `i` sees columns
/// `..=first + i`; later columns become 0.
pub(crate) fn causal_softmax(scores: &mut [f32], width: usize, first: usize, scale: f32) {
    for (i, row) in scores.chunks_exact_mut(width).enumerate() {
        let (seen, masked) = row.split_at_mut((first + i + 1).min(width));
        let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        seen.iter_mut().for_each(|s| *s = (*s - max) * scale);
        exp_in_place(seen);
        let sum: f32 = seen.iter().sum();
        seen.iter_mut().for_each(|s| *s /= sum);
        masked.fill(0.0);
    }
}

/// One layer's keys and values of one sequence, laid out `[kv_head][position][head_dim]` so a
/// head's keys are contiguous.
#[derive(Debug)]
pub(crate) struct HostKv {
    pub(crate) keys: Vec<f32>,
    pub(crate) values: Vec<f32>,
}

/// Rows of one sequence from which its attention runs as matrix products (a prefill).
const MATRIX_ROWS: usize = 16;

/// Query rows per task of the matrix path: keys after a block's last row are not scored.
const QUERY_BLOCK: usize = 64;

/// Shapes the attention needs.
pub(crate) struct Heads {
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
}

impl Heads {
    /// Where one key (or value) vector lives in a cache.
    fn slot(&self, kv: &HostKv, kv_head: usize, position: usize) -> std::ops::Range<usize> {
        let capacity = kv.keys.len() / (self.kv_heads * self.head_dim);
        let start = (kv_head * capacity + position) * self.head_dim;
        start..start + self.head_dim
    }

    /// Causal attention of one query row at `position` (it sees positions `0..=position`),
    /// written to `out` (`heads · head_dim`).
    fn attend(&self, q: &[f32], kv: &HostKv, position: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
        let d = self.head_dim;
        let group = self.heads / self.kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        out.fill(0.0);
        for (h, (q, out)) in q.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
            let base = self.slot(kv, h / group, 0).start;
            let keys = &kv.keys[base..base + (position + 1) * d];
            let values = &kv.values[base..base + (position + 1) * d];
            scores.clear();
            scores.extend(keys.chunks_exact(d).map(|k| dot(q, k)));
            causal_softmax(scores, position + 1, position, scale);
            for (p, v) in scores.iter().zip(values.chunks_exact(d)) {
                axpy(*p, v, out);
            }
        }
    }
}

impl Heads {
    /// Causal attention of `t` consecutive rows of one sequence (positions `first..first + t`,
    /// keys and values already in `kv`), written to `out` (`t · heads · head_dim`): per head and
    /// block of [`QUERY_BLOCK`] queries, scores and outputs are two small matrix products
    /// (`gemm`) instead of a dot product per key, the tasks spread over the pool.
    fn attend_rows(&self, qkv: &[f32], kv: &HostKv, first: usize, out: &mut [f32]) {
        let d = self.head_dim;
        let (q_width, row_width) = (self.heads * d, (self.heads + 2 * self.kv_heads) * d);
        let t = qkv.len() / row_width;
        let group = self.heads / self.kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let blocks = t.div_ceil(QUERY_BLOCK);
        // Head-major results, (head, block, QUERY_BLOCK rows, d): one contiguous part a task.
        let mut by_head = vec![0f32; self.heads * blocks * QUERY_BLOCK * d];
        crate::pool::for_each_chunk(&mut by_head, QUERY_BLOCK * d, |task, part| {
            let (head, block) = (task / blocks, task % blocks);
            let rows = block * QUERY_BLOCK..((block + 1) * QUERY_BLOCK).min(t);
            let n = rows.len();
            let keys = first + rows.end; // the last row sees this many positions
            let queries: Vec<f32> =
                rows.clone().flat_map(|r| qkv[r * row_width + head * d..][..d].iter().copied()).collect();
            let base = self.slot(kv, head / group, 0).start;
            let (k, v) = (&kv.keys[base..base + keys * d], &kv.values[base..base + keys * d]);
            let mut scores = vec![0f32; n * keys];
            crate::kernels::matmul_with(
                Dense::new(&queries, n, d),
                Dense::new(k, keys, d).t(),
                &mut scores,
                false,
                false,
            );
            causal_softmax(&mut scores, keys, first + rows.start, scale);
            crate::kernels::matmul_with(
                Dense::new(&scores, n, keys),
                Dense::new(v, keys, d),
                &mut part[..n * d],
                false,
                false,
            );
        });
        for (head, rows) in by_head.chunks_exact(blocks * QUERY_BLOCK * d).enumerate() {
            for (r, row) in rows.chunks_exact(d).take(t).enumerate() {
                out[r * q_width + head * d..][..d].copy_from_slice(row);
            }
        }
    }
}

/// One sequence's rows of a layer: `qkv` holds its `t` rows of `[q | k | v]` (RoPE not yet
/// applied), `first` is the position of its first row.
pub(crate) struct SeqRows<'a> {
    pub(crate) qkv: &'a mut [f32],
    pub(crate) kv: &'a mut HostKv,
    pub(crate) first: usize,
}

/// Applies RoPE to the sequences' queries and keys, appends keys and values to their caches,
/// then computes every row's attention output (`rows · heads · head_dim`), rows in parallel.
pub(crate) fn attention(
    shape: &Heads,
    seqs: &mut [SeqRows<'_>],
    cos: &[f32],
    sin: &[f32],
    interleaved: bool,
) -> Vec<f32> {
    let d = shape.head_dim;
    let (q_width, kv_width) = (shape.heads * d, shape.kv_heads * d);
    let row_width = q_width + 2 * kv_width;
    let half = d / 2;
    for seq in seqs.iter_mut() {
        for (i, row) in seq.qkv.chunks_exact_mut(row_width).enumerate() {
            let position = seq.first + i;
            let (c, s) = (&cos[position * half..][..half], &sin[position * half..][..half]);
            let (q, kv) = row.split_at_mut(q_width);
            for head in q.chunks_exact_mut(d) {
                rope(head, c, s, interleaved);
            }
            let (k, v) = kv.split_at_mut(kv_width);
            for (kv_head, (k, v)) in k.chunks_exact_mut(d).zip(v.chunks_exact(d)).enumerate() {
                rope(k, c, s, interleaved);
                let slot = shape.slot(seq.kv, kv_head, position);
                seq.kv.keys[slot.clone()].copy_from_slice(k);
                seq.kv.values[slot].copy_from_slice(v);
            }
        }
    }
    let mut out = vec![0f32; seqs.iter().map(|s| s.qkv.len() / row_width).sum::<usize>() * q_width];
    // Long runs of rows (prefills) as matrix products per head; the other rows one by one.
    let mut single_rows: Vec<(&[f32], &HostKv, usize)> = Vec::new();
    let mut single_at = Vec::new();
    let mut at = 0;
    for seq in seqs.iter() {
        let t = seq.qkv.len() / row_width;
        if t >= MATRIX_ROWS {
            shape.attend_rows(seq.qkv, seq.kv, seq.first, &mut out[at..at + t * q_width]);
        } else {
            for (i, row) in seq.qkv.chunks_exact(row_width).enumerate() {
                single_rows.push((&row[..q_width], &*seq.kv, seq.first + i));
                single_at.push(at + i * q_width);
            }
        }
        at += t * q_width;
    }
    if single_rows.len() == 1 {
        let (q, kv, position) = single_rows[0];
        shape.attend(q, kv, position, &mut Vec::new(), &mut out[single_at[0]..][..q_width]);
    } else if !single_rows.is_empty() {
        let mut singles = vec![0f32; single_rows.len() * q_width];
        crate::pool::for_each_chunk(&mut singles, q_width, |r, out| {
            let (q, kv, position) = single_rows[r];
            shape.attend(q, kv, position, &mut Vec::new(), out);
        });
        for (row, at) in singles.chunks_exact(q_width).zip(single_at) {
            out[at..at + q_width].copy_from_slice(row);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_the_library_exp() {
        let xs: Vec<f32> = (0..200_001).map(|i| -100.0 + i as f32 * 0.00094).collect();
        let mut fast = xs.clone();
        exp_in_place(&mut fast);
        for (x, f) in xs.iter().zip(&fast) {
            let exact = (*x as f64).exp();
            if *x < -87.3 {
                assert_eq!(*f, 0.0, "exp({x})");
            } else {
                assert!(((*f as f64 - exact) / exact).abs() < 4e-7, "exp({x}) = {f}, expected {exact}");
            }
        }
        let mut special = [f32::NEG_INFINITY, 0.0, 1.0];
        exp_in_place(&mut special);
        assert_eq!(special[..2], [0.0, 1.0]);
        assert!((special[2] - std::f32::consts::E).abs() < 1e-6);
    }

    #[test]
    fn rope_is_a_rotation_of_pairs() {
        let (cos, sin) = ([0f32, 1.0], [1f32, 0.0]);
        let mut x = [1f32, 2.0, 3.0, 4.0];
        rope(&mut x, &cos, &sin, true);
        assert_eq!(x, [-2.0, 1.0, 3.0, 4.0]);
        let mut x = [1f32, 2.0, 3.0, 4.0];
        rope(&mut x, &cos, &sin, false);
        assert_eq!(x, [-3.0, 2.0, 1.0, 4.0]);
    }

    #[test]
    fn one_key_attention_returns_its_value() {
        let shape = Heads { heads: 2, kv_heads: 1, head_dim: 2 };
        let mut kv = HostKv { keys: vec![0.0; 8], values: vec![0.0; 8] };
        // q (2 heads) | k | v for one row at position 0, with cos = 1, sin = 0.
        let mut qkv = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 7.0, -3.0];
        let out =
            attention(&shape, &mut [SeqRows { qkv: &mut qkv, kv: &mut kv, first: 0 }], &[1.0; 4], &[0.0; 4], true);
        assert_eq!(out, vec![7.0, -3.0, 7.0, -3.0]);
        assert_eq!(&kv.keys[..2], &[0.5, 0.5]);
    }
}
