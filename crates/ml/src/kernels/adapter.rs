//! LoRA adapter weights on the CPU: how a matrix (`A`, rank × in, or `B`, out × rank) is held,
//! and the products a delta is made of (`u = A·x`, `Δ = B·u`) for up to [`MAX_ROWS`] activation
//! rows of one adapter at once.
//!
//! A matrix is held in **panels** of [`LANES`] rows: panel `p` holds, column after column, the
//! `LANES` values of rows `LANES·p ..` in that column (rows past the matrix's last are zero).
//! A product then reads the matrix once, front to back, as one stream, and each weight vector
//! it loads is multiplied by one broadcast activation into `LANES` outputs at once: no
//! horizontal sums, and one load serves every row of the task. With 16 rows each reading their
//! own adapter, a step streams ~60 MB of adapter weights from memory, so the reading order is
//! what costs (row-major rows eight at a time ran at a third of the memory's speed; see
//! `bench/RESULTS.md`, issue 18).
//!
//! Weights are f16 (half the bytes to read) or f32. f16 is widened in registers (F16C's
//! `vcvtph2ps`, part of x86-64-v3) and multiplied in f32, so the only difference from f32
//! weights is the rounding of the stored values. Serving holds most adapters in 8-bit panels
//! instead ([`q8`]: the base weights' Q8_0 panels and integer dot products, a quarter of f32's
//! bytes), which 16 distinct adapters a step read in ~31 MB rather than ~59.

use half::f16;

use super::Isa;

/// Rows a panel holds: one AVX2 vector of f32.
pub(crate) const LANES: usize = 8;

/// Activation rows one product call takes (a task's rows of one adapter).
pub(crate) const MAX_ROWS: usize = 4;

/// f32 values of this magnitude or more round to an infinite f16 (the largest finite one is
/// 65504, and 65520 is halfway to the next power of two).
pub(crate) const F16_OVERFLOW: f32 = 65520.0;

/// Elements a `rows × cols` matrix takes in panels.
pub(crate) fn panel_len(rows: usize, cols: usize) -> usize {
    rows.div_ceil(LANES) * LANES * cols
}

/// An element type adapter weights are held in: f16 or f32.
#[allow(unsafe_code)]
pub(crate) trait AdapterWeight: candle_core::WithDType {
    /// Whether every f32 is held as one of these (else a value may not fit; see [`Self::fits`]).
    const HOLDS_EVERY_F32: bool;

    /// Appends the `rows × cols` matrix `source` holds to `out` in panels ([`panel_len`]
    /// elements). Returns false if a value does not [fit](Self::fits); what was appended is then
    /// not to be used.
    fn pack(rows: usize, source: &Rows<'_>, out: &mut Vec<Self>) -> bool {
        pack_on(Isa::active(), rows, source, out)
    }

    /// `outs[i][..rows] = W·xs[i]` for the `rows × cols` matrix `w` in panels and 1 to
    /// [`MAX_ROWS`] activation rows `xs`, each `cols` long.
    fn products(w: &[Self], rows: usize, cols: usize, xs: &[&[f32]], outs: &mut [&mut [f32]]) {
        products_on(Isa::active(), w, rows, cols, xs, outs)
    }

    fn to_f32(self) -> f32;
    /// Rounded as `half` rounds (to nearest, ties to even).
    fn from_f32(value: f32) -> Self;
    /// Whether `value` is held as a finite value: always for f32; for f16 if its magnitude is
    /// below [`F16_OVERFLOW`] (so not NaN nor infinite either).
    fn fits(value: f32) -> bool;

    /// Eight values from `p` as f32. Safety: AVX2 and F16C; 8 readable values at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Eight f32 stored at `p` (rounded as [`Self::from_f32`]). Safety: AVX2 and F16C; room
    /// for 8 values at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn store8(v: std::arch::x86_64::__m256, p: *mut Self);
}

#[allow(unsafe_code)]
impl AdapterWeight for f32 {
    const HOLDS_EVERY_F32: bool = true;

    fn to_f32(self) -> f32 {
        self
    }

    fn from_f32(value: f32) -> Self {
        value
    }

    fn fits(_: f32) -> bool {
        true
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store8(v: std::arch::x86_64::__m256, p: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(p, v) }
    }
}

#[allow(unsafe_code)]
impl AdapterWeight for f16 {
    const HOLDS_EVERY_F32: bool = false;

    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }

    fn fits(value: f32) -> bool {
        value.abs() < F16_OVERFLOW
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store8(v: std::arch::x86_64::__m256, p: *mut f16) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        unsafe { _mm_storeu_si128(p.cast(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)) }
    }
}

/// The row-major `rows × cols` matrix held in panels `w`.
pub(crate) fn unpack<W: AdapterWeight>(w: &[W], rows: usize, cols: usize) -> Vec<W> {
    assert_eq!(w.len(), panel_len(rows, cols), "unpack: not a {rows} × {cols} matrix in panels");
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let (panel, lane) = (r / LANES, r % LANES);
        out.extend((0..cols).map(|c| w[(panel * cols + c) * LANES + lane]));
    }
    out
}

/// A row-major f32 matrix as little-endian bytes, as a safetensors file holds it; row `r` of
/// what is packed is its row `order[r]` when an order is given (else its row `r`).
pub(crate) struct Rows<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) cols: usize,
    pub(crate) order: Option<&'a [usize]>,
}

impl Rows<'_> {
    /// The bytes of row `r` (of what is packed).
    fn row(&self, r: usize) -> &[u8] {
        let r = self.order.map_or(r, |order| order[r]);
        &self.bytes[4 * self.cols * r..4 * self.cols * (r + 1)]
    }

    /// Panics unless rows `0..rows` (of what is packed) are all within the bytes, before
    /// anything is packed, so that a bad source leaves `out` as it was.
    fn check(&self, rows: usize) {
        let held = self.bytes.len() / (4 * self.cols).max(1);
        let fits = match self.order {
            Some(order) => order.len() >= rows && order[..rows].iter().all(|&r| r < held),
            None => rows <= held,
        };
        assert!(fits, "pack: {rows} rows of {} values are not all in {} bytes", self.cols, self.bytes.len());
    }
}

/// [`AdapterWeight::pack`] on the kernels of `isa`.
fn pack_on<W: AdapterWeight>(isa: Isa, rows: usize, source: &Rows<'_>, out: &mut Vec<W>) -> bool {
    source.check(rows);
    match isa {
        Isa::Portable => portable::pack(rows, source, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => x86::pack(rows, source, out),
        #[cfg(not(target_arch = "x86_64"))]
        _ => portable::pack(rows, source, out),
    }
}

/// [`AdapterWeight::products`] on the kernels of `isa`.
#[allow(unsafe_code)]
fn products_on<W: AdapterWeight>(isa: Isa, w: &[W], rows: usize, cols: usize, xs: &[&[f32]], outs: &mut [&mut [f32]]) {
    assert!(!xs.is_empty() && xs.len() <= MAX_ROWS && xs.len() == outs.len(), "products: {} rows", xs.len());
    assert_eq!(w.len(), panel_len(rows, cols), "products: not a {rows} × {cols} matrix in panels");
    assert!(xs.iter().all(|x| x.len() == cols), "products: activations are not {cols} wide");
    assert!(outs.iter().all(|o| o.len() >= rows), "products: outputs shorter than {rows}");
    match isa {
        Isa::Portable => portable::products(w, rows, cols, xs, outs),
        // SAFETY: the shapes `x86::products` relies on are the ones asserted above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::products(w, rows, cols, xs, outs) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => portable::products(w, rows, cols, xs, outs),
    }
}

/// The f32 value at column `c` of a row of little-endian bytes.
fn le_f32(row: &[u8], c: usize) -> f32 {
    f32::from_le_bytes([row[4 * c], row[4 * c + 1], row[4 * c + 2], row[4 * c + 3]])
}

/// 8-bit panels: a matrix as Q8_0 blocks ([`q8_block`] elements of a row, an f16 scale each) in
/// the base weights' panels of [`PANEL`] rows (`kernels::panel`), so that a product is 8-bit
/// integer dot products against activations quantized the same way, as the base projections'
/// are: half the bytes of f16 to read, and no widening. Before the panels, a header of
/// [`Q8_HEADER`] bytes holds an f32 power of two `f` the values were divided by (their largest
/// magnitude then lies in [0.5, 1), so every block's scale is a normal f16 however small the
/// weights are: LoRA's often are ~1e-4) and a product is multiplied by afterwards.
pub(crate) mod q8 {
    use super::super::panel::Layout;
    use super::super::q8::{largest_magnitude, quantize_block};
    use super::super::{BLOCK, Isa, PANEL, Q8Activations};
    use super::{MAX_ROWS, Rows};

    /// Bytes before a matrix's panels (the factor, then zeros: the panels stay 64-byte groups).
    pub(crate) const Q8_HEADER: usize = 64;

    /// Largest magnitude (exclusive) and smallest nonzero one (inclusive) a matrix of 8-bit
    /// panels may hold: the factor must stay a normal f32.
    const MAX_MAGNITUDE: f32 = 1.0e30;
    const MIN_MAGNITUDE: f32 = 1.0e-30;

    /// The block length of the 8-bit panels of a matrix `cols` wide: 32, or 16 for widths of
    /// an odd multiple of 16 (a rank-16 `B`); `None` for other widths (those stay f16).
    pub(crate) fn q8_block(cols: usize) -> Option<usize> {
        if cols.is_multiple_of(BLOCK) {
            Some(BLOCK)
        } else if cols.is_multiple_of(BLOCK / 2) {
            Some(BLOCK / 2)
        } else {
            None
        }
    }

    /// Bytes a `rows × cols` matrix takes in 8-bit panels (`cols` must have a [`q8_block`]).
    pub(crate) fn q8_len(rows: usize, cols: usize) -> usize {
        let block = q8_block(cols).expect("a width 8-bit panels hold");
        Q8_HEADER + rows.div_ceil(PANEL) * (cols / block) * Layout::adapter(block).block_bytes()
    }

    /// Appends the `rows × cols` matrix `source` holds in 8-bit panels ([`q8_len`] bytes).
    /// Returns false, appending nothing, if a value is not finite or the largest magnitude is
    /// outside what a factor can scale (see [`MAX_MAGNITUDE`]).
    pub(crate) fn pack(rows: usize, source: &Rows<'_>, out: &mut Vec<u8>) -> bool {
        source.check(rows);
        let cols = source.cols;
        let block = q8_block(cols).expect("a width 8-bit panels hold");
        let layout = Layout::adapter(block);
        let row_values = |r: usize, out: &mut Vec<f32>| {
            out.clear();
            out.extend(source.row(r).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        };
        let mut values = Vec::with_capacity(cols);
        let (mut amax, mut finite) = (0f32, true);
        for r in 0..rows {
            row_values(r, &mut values);
            // No early exit: a loop the compiler vectorizes.
            finite &= values.iter().fold(true, |ok, v| ok & v.is_finite());
            amax = amax.max(largest_magnitude(&values));
        }
        if !finite || amax >= MAX_MAGNITUDE || (amax != 0.0 && amax < MIN_MAGNITUDE) {
            return false;
        }
        // The power of two just above the largest magnitude: dividing by it is exact.
        let factor = if amax == 0.0 { 1.0 } else { 2f32.powi(amax.log2().floor() as i32 + 1) };
        let start = out.len();
        out.resize(start + q8_len(rows, cols), 0);
        let matrix = &mut out[start..];
        matrix[..4].copy_from_slice(&factor.to_le_bytes());
        let blocks = cols / block;
        let block_bytes = layout.block_bytes();
        let header = layout.header_bytes();
        let mut quants = [0i8; BLOCK];
        // Exact: the inverse of a power of two is one.
        let inverse_factor = 1.0 / factor;
        for r in 0..rows {
            row_values(r, &mut values);
            values.iter_mut().for_each(|v| *v *= inverse_factor);
            let (panel, lane) = (r / PANEL, r % PANEL);
            for (b, values) in values.chunks_exact(block).enumerate() {
                let at = Q8_HEADER + (panel * blocks + b) * block_bytes;
                let out = &mut matrix[at..at + block_bytes];
                // Quantized as activations are (Q8_0's rule): the same code, the same rounding.
                let (d, _) = quantize_block(values, &mut quants[..block]);
                out[2 * lane..2 * lane + 2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
                for (g, four) in quants[..block].chunks_exact(4).enumerate() {
                    let at = header + 64 * g + 4 * lane;
                    for (o, q) in out[at..at + 4].iter_mut().zip(four) {
                        *o = (*q as u8) ^ 0x80;
                    }
                }
            }
        }
        true
    }

    /// Whether `w` holds a `rows × cols` matrix in 8-bit panels whose factor is a normal
    /// power of two and whose scales are finite (what a saved buffer read back must be).
    pub(crate) fn sound(w: &[u8], rows: usize, cols: usize) -> bool {
        let Some(block) = q8_block(cols) else { return false };
        if w.len() != q8_len(rows, cols) {
            return false;
        }
        let layout = Layout::adapter(block);
        let (factor, panels) = parts(w);
        let power_of_two = factor.is_normal() && factor > 0.0 && factor.to_bits() & 0x007f_ffff == 0;
        power_of_two
            && panels.chunks_exact(layout.block_bytes()).all(|block| {
                block[..layout.header_bytes()]
                    .chunks_exact(2)
                    .all(|d| u16::from_le_bytes([d[0], d[1]]) & 0x7c00 != 0x7c00)
            })
    }

    /// The factor and the panels of a matrix's bytes.
    fn parts(w: &[u8]) -> (f32, &[u8]) {
        (f32::from_le_bytes([w[0], w[1], w[2], w[3]]), &w[Q8_HEADER..])
    }

    /// The row-major values of the `rows × cols` matrix held in 8-bit panels `w`.
    pub(crate) fn unpack(w: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        assert_eq!(w.len(), q8_len(rows, cols), "unpack: not a {rows} × {cols} matrix in 8-bit panels");
        let layout = Layout::adapter(q8_block(cols).expect("checked by q8_len"));
        let (factor, panels) = parts(w);
        let mut out = vec![0f32; rows * cols];
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            layout.dequantize_row(panels, cols, r, row);
            row.iter_mut().for_each(|v| *v *= factor);
        }
        out
    }

    /// `x` rows (1 to [`MAX_ROWS`], each `cols` wide) quantized into `into` for products with a
    /// matrix `cols` wide in 8-bit panels.
    pub(crate) fn quantize<'a>(x: impl Iterator<Item = &'a [f32]>, cols: usize, into: &mut Q8Activations) {
        into.set_rows(q8_block(cols).expect("a width 8-bit panels hold"), x, cols);
    }

    /// `out[i·rows..(i + 1)·rows] = W·x_i` for the `rows × cols` matrix `w` in 8-bit panels and
    /// each row `x_i` of `x` (from [`quantize`]); `lanes` is scratch.
    pub(crate) fn products(
        w: &[u8],
        rows: usize,
        cols: usize,
        x: &Q8Activations,
        out: &mut [f32],
        lanes: &mut Vec<f32>,
    ) {
        products_on(Isa::active(), w, rows, cols, x, out, lanes)
    }

    pub(crate) fn products_on(
        isa: Isa,
        w: &[u8],
        rows: usize,
        cols: usize,
        x: &Q8Activations,
        out: &mut [f32],
        lanes: &mut Vec<f32>,
    ) {
        let n = x.rows();
        assert!((1..=MAX_ROWS).contains(&n), "products: {n} rows");
        assert_eq!(w.len(), q8_len(rows, cols), "products: not a {rows} × {cols} matrix in 8-bit panels");
        assert_eq!(out.len(), n * rows, "products: outputs are not {n} × {rows}");
        let block = q8_block(cols).expect("checked by q8_len");
        assert!(x.block == block && x.row(0).quants.len() == cols, "products: activations are not {cols} wide");
        let layout = Layout::adapter(block);
        let (factor, panels_bytes) = parts(w);
        let blocks = cols / block;
        let panels = rows.div_ceil(PANEL);
        lanes.clear();
        lanes.resize(panels * n * PANEL, 0.0);
        match n {
            1 => layout.tile::<1>(isa, panels_bytes, blocks, x, 0, lanes),
            2 => layout.tile::<2>(isa, panels_bytes, blocks, x, 0, lanes),
            3 => layout.tile::<3>(isa, panels_bytes, blocks, x, 0, lanes),
            _ => layout.tile::<4>(isa, panels_bytes, blocks, x, 0, lanes),
        }
        // Panel-major (panel, row of x, lane) to each row's outputs, times the factor.
        for (p, panel) in lanes.chunks_exact(n * PANEL).enumerate() {
            let first = p * PANEL;
            let count = PANEL.min(rows - first);
            for (out, lanes) in out.chunks_exact_mut(rows).zip(panel.chunks_exact(PANEL)) {
                for (o, v) in out[first..first + count].iter_mut().zip(lanes) {
                    *o = v * factor;
                }
            }
        }
    }
}

/// The plain Rust reference.
mod portable {
    use super::{AdapterWeight, LANES, Rows, le_f32};

    pub(super) fn pack<W: AdapterWeight>(rows: usize, source: &Rows<'_>, out: &mut Vec<W>) -> bool {
        out.reserve(super::panel_len(rows, source.cols));
        let mut fits = true;
        for first in (0..rows).step_by(LANES) {
            let lanes: [Option<&[u8]>; LANES] =
                std::array::from_fn(|l| (first + l < rows).then(|| source.row(first + l)));
            for c in 0..source.cols {
                for lane in &lanes {
                    let v = lane.map_or(0.0, |row| le_f32(row, c));
                    fits &= W::fits(v);
                    out.push(W::from_f32(v));
                }
            }
        }
        fits
    }

    pub(super) fn products<W: AdapterWeight>(
        w: &[W],
        rows: usize,
        cols: usize,
        xs: &[&[f32]],
        outs: &mut [&mut [f32]],
    ) {
        for (p, panel) in w.chunks_exact(cols * LANES).enumerate() {
            for (x, out) in xs.iter().zip(outs.iter_mut()) {
                let mut lanes = [0f32; LANES];
                for (column, &x) in panel.chunks_exact(LANES).zip(x.iter()) {
                    for (lane, w) in lanes.iter_mut().zip(column) {
                        *lane += w.to_f32() * x;
                    }
                }
                let n = (rows - p * LANES).min(LANES);
                out[p * LANES..p * LANES + n].copy_from_slice(&lanes[..n]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::Isa;
    use super::{AdapterWeight, F16_OVERFLOW, LANES, MAX_ROWS, Rows};

    /// How far ahead of its reads a product asks for the weights it will read next.
    const PREFETCH_BYTES: usize = 1024;

    pub(super) fn pack<W: AdapterWeight>(rows: usize, source: &Rows<'_>, out: &mut Vec<W>) -> bool {
        assert!(Isa::detected() >= Isa::Avx2, "this CPU cannot run AVX2");
        let (at, len) = (out.len(), super::panel_len(rows, source.cols));
        out.reserve(len);
        let mut fits = true;
        for first in (0..rows).step_by(LANES) {
            let lanes: [*const f32; LANES] = std::array::from_fn(|l| {
                if first + l < rows { source.row(first + l).as_ptr().cast() } else { std::ptr::null() }
            });
            // SAFETY: AVX2, FMA and F16C are present (checked above); every non-null pointer
            // is a row of `source.cols` values (`Rows::row` slices them); `out` has room for
            // all `len` values after `at` (reserved above), this panel's `LANES·cols` of them
            // starting `first·cols` in, written before the length covers them.
            fits &= unsafe { pack_avx2(&lanes, source.cols, out.as_mut_ptr().add(at + first * source.cols)) };
        }
        // SAFETY: the panels wrote all `len` values after `at`.
        unsafe { out.set_len(at + len) };
        fits
    }

    /// One panel from its eight source rows (null: a zero row past the matrix's last): 8 × 8
    /// blocks transposed in registers, the last `cols % 8` columns one by one. Returns whether
    /// every value fits (see `pack`).
    ///
    /// Safety: AVX2, FMA and F16C; every non-null row points at `cols` readable f32 (unaligned
    /// is fine); `dst` has room for `LANES·cols` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack_avx2<W: AdapterWeight>(rows: &[*const f32; LANES], cols: usize, dst: *mut W) -> bool {
        let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let overflow = _mm256_set1_ps(F16_OVERFLOW);
        let mut fits = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        let mut check =
            |v: __m256| fits = _mm256_and_ps(fits, _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, magnitude), overflow));
        let mut c = 0;
        while c + 8 <= cols {
            // SAFETY (loads): columns `c..c + 8` of each non-null row are within its `cols`.
            let r: [__m256; 8] = std::array::from_fn(|l| match rows[l].is_null() {
                true => _mm256_setzero_ps(),
                false => unsafe { _mm256_loadu_ps(rows[l].add(c)) },
            });
            // The usual 8 × 8 transpose: pairs, then quads, then halves.
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let columns = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (j, column) in columns.into_iter().enumerate() {
                check(column);
                // SAFETY: column `c + j < cols` of the panel is within `dst`'s `LANES·cols`.
                unsafe { W::store8(column, dst.add((c + j) * LANES)) };
            }
            c += 8;
        }
        while c < cols {
            // SAFETY: column `c < cols` of each non-null row.
            let column: [f32; LANES] =
                std::array::from_fn(
                    |l| if rows[l].is_null() { 0.0 } else { unsafe { rows[l].add(c).read_unaligned() } },
                );
            // SAFETY: as above; `column` is 8 f32.
            unsafe {
                let v = _mm256_loadu_ps(column.as_ptr());
                check(v);
                W::store8(v, dst.add(c * LANES));
            }
            c += 1;
        }
        W::HOLDS_EVERY_F32 || _mm256_movemask_ps(fits) == 0xFF
    }

    /// Safety: `w` holds the panels of a `rows × cols` matrix; `xs` holds 1 to `MAX_ROWS`
    /// rows of `cols` values and `outs` as many of at least `rows` (what `products_on` asserts).
    pub(super) unsafe fn products<W: AdapterWeight>(
        w: &[W],
        rows: usize,
        cols: usize,
        xs: &[&[f32]],
        outs: &mut [&mut [f32]],
    ) {
        assert!(Isa::detected() >= Isa::Avx2, "this CPU cannot run AVX2");
        let x: [*const f32; MAX_ROWS] = std::array::from_fn(|i| xs.get(i).map_or(std::ptr::null(), |x| x.as_ptr()));
        let o: [*mut f32; MAX_ROWS] =
            std::array::from_fn(|i| outs.get_mut(i).map_or(std::ptr::null_mut(), |o| o.as_mut_ptr()));
        // SAFETY: AVX2, FMA and F16C are present (checked above); `products_on` checked that
        // `w` holds the panels of a `rows × cols` matrix, each activation row `cols` values and
        // each output at least `rows`; the first `xs.len()` pointers are theirs.
        unsafe {
            match xs.len() {
                1 => products_avx2::<W, 1, 4>(w, rows, cols, x, o),
                2 => products_avx2::<W, 2, 4>(w, rows, cols, x, o),
                3 => products_avx2::<W, 3, 2>(w, rows, cols, x, o),
                4 => products_avx2::<W, 4, 2>(w, rows, cols, x, o),
                n => unreachable!("products of {n} rows"),
            }
        }
    }

    /// `N` activation rows against every panel, four columns an iteration, each weight vector
    /// loaded once for all `N` rows, into `CH` accumulators a row (columns in turn): four for
    /// one or two rows, so that enough FMAs are in flight while a lone row streams its adapter
    /// from memory (10% faster than two for 16 distinct adapters, measured), two for three or
    /// four rows, which have as many already (and four each would not fit the registers).
    ///
    /// Safety: AVX2, FMA and F16C; `w` holds the panels of a `rows × cols` matrix; `x[..N]`
    /// point at `cols` values and `o[..N]` at room for `rows`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn products_avx2<W: AdapterWeight, const N: usize, const CH: usize>(
        w: &[W],
        rows: usize,
        cols: usize,
        x: [*const f32; MAX_ROWS],
        o: [*mut f32; MAX_ROWS],
    ) {
        let ahead = PREFETCH_BYTES / size_of::<W>();
        for p in 0..rows.div_ceil(LANES) {
            let panel = w[p * cols * LANES..(p + 1) * cols * LANES].as_ptr();
            let mut acc = [[_mm256_setzero_ps(); 4]; N];
            let mut c = 0;
            // SAFETY (all reads): columns `c..c + 4` < `cols` of the panel, and of each `x`.
            // The prefetch address may lie past the panel: a prefetch is a hint that never
            // faults, and `wrapping_add` makes no claim about where it points.
            while c + 4 <= cols {
                _mm_prefetch::<_MM_HINT_T0>(panel.wrapping_add(c * LANES + ahead).cast());
                let w: [__m256; 4] = std::array::from_fn(|j| unsafe { W::load8(panel.add((c + j) * LANES)) });
                for (i, acc) in acc.iter_mut().enumerate() {
                    for (j, w) in w.iter().enumerate() {
                        let a = &mut acc[j % CH];
                        *a = _mm256_fmadd_ps(*w, unsafe { _mm256_broadcast_ss(&*x[i].add(c + j)) }, *a);
                    }
                }
                c += 4;
            }
            while c < cols {
                let w0 = unsafe { W::load8(panel.add(c * LANES)) };
                for (i, acc) in acc.iter_mut().enumerate() {
                    acc[0] = _mm256_fmadd_ps(w0, unsafe { _mm256_broadcast_ss(&*x[i].add(c)) }, acc[0]);
                }
                c += 1;
            }
            let n = (rows - p * LANES).min(LANES);
            for (i, acc) in acc.iter().enumerate() {
                let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                // SAFETY: outputs `p·LANES .. p·LANES + n` are below `rows`.
                unsafe {
                    if n == LANES {
                        _mm256_storeu_ps(o[i].add(p * LANES), sum);
                    } else {
                        let mut lanes = [0f32; LANES];
                        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
                        std::ptr::copy_nonoverlapping(lanes.as_ptr(), o[i].add(p * LANES), n);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn le_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// `values` (row-major) packed on `isa`, and whether they fit.
    fn packed<W: AdapterWeight>(isa: Isa, values: &[f32], rows: usize, cols: usize) -> (Vec<W>, bool) {
        let bytes = le_bytes(values);
        let mut out = Vec::new();
        let fits = pack_on(isa, rows, &Rows { bytes: &bytes, cols, order: None }, &mut out);
        (out, fits)
    }

    /// Packing then unpacking gives every value back as `W` rounds it (`half`'s rounding for
    /// f16, bit for bit: ties, subnormals, the largest f16, signed zero), the same panels on
    /// every level, zero in the padding rows; and a value f16 cannot hold is reported.
    #[test]
    fn pack_keeps_every_value_on_every_level() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut special = vec![0.0, -0.0, 1.0 + f32::EPSILON, 1.000_488_3, 6.0e-8, -6.1e-5, 65504.0, -65504.0, 65519.0];
        for (rows, cols) in [(1, 1), (3, 7), (8, 8), (9, 17), (16, 576), (17, 33), (576, 16)] {
            let mut values: Vec<f32> =
                (0..rows * cols).map(|_| rng.random_range(-3.0..3.0) * 10f32.powi(rng.random_range(-9..5))).collect();
            for (v, s) in values.iter_mut().zip(special.drain(..special.len().min(rows * cols))) {
                *v = s;
            }
            let bits16 = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<u16>>();
            let bits32 = |v: &[f32]| v.iter().map(|h| h.to_bits()).collect::<Vec<u32>>();
            let (p16, fits) = packed::<f16>(Isa::Portable, &values, rows, cols);
            assert!(fits, "{rows}x{cols}");
            let (p32, _) = packed::<f32>(Isa::Portable, &values, rows, cols);
            assert_eq!(p16.len(), panel_len(rows, cols));
            let want16: Vec<f16> = values.iter().map(|v| f16::from_f32(*v)).collect();
            assert_eq!(bits16(&unpack(&p16, rows, cols)), bits16(&want16), "{rows}x{cols}");
            assert_eq!(bits32(&unpack(&p32, rows, cols)), bits32(&values), "{rows}x{cols}");
            let padding = (rows..rows.next_multiple_of(LANES)).flat_map(|r| {
                let (panel, lane) = (r / LANES, r % LANES);
                (0..cols).map(move |c| (panel * cols + c) * LANES + lane)
            });
            assert!(padding.clone().all(|i| p16[i].to_bits() == 0 && p32[i].to_bits() == 0), "{rows}x{cols}");
            for isa in Isa::available() {
                let (q16, fits) = packed::<f16>(isa, &values, rows, cols);
                assert!(fits, "{isa:?} {rows}x{cols}");
                assert_eq!(bits16(&q16), bits16(&p16), "{isa:?} {rows}x{cols}");
                assert_eq!(bits32(&packed::<f32>(isa, &values, rows, cols).0), bits32(&p32), "{isa:?} {rows}x{cols}");
            }
        }
        // Rows read in another order: the same panels as the matrix with its rows so ordered.
        let (rows, cols) = (19, 13);
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.25 - 3.0).collect();
        let order: Vec<usize> = (0..rows).map(|r| (r * 7 + 3) % rows).collect();
        let reordered: Vec<f32> =
            order.iter().flat_map(|&r| values[r * cols..(r + 1) * cols].iter().copied()).collect();
        let bytes = le_bytes(&values);
        for isa in Isa::available() {
            let mut out: Vec<f32> = Vec::new();
            assert!(pack_on(isa, rows, &Rows { bytes: &bytes, cols, order: Some(&order) }, &mut out));
            assert_eq!(out, packed::<f32>(isa, &reordered, rows, cols).0, "{isa:?}");
        }
        for isa in Isa::available() {
            for bad in [65520.0, -1.0e6, f32::INFINITY, f32::NAN] {
                for at in [0, 5, 9, 20] {
                    let mut v = vec![0.5f32; 3 * 9];
                    v[at] = bad;
                    assert!(!packed::<f16>(isa, &v, 3, 9).1, "{isa:?}: {bad} at {at}");
                    assert!(packed::<f32>(isa, &v, 3, 9).1, "{isa:?}: f32 holds {bad}");
                }
            }
        }
    }

    /// The products agree with f64 arithmetic on the same (f16 or f32) weights on every level
    /// this CPU runs, for one to four rows at once, row counts around the panels (padding) and
    /// widths around the unrolling (odd columns), LoRA's own shapes among them, and write
    /// exactly `rows` outputs.
    #[test]
    fn products_match_f64_arithmetic_on_every_level() {
        fn check<W: AdapterWeight>(isa: Isa, values: &[f32], rows: usize, cols: usize, xs: &[Vec<f32>]) {
            let (w, _) = packed::<W>(isa, values, rows, cols);
            let held: Vec<f64> = values.iter().map(|v| f64::from(W::from_f32(*v).to_f32())).collect();
            let mut outs: Vec<Vec<f32>> = xs.iter().map(|_| vec![-7.0; rows + 1]).collect();
            {
                let x: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
                let mut o: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
                products_on(isa, &w, rows, cols, &x, &mut o);
            }
            for (i, (x, out)) in xs.iter().zip(&outs).enumerate() {
                assert_eq!(out[rows], -7.0, "{isa:?} {rows}x{cols}: wrote past its rows");
                for r in 0..rows {
                    let terms = held[r * cols..(r + 1) * cols].iter().zip(x).map(|(w, x)| w * f64::from(*x));
                    let exact: f64 = terms.clone().sum();
                    let scale: f64 = terms.map(f64::abs).sum::<f64>().max(1.0);
                    let got = f64::from(out[r]);
                    assert!((got - exact).abs() < 1e-5 * scale, "{isa:?} {rows}x{cols} x{i} row {r}: {got} vs {exact}");
                }
            }
        }
        let mut rng = StdRng::seed_from_u64(5);
        for rows in [1, 7, 8, 9, 16, 17, 576] {
            for cols in [1, 2, 7, 8, 16, 33, 576] {
                let values: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                for n in 1..=MAX_ROWS {
                    let xs: Vec<Vec<f32>> =
                        (0..n).map(|_| (0..cols).map(|_| rng.random_range(-2.0..2.0)).collect()).collect();
                    for isa in Isa::available() {
                        check::<f16>(isa, &values, rows, cols, &xs);
                        check::<f32>(isa, &values, rows, cols, &xs);
                    }
                }
            }
        }
    }

    /// 8-bit panels: every value comes back within its block's rounding (half a step of the
    /// block's scale, and the scale's own f16 rounding), however small the weights (the factor);
    /// products on every level equal the portable level's and f64 arithmetic on the held values
    /// with the activations' 8-bit rounding; outputs past `rows` are not written; values the
    /// panels cannot hold are refused, appending nothing; a sound matrix is `sound` and one with
    /// an infinite scale is not.
    #[test]
    fn eight_bit_panels_hold_and_multiply_on_every_level() {
        use super::super::PANEL;
        let mut rng = StdRng::seed_from_u64(8);
        for (rows, cols) in [(1, 16), (16, 32), (17, 16), (40, 48), (16, 576), (576, 16), (33, 64)] {
            for magnitude in [1.0e-4f32, 0.03, 7.0] {
                let values: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0) * magnitude).collect();
                let bytes = le_bytes(&values);
                let source = Rows { bytes: &bytes, cols, order: None };
                let mut w = vec![0xAA];
                assert!(q8::pack(rows, &source, &mut w), "{rows}x{cols}");
                let w = w.split_off(1);
                assert_eq!(w.len(), q8::q8_len(rows, cols));
                assert!(q8::sound(&w, rows, cols));
                let held = q8::unpack(&w, rows, cols);
                let block = q8::q8_block(cols).unwrap();
                for (r, (row, got)) in values.chunks_exact(cols).zip(held.chunks_exact(cols)).enumerate() {
                    for (b, (v, g)) in row.chunks_exact(block).zip(got.chunks_exact(block)).enumerate() {
                        let step = v.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                        for (v, g) in v.iter().zip(g) {
                            assert!((v - g).abs() <= 0.57 * step, "{rows}x{cols} row {r} block {b}: {g} for {v}");
                        }
                    }
                }
                for n in 1..=MAX_ROWS {
                    let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                    let mut xq = crate::kernels::Q8Activations::empty();
                    q8::quantize(x.chunks_exact(cols), cols, &mut xq);
                    let run = |isa: Isa| {
                        let mut out = vec![-7.0; n * rows + 1];
                        q8::products_on(isa, &w, rows, cols, &xq, &mut out[..n * rows], &mut vec![1.0; 3]);
                        let outs: Vec<Vec<f32>> = (0..n).map(|i| out[i * rows..(i + 1) * rows + 1].to_vec()).collect();
                        outs
                    };
                    let portable = run(Isa::Portable);
                    for isa in Isa::available() {
                        let got = run(isa);
                        for (i, (got, reference)) in got.iter().zip(&portable).enumerate() {
                            if i == n - 1 {
                                assert_eq!(got[rows], -7.0, "{isa:?}: wrote past its rows");
                            }
                            for r in 0..rows {
                                let terms = held[r * cols..(r + 1) * cols].iter().zip(&x[i * cols..(i + 1) * cols]);
                                let scale: f64 = terms.clone().map(|(w, x)| f64::from(*w * *x).abs()).sum::<f64>();
                                let exact: f64 = terms.map(|(w, x)| f64::from(*w) * f64::from(*x)).sum();
                                let (g, p) = (f64::from(got[r]), f64::from(reference[r]));
                                assert!(
                                    (g - p).abs() <= 1e-5 * scale.max(1e-30),
                                    "{isa:?} {rows}x{cols} x{i} row {r}: {g} vs portable {p}"
                                );
                                assert!(
                                    (g - exact).abs() <= 1.5e-2 * scale,
                                    "{isa:?} {rows}x{cols} x{i} row {r}: {g} vs {exact}"
                                );
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(q8::q8_block(8), None);
        assert_eq!((q8::q8_block(48), q8::q8_block(64)), (Some(16), Some(32)));
        for bad in [f32::NAN, f32::INFINITY, 2.0e30, 1.0e-31] {
            let mut v = vec![0.0f32; 16 * 32];
            v[37] = bad;
            let bytes = le_bytes(&v);
            let mut out = vec![1u8];
            assert!(!q8::pack(16, &Rows { bytes: &bytes, cols: 32, order: None }, &mut out), "{bad}");
            assert_eq!(out, [1u8], "{bad}: nothing appended");
        }
        let bytes = le_bytes(&vec![0.25f32; PANEL * 32]);
        let mut w = Vec::new();
        assert!(q8::pack(PANEL, &Rows { bytes: &bytes, cols: 32, order: None }, &mut w));
        w[q8::Q8_HEADER + 3] = 0x7c; // the second row's scale: an infinite f16
        assert!(!q8::sound(&w, PANEL, 32));
    }
}
