//! Integer matrix products for quantised layers: C = A·Bᵀ with A (m × k) and B (n × k)
//! signed 8-bit, sums exact in i32 (|A·B| ≤ 128² · k < 2³¹ for k < 131,072).
//!
//! On CPUs with AVX512_VNNI the product runs on `vpdpbusd` (u8 × i8 → i32, four products
//! per lane per instruction): A is offset to unsigned, a + 128, and the offset taken back
//! out with B's row sums, C = (A + 128)·Bᵀ − 128·Σₖ B. B is packed once (a weight) into
//! panels of 16 rows × 4 consecutive k, the layout `vpdpbusd` reads; the kernel holds a
//! 4 × 32 tile of C in registers. Elsewhere a portable loop gives the same sums.

/// B (n × k, row-major i8) packed for [`gemm_i8`].
#[derive(Debug, Clone)]
pub struct PackedI8 {
    n: usize,
    k: usize,
    /// k rounded up to a multiple of 4.
    k4: usize,
    /// Panels of 16 rows: `[n/16][k4/4][16][4]`, rows past n and k past k zero.
    data: Vec<i8>,
    /// Σₖ B[j, k] per row j.
    row_sums: Vec<i32>,
    /// The row-major original, for the portable path.
    plain: Vec<i8>,
}

impl PackedI8 {
    /// Packs `b` (n × k, row-major).
    pub fn new(b: &[i8], n: usize, k: usize) -> PackedI8 {
        assert_eq!(b.len(), n * k, "PackedI8: {} values for {n} × {k}", b.len());
        let k4 = k.div_ceil(4) * 4;
        let panels = n.div_ceil(32) * 2;
        let mut data = vec![0i8; panels * 16 * k4];
        // One panel of 16 rows per task: [k4/4][16][4].
        use rayon::prelude::*;
        data.par_chunks_mut(16 * k4.max(4))
            .enumerate()
            .for_each(|(p, panel)| {
                for r in 0..16 {
                    let j = p * 16 + r;
                    if j >= n {
                        break;
                    }
                    for (kk, &v) in b[j * k..(j + 1) * k].iter().enumerate() {
                        panel[((kk / 4) * 16 + r) * 4 + kk % 4] = v;
                    }
                }
            });
        let row_sums = b
            .chunks(k.max(1))
            .take(n)
            .map(|r| r.iter().map(|&v| i32::from(v)).sum())
            .collect();
        PackedI8 {
            n,
            k,
            k4,
            data,
            row_sums,
            plain: b.to_vec(),
        }
    }

    /// Rows of B (columns of C).
    pub fn rows(&self) -> usize {
        self.n
    }
}

/// Whether the VNNI kernel runs on this CPU.
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// An 8-bit left operand: signed, or unsigned (a ReLU's quantised output, 0…255).
trait Byte: Copy + Sync {
    /// The value as a VNNI u8 operand with `OFFSET` added, and as i32.
    const OFFSET: i32;
    fn biased(self) -> u8;
    fn wide(self) -> i32;
}

impl Byte for i8 {
    const OFFSET: i32 = 128;
    fn biased(self) -> u8 {
        (self as i16 + 128) as u8
    }
    fn wide(self) -> i32 {
        i32::from(self)
    }
}

impl Byte for u8 {
    const OFFSET: i32 = 0;
    fn biased(self) -> u8 {
        self
    }
    fn wide(self) -> i32 {
        i32::from(self)
    }
}

/// C (m × n, row-major i32) = A (m × k, row-major i8) · Bᵀ, exactly; rows of C split
/// over rayon's threads.
pub fn gemm_i8(a: &[i8], m: usize, b: &PackedI8, c: &mut [i32]) {
    gemm(a, m, b, c)
}

/// [`gemm_i8`] for unsigned 8-bit A (a ReLU's quantised output, 0…255).
pub fn gemm_u8(a: &[u8], m: usize, b: &PackedI8, c: &mut [i32]) {
    gemm(a, m, b, c)
}

fn gemm<T: Byte>(a: &[T], m: usize, b: &PackedI8, c: &mut [i32]) {
    let (n, k) = (b.n, b.k);
    assert_eq!(
        a.len(),
        m * k,
        "int8 GEMM: A has {} values for {m} × {k}",
        a.len()
    );
    assert_eq!(
        c.len(),
        m * n,
        "int8 GEMM: C has {} values for {m} × {n}",
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if has_vnni() {
        #[cfg(target_arch = "x86_64")]
        {
            // A + offset as u8; rows padded to k4 with the offset (zero after the shift
            // back: B is zero there).
            let k4 = b.k4;
            let mut au = vec![T::OFFSET as u8; m * k4];
            for i in 0..m {
                for (d, &v) in au[i * k4..i * k4 + k]
                    .iter_mut()
                    .zip(&a[i * k..(i + 1) * k])
                {
                    *d = v.biased();
                }
            }
            vnni::gemm(&au, m, b, c, T::OFFSET);
            return;
        }
    }
    reference(a, m, b, c);
}

/// Plain i32 sums.
fn reference<T: Byte>(a: &[T], m: usize, b: &PackedI8, c: &mut [i32]) {
    let (n, k) = (b.n, b.k);
    for i in 0..m {
        let ar = &a[i * k..(i + 1) * k];
        for j in 0..n {
            let br = &b.plain[j * k..(j + 1) * k];
            c[i * n + j] = ar
                .iter()
                .zip(br)
                .map(|(&x, &y)| x.wide() * i32::from(y))
                .sum();
        }
    }
}

/// The reference: plain i32 sums, on any CPU.
pub fn portable(a: &[i8], m: usize, b: &PackedI8, c: &mut [i32]) {
    reference(a, m, b, c)
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::PackedI8;
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    /// Rows of C per kernel call and per rayon task.
    const MR: usize = 4;
    const ROWS_PER_TASK: usize = 16;

    /// C = (A' − offset)·Bᵀ for A' (m × k4, u8) = A + offset.
    pub(super) fn gemm(au: &[u8], m: usize, b: &PackedI8, c: &mut [i32], offset: i32) {
        let (n, k4) = (b.n, b.k4);
        debug_assert_eq!(au.len(), m * k4);
        c.par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(|(t, ct)| {
                let r0 = t * ROWS_PER_TASK;
                let rows = ct.len() / n;
                let mut i = 0;
                while i < rows {
                    let mr = (rows - i).min(MR);
                    let ar = &au[(r0 + i) * k4..(r0 + i + mr) * k4];
                    let cr = &mut ct[i * n..(i + mr) * n];
                    // SAFETY: `gemm_i8` checked AVX512F, BW and VNNI at run time; slices
                    // hold mr rows of k4 bytes and of n i32.
                    unsafe {
                        match mr {
                            4 => tile::<4>(ar, b, cr, offset),
                            3 => tile::<3>(ar, b, cr, offset),
                            2 => tile::<2>(ar, b, cr, offset),
                            _ => tile::<1>(ar, b, cr, offset),
                        }
                    }
                    i += mr;
                }
            });
    }

    /// C rows (R of them) for every 32-column block: R × 2 accumulators of 16 i32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize>(a: &[u8], b: &PackedI8, c: &mut [i32], offset: i32) {
        // SAFETY: the caller checked the CPU's features; every pointer stays inside
        // the packed panels (zero-padded to whole 32-column blocks and k4) and A's mr rows.
        unsafe {
            let (n, k4) = (b.n, b.k4);
            let steps = k4 / 4;
            let mut col = 0;
            let mut panel = 0;
            while col < n {
                let mut acc = [[_mm512_setzero_si512(); 2]; R];
                let p0 = b.data.as_ptr().add(panel * steps * 64);
                let p1 = b.data.as_ptr().add((panel + 1) * steps * 64);
                for s in 0..steps {
                    let b0 = _mm512_loadu_si512(p0.add(s * 64) as *const _);
                    let b1 = _mm512_loadu_si512(p1.add(s * 64) as *const _);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let av = (a.as_ptr().add(r * k4 + s * 4) as *const i32).read_unaligned();
                        let av = _mm512_set1_epi32(av);
                        acc[0] = _mm512_dpbusd_epi32(acc[0], av, b0);
                        acc[1] = _mm512_dpbusd_epi32(acc[1], av, b1);
                    }
                }
                // Take the offset back out: − offset·Σₖ B[j, k], and store the valid columns.
                let width = (n - col).min(32);
                for (r, acc) in acc.iter().enumerate() {
                    let mut out = [0i32; 32];
                    _mm512_storeu_si512(out.as_mut_ptr() as *mut _, acc[0]);
                    _mm512_storeu_si512(out.as_mut_ptr().add(16) as *mut _, acc[1]);
                    let row = &mut c[r * n + col..r * n + col + width];
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = out[j] - offset * b.row_sums[col + j];
                    }
                }
                col += 32;
                panel += 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<i8> {
        // A full-range walk, extremes included.
        (0..len)
            .map(|i| ((i as u64).wrapping_mul(2_654_435_761).wrapping_add(seed) % 256) as u8 as i8)
            .collect()
    }

    #[test]
    fn the_product_is_exact_across_block_boundaries() {
        for (m, n, k) in [
            (1, 1, 1),
            (3, 17, 5),
            (4, 32, 4),
            (5, 33, 7),
            (9, 64, 130),
            (17, 31, 1000),
            (33, 100, 257),
        ] {
            let (a, b) = (values(m * k, 1), values(n * k, 2));
            let packed = PackedI8::new(&b, n, k);
            let (mut got, mut want) = (vec![0; m * n], vec![0; m * n]);
            gemm_i8(&a, m, &packed, &mut got);
            portable(&a, m, &packed, &mut want);
            // The reference again, from scratch in i64.
            for i in 0..m {
                for j in 0..n {
                    let s: i64 = (0..k)
                        .map(|kk| i64::from(a[i * k + kk]) * i64::from(b[j * k + kk]))
                        .sum();
                    assert_eq!(i64::from(want[i * n + j]), s);
                }
            }
            assert_eq!(got, want, "{m} × {n} × {k} (vnni: {})", has_vnni());
        }
        // Unsigned A (0…255) against the same reference.
        for (m, n, k) in [(3, 17, 5), (9, 64, 130), (33, 100, 257)] {
            let b = values(n * k, 2);
            let a: Vec<u8> = values(m * k, 3).iter().map(|&v| v as u8).collect();
            let packed = PackedI8::new(&b, n, k);
            let mut got = vec![0; m * n];
            gemm_u8(&a, m, &packed, &mut got);
            for i in 0..m {
                for j in 0..n {
                    let s: i32 = (0..k)
                        .map(|kk| i32::from(a[i * k + kk]) * i32::from(b[j * k + kk]))
                        .sum();
                    assert_eq!(got[i * n + j], s, "u8 {m} × {n} × {k}");
                }
            }
        }
        // The extremes: −128 · −128 summed over k.
        let k = 4096;
        let packed = PackedI8::new(&vec![-128; k], 1, k);
        let mut c = [0];
        gemm_i8(&vec![-128; k], 1, &packed, &mut c);
        assert_eq!(c[0], 128 * 128 * k as i32);
    }
}
