//! LoRA adapter weights on the CPU: the matrix-vector products a delta is made of (`u = A·x`,
//! `Δ = B·u`) for weights held as f16 or f32 against f32 activations, and the rounding of a
//! file's f32 values to f16 at load. f16 weights (what the CPU holds for serving: half the
//! bytes to read when every row of a batch reads its own adapter) are widened in registers
//! (F16C's `vcvtph2ps`, part of x86-64-v3) and multiplied in f32, so the only difference from
//! f32 weights is the rounding of the stored values. The x86 product takes eight weight rows
//! at a time and sums their eight lanes together (three rounds of `hadd`), so `B·u`, with rows
//! as short as the rank, does not pay a horizontal sum per output.

use half::f16;

use super::Isa;

/// An element type adapter weights are held in.
pub(crate) trait AdapterWeight: candle_core::WithDType {
    /// Appends `W·x` to `out`: `W` row-major with `x.len()` columns (`w.len()` a multiple of it).
    fn matvec(w: &[Self], x: &[f32], out: &mut Vec<f32>);
}

impl AdapterWeight for f32 {
    fn matvec(w: &[f32], x: &[f32], out: &mut Vec<f32>) {
        match Isa::active() {
            Isa::Portable => out.extend(w.chunks_exact(x.len()).map(|w| crate::host::dot(w, x))),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni => x86::matvec(w, x, out),
            #[cfg(not(target_arch = "x86_64"))]
            _ => out.extend(w.chunks_exact(x.len()).map(|w| crate::host::dot(w, x))),
        }
    }
}

impl AdapterWeight for f16 {
    fn matvec(w: &[f16], x: &[f32], out: &mut Vec<f32>) {
        match Isa::active() {
            Isa::Portable => out.extend(w.chunks_exact(x.len()).map(|w| portable::dot(w, x))),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni => x86::matvec(w, x, out),
            #[cfg(not(target_arch = "x86_64"))]
            _ => out.extend(w.chunks_exact(x.len()).map(|w| portable::dot(w, x))),
        }
    }
}

/// f32 values of this magnitude or more round to an infinite f16 (the largest finite one is
/// 65504, and 65520 is halfway to the next power of two).
pub(crate) const F16_OVERFLOW: f32 = 65520.0;

/// Appends the little-endian f32 values in `bytes` to `out`, rounded to the nearest f16 (ties
/// to even, as `half` and F16C round). Returns false if a value rounds to infinity (its
/// magnitude is [`F16_OVERFLOW`] or more) or is not finite; what it appended is then not to be
/// used.
pub(crate) fn narrow(bytes: &[u8], out: &mut Vec<f16>) -> bool {
    match Isa::active() {
        Isa::Portable => portable::narrow(bytes, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => x86::narrow(bytes, out),
        #[cfg(not(target_arch = "x86_64"))]
        _ => portable::narrow(bytes, out),
    }
}

/// The plain Rust reference.
mod portable {
    use half::f16;

    /// In eight lanes like `host::dot`.
    pub(super) fn dot(w: &[f16], x: &[f32]) -> f32 {
        let mut lanes = [0f32; 8];
        let (w_chunks, x_chunks) = (w.chunks_exact(8), x.chunks_exact(8));
        let tail: f32 = w_chunks.remainder().iter().zip(x_chunks.remainder()).map(|(w, x)| w.to_f32() * x).sum();
        for (cw, cx) in w_chunks.zip(x_chunks) {
            for i in 0..8 {
                lanes[i] += cw[i].to_f32() * cx[i];
            }
        }
        lanes.iter().sum::<f32>() + tail
    }

    pub(super) fn narrow(bytes: &[u8], out: &mut Vec<f16>) -> bool {
        let values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let mut in_range = true;
        out.extend(values.map(|v| {
            in_range &= v.abs() < super::F16_OVERFLOW;
            f16::from_f32(v)
        }));
        in_range
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::super::Isa;

    /// A weight type the AVX2 product reads eight at a time, as f32.
    pub(super) trait Load8: Copy {
        /// Safety: F16C; `p` points at 8 readable values (unaligned is fine).
        unsafe fn load8(p: *const Self) -> __m256;
        fn widen(self) -> f32;
    }

    impl Load8 for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            // SAFETY: the caller's contract.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }

        fn widen(self) -> f32 {
            self.to_f32()
        }
    }

    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller's contract.
            unsafe { _mm256_loadu_ps(p) }
        }

        fn widen(self) -> f32 {
            self
        }
    }

    pub(super) fn matvec<W: Load8>(w: &[W], x: &[f32], out: &mut Vec<f32>) {
        assert!(Isa::detected() >= Isa::Avx2, "this CPU cannot run AVX2");
        let cols = x.len();
        assert!(cols > 0 && w.len().is_multiple_of(cols), "matvec: {} weights are not rows of {cols}", w.len());
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above), and `w` holds whole rows of
        // `cols`, which is all `matvec_avx2` reads within.
        unsafe { matvec_avx2(w, x, w.len() / cols, cols, out) }
    }

    /// Eight rows at a time: eight accumulators over the columns in steps of 8, then their
    /// lanes summed together into one vector of eight results; leftover rows one at a time,
    /// leftover columns (`cols % 8`) added one by one.
    ///
    /// Safety: the CPU has AVX2, FMA and F16C; `w.len() == rows · cols`, `x.len() == cols`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn matvec_avx2<W: Load8>(w: &[W], x: &[f32], rows: usize, cols: usize, out: &mut Vec<f32>) {
        let (pw, px) = (w.as_ptr(), x.as_ptr());
        let body = cols / 8 * 8;
        let tail = |row: usize| -> f32 { (body..cols).map(|j| w[row * cols + j].widen() * x[j]).sum() };
        out.reserve(rows);
        let mut row = 0;
        // SAFETY (all loads): rows `row..row + 8` (or `row`) are below `rows` and columns
        // `j..j + 8` within `body ≤ cols`, so every read is inside `w` and `x`.
        while row + 8 <= rows {
            let mut acc = [_mm256_setzero_ps(); 8];
            for j in (0..body).step_by(8) {
                let xs = unsafe { _mm256_loadu_ps(px.add(j)) };
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(unsafe { W::load8(pw.add((row + r) * cols + j)) }, xs, *acc);
                }
            }
            // hadd pairs lanes within each 128-bit half: after two rounds the low half holds
            // rows 0-3's sums of lanes 0-3 and the high half their sums of lanes 4-7 (rows 4-7
            // likewise in the second vector); adding the halves gives the eight rows' sums.
            let s01 = _mm256_hadd_ps(acc[0], acc[1]);
            let s23 = _mm256_hadd_ps(acc[2], acc[3]);
            let s45 = _mm256_hadd_ps(acc[4], acc[5]);
            let s67 = _mm256_hadd_ps(acc[6], acc[7]);
            let (s0123, s4567) = (_mm256_hadd_ps(s01, s23), _mm256_hadd_ps(s45, s67));
            let sums = _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(s0123, s4567),
                _mm256_permute2f128_ps::<0x31>(s0123, s4567),
            );
            let mut lanes = [0f32; 8];
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sums) };
            out.extend(lanes.iter().enumerate().map(|(r, sum)| sum + tail(row + r)));
            row += 8;
        }
        while row < rows {
            let mut acc = _mm256_setzero_ps();
            for j in (0..body).step_by(8) {
                acc = _mm256_fmadd_ps(
                    unsafe { W::load8(pw.add(row * cols + j)) },
                    unsafe { _mm256_loadu_ps(px.add(j)) },
                    acc,
                );
            }
            let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            out.push(_mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair))) + tail(row));
            row += 1;
        }
    }

    pub(super) fn narrow(bytes: &[u8], out: &mut Vec<f16>) -> bool {
        assert!(Isa::detected() >= Isa::Avx2, "this CPU cannot run AVX2");
        let n = bytes.len() / 4;
        out.reserve(n);
        let spare = &mut out.spare_capacity_mut()[..n];
        // SAFETY: the CPU has AVX2 and F16C (checked above); `narrow_avx2` reads `4n` bytes of
        // `bytes` and writes `n` elements of `spare`, both that long.
        let in_range = unsafe { narrow_avx2(bytes.as_ptr(), spare.as_mut_ptr().cast::<u16>(), n) };
        // SAFETY: `narrow_avx2` initialised the `n` spare elements after the current length.
        unsafe { out.set_len(out.len() + n) };
        in_range
    }

    /// Eight values an iteration: rounded by `vcvtps2ph` (to nearest even), checked by
    /// comparing their magnitude with [`super::F16_OVERFLOW`] (false for NaN too).
    ///
    /// Safety: the CPU has AVX2 and F16C; `src` holds `4n` readable bytes, `dst` room for `n`
    /// writable u16 (neither need be aligned).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn narrow_avx2(src: *const u8, dst: *mut u16, n: usize) -> bool {
        let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let overflow = _mm256_set1_ps(super::F16_OVERFLOW);
        let mut fits = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        let mut i = 0;
        // SAFETY (all accesses): `i + 8 ≤ n` in the loop, `j < n` after it.
        while i + 8 <= n {
            unsafe {
                let v = _mm256_loadu_ps(src.add(4 * i).cast());
                fits = _mm256_and_ps(fits, _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, magnitude), overflow));
                _mm_storeu_si128(dst.add(i).cast(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
            }
            i += 8;
        }
        let mut in_range = _mm256_movemask_ps(fits) == 0xFF;
        for j in i..n {
            let v = unsafe { f32::from_le_bytes(src.add(4 * j).cast::<[u8; 4]>().read()) };
            in_range &= v.abs() < super::F16_OVERFLOW;
            unsafe { dst.add(j).write(f16::from_f32(v).to_bits()) };
        }
        in_range
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    /// The product agrees with f64 arithmetic on the same (f16 or f32) weights on every level
    /// this CPU runs, for row counts around the eight-row blocks and widths around the vector
    /// width (the tails), including LoRA's (rank 16, 576 features), appended after what `out`
    /// held.
    #[test]
    fn matvec_matches_f64_arithmetic_on_every_level() {
        fn check<W: AdapterWeight + Copy>(name: &str, w: &[W], x: &[f32], wide: &[f32], got: &[f32]) {
            let cols = x.len();
            assert_eq!(got.len(), 1 + w.len() / cols, "{name}");
            assert_eq!(got[0], -1.0, "{name}: what out held");
            for (row, (weights, got)) in wide.chunks_exact(cols).zip(&got[1..]).enumerate() {
                let exact: f64 = weights.iter().zip(x).map(|(w, x)| f64::from(*w) * f64::from(*x)).sum();
                let scale: f64 = weights.iter().zip(x).map(|(w, x)| f64::from((w * x).abs())).sum::<f64>().max(1.0);
                assert!((f64::from(*got) - exact).abs() < 1e-5 * scale, "{name} row {row}: {got} vs {exact}");
            }
        }
        let mut rng = StdRng::seed_from_u64(5);
        for rows in [1, 7, 8, 9, 17, 576] {
            for cols in [1, 7, 8, 16, 33, 576] {
                let halves: Vec<f16> = (0..rows * cols).map(|_| f16::from_f32(rng.random_range(-1.0..1.0))).collect();
                let wide: Vec<f32> = halves.iter().map(|w| w.to_f32()).collect();
                let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-2.0..2.0)).collect();
                let run = |f: &dyn Fn(&mut Vec<f32>)| {
                    let mut out = vec![-1.0];
                    f(&mut out);
                    out
                };
                let name = format!("{rows}x{cols}");
                let portable: Vec<f32> =
                    std::iter::once(-1.0).chain(halves.chunks_exact(cols).map(|w| portable::dot(w, &x))).collect();
                check(&format!("portable {name}"), &halves, &x, &wide, &portable);
                check(&format!("active f16 {name}"), &halves, &x, &wide, &run(&|o| f16::matvec(&halves, &x, o)));
                check(&format!("active f32 {name}"), &wide, &x, &wide, &run(&|o| f32::matvec(&wide, &x, o)));
                #[cfg(target_arch = "x86_64")]
                if Isa::detected() >= Isa::Avx2 {
                    check(&format!("avx2 f16 {name}"), &halves, &x, &wide, &run(&|o| x86::matvec(&halves, &x, o)));
                    check(&format!("avx2 f32 {name}"), &wide, &x, &wide, &run(&|o| x86::matvec(&wide, &x, o)));
                }
            }
        }
    }

    /// Rounding to f16 gives `half`'s result bit for bit on every level (ties, subnormals,
    /// the largest f16, signed zero, and values that round past it), appended after what `out`
    /// held, and says whether every value fits.
    #[test]
    fn narrow_rounds_like_half_on_every_level() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut values: Vec<f32> =
            (0..1000).map(|_| rng.random_range(-3.0..3.0) * 10f32.powi(rng.random_range(-9..5))).collect();
        values.extend([0.0, -0.0, 1.0 + f32::EPSILON, 1.000_488_3, 6.0e-8, -6.1e-5, 65504.0, -65504.0, 65519.0]);
        let bytes = |v: &[f32]| v.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let expected: Vec<f16> = values.iter().map(|v| f16::from_f32(*v)).collect();
        type Narrow = fn(&[u8], &mut Vec<f16>) -> bool;
        let mut levels: Vec<(&str, Narrow)> = vec![("portable", portable::narrow), ("active", narrow)];
        #[cfg(target_arch = "x86_64")]
        if Isa::detected() >= Isa::Avx2 {
            levels.push(("avx2", x86::narrow));
        }
        for (name, narrow) in levels {
            for n in [0, 3, 8, 13, values.len()] {
                let mut out = vec![f16::ONE];
                assert!(narrow(&bytes(&values[..n]), &mut out), "{name}: {n} values in range");
                assert_eq!(out[0], f16::ONE, "{name}");
                let got: Vec<u16> = out[1..].iter().map(|h| h.to_bits()).collect();
                let want: Vec<u16> = expected[..n].iter().map(|h| h.to_bits()).collect();
                assert_eq!(got, want, "{name}, n {n}");
            }
            for bad in [65520.0, -1.0e6, f32::INFINITY, f32::NAN] {
                for at in [0, 5, 9] {
                    let mut v = vec![0.5f32; 11];
                    v[at] = bad;
                    assert!(!narrow(&bytes(&v), &mut Vec::new()), "{name}: {bad} at {at}");
                }
            }
        }
    }
}
