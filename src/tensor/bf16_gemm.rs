//! The bf16 matrix product with f32 accumulation: `c[m×n] (+)= op(a) · op(b)`.
//!
//! No maintained crate has one (`gemm` widens f16 to f32 and has no bf16), so it is
//! written here, GotoBLAS-style: op(b) is packed in panels of k-pairs × `nr` columns,
//! op(a) in panels of `mr` rows, and an `mr`×`nr` tile of c is computed per call of the
//! micro-kernel. Three kernels, the best the CPU runs (chosen once, [`Kernel::best`]):
//!
//! - **AMX** (`tdpbf16ps`, Sapphire Rapids and later): a 16×16 f32 tile += a 16×32 bf16
//!   tile · a 32×16 bf16 tile per instruction; the micro-tile is 32×32 (four
//!   accumulator tiles). Linux grants the tile state on request (`arch_prctl`).
//! - **AVX512_BF16** (`vdpbf16ps`): each f32 lane adds the products of a bf16 pair; the
//!   micro-tile is 8×48 in 24 registers. On the machine this was built on it runs one
//!   instruction per two cycles (≈ 105 GFLOP/s a core, half the f32 FMA peak), so it
//!   beats the f32 product only through memory traffic.
//! - otherwise both operands are widened to f32 for the f32 product.
//!
//! Both hardware kernels treat subnormal bf16 inputs as zero and flush subnormal
//! results (documented for both instructions): a term moves by less than 2⁻¹²⁶.

use std::sync::OnceLock;

use half::bf16;

/// Rows of A per packed block.
const MC: usize = 128;
/// Columns of B per packed block.
const NC: usize = 1536;
/// Below this many multiply-adds a product runs on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 19;
/// The largest micro-tile, mr·nr.
const TILE: usize = 32 * 32;

/// A micro-kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// AMX tiles.
    Amx,
    /// AVX512_BF16 registers.
    Avx512,
    /// Widen to f32 and use the f32 product.
    Widen,
}

impl Kernel {
    /// The fastest kernel this CPU (and OS) runs.
    pub(crate) fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            if amx::available() {
                Kernel::Amx
            } else if avx512_available() {
                Kernel::Avx512
            } else {
                Kernel::Widen
            }
        })
    }

    /// Every kernel this machine runs (for tests).
    #[cfg(test)]
    pub(crate) fn runnable() -> Vec<Kernel> {
        let mut v = vec![Kernel::Widen];
        if avx512_available() {
            v.push(Kernel::Avx512);
        }
        if amx::available() {
            v.push(Kernel::Amx);
        }
        v
    }

    /// (mr, nr, k-pairs per packed block).
    fn geometry(self) -> (usize, usize, usize) {
        match self {
            Kernel::Amx => (32, 32, 512),
            // A 48-column panel of 256 k-pairs is 48 KiB.
            _ => (8, 48, 256),
        }
    }
}

fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// An operand element the kernels read as bf16 bits: bf16 itself, or f32 rounded to
/// nearest even while it is packed (autocast's cast of an f32 operand, without a copy).
pub(crate) trait Operand: Copy + Send + Sync {
    fn bf16_bits(self) -> u16;
}

impl Operand for bf16 {
    #[inline]
    fn bf16_bits(self) -> u16 {
        self.to_bits()
    }
}

impl Operand for f32 {
    #[inline]
    fn bf16_bits(self) -> u16 {
        super::reduced::bf16_bits(self)
    }
}

/// A strided read-only view of an operand: element (i, j) at `i·rs + j·cs`.
#[derive(Clone, Copy)]
struct View<'a, T> {
    v: &'a [T],
    rs: usize,
    cs: usize,
}

impl<T: Operand> View<'_, T> {
    #[inline]
    fn bits(&self, i: usize, j: usize) -> u16 {
        self.v[i * self.rs + j * self.cs].bf16_bits()
    }
}

/// The values the hardware kernels see, bf16-rounded, widened to f32.
fn rounded<T: Operand>(v: &[T]) -> Vec<f32> {
    v.iter()
        .map(|x| f32::from_bits((x.bf16_bits() as u32) << 16))
        .collect()
}

/// Two operand elements as one packed word: `lo` in the low half.
#[inline]
fn word<T: Operand>(lo: T, hi: T) -> u32 {
    lo.bf16_bits() as u32 | ((hi.bf16_bits() as u32) << 16)
}

/// Row-major `c[m×n] (+)= op(a) · op(b)`; `op(a)` is `a[m×k]` or `a[k×m]ᵀ` when `ta`,
/// `op(b)` is `b[k×n]` or `b[n×k]ᵀ` when `tb`. Without `accumulate`, `c` is overwritten.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<A: Operand, B: Operand>(
    m: usize,
    n: usize,
    k: usize,
    a: &[A],
    ta: bool,
    b: &[B],
    tb: bool,
    c: &mut [f32],
    accumulate: bool,
) {
    gemm_with(Kernel::best(), m, n, k, a, ta, b, tb, c, accumulate)
}

/// [`gemm`] with a given kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_with<A: Operand, B: Operand>(
    kernel: Kernel,
    m: usize,
    n: usize,
    k: usize,
    a: &[A],
    ta: bool,
    b: &[B],
    tb: bool,
    c: &mut [f32],
    accumulate: bool,
) {
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), k * n);
    debug_assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    if kernel == Kernel::Widen {
        let (a, b) = (rounded(a), rounded(b));
        super::gemm::gemm(m, n, k, &a, ta, &b, tb, c, accumulate);
        return;
    }
    let av = if ta {
        View { v: a, rs: 1, cs: m }
    } else {
        View { v: a, rs: k, cs: 1 }
    };
    let bv = if tb {
        View { v: b, rs: 1, cs: k }
    } else {
        View { v: b, rs: n, cs: 1 }
    };
    let threads = rayon::current_num_threads();
    let parts = if threads > 1 && m * n * k >= PARALLEL_MIN_WORK {
        threads
    } else {
        1
    };
    // Split the larger output dimension into parts of whole tiles; each part packs its
    // own panels and writes a disjoint block of c.
    let split_rows = m >= n;
    let (mr, nr, _) = kernel.geometry();
    let (dim, tile) = if split_rows { (m, mr) } else { (n, nr) };
    let block = dim.div_ceil(parts).div_ceil(tile) * tile;
    let out = super::gemm::SendPtr(c.as_mut_ptr());
    if parts == 1 || block >= dim {
        // SAFETY: c holds m·n elements.
        unsafe { blocked(kernel, m, n, k, av, 0, 0, bv, out.get(), n, accumulate) };
        return;
    }
    rayon::scope(|s| {
        let mut lo = 0;
        while lo < dim {
            let hi = (lo + block).min(dim);
            s.spawn(move |_| {
                let p = out.get();
                // SAFETY: the parts write disjoint row (or column) ranges of c.
                unsafe {
                    if split_rows {
                        blocked(
                            kernel,
                            hi - lo,
                            n,
                            k,
                            av,
                            lo,
                            0,
                            bv,
                            p.add(lo * n),
                            n,
                            accumulate,
                        );
                    } else {
                        blocked(
                            kernel,
                            m,
                            hi - lo,
                            k,
                            av,
                            0,
                            lo,
                            bv,
                            p.add(lo),
                            n,
                            accumulate,
                        );
                    }
                }
            });
            lo = hi;
        }
    });
}

/// The blocked product of rows `i0..i0+m` of op(a) and columns `j0..j0+n` of op(b) into
/// `c` (leading dimension `ldc`, element (0, 0) first).
///
/// # Safety
/// `kernel` runs on this CPU (not `Widen`); `c` points to an m×n block with leading
/// dimension `ldc` that no one else writes.
#[allow(clippy::too_many_arguments)]
unsafe fn blocked<A: Operand, B: Operand>(
    kernel: Kernel,
    m: usize,
    n: usize,
    k: usize,
    a: View<A>,
    i0: usize,
    j0: usize,
    b: View<B>,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let (mr, nr, kc_max) = kernel.geometry();
    let kp_total = k.div_ceil(2);
    // The packing buffers of this thread, kept between products (no allocation and no
    // page faults per call).
    thread_local! {
        static PACKS: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    let (mut apack, mut bpack) = PACKS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let mut tile = [0f32; TILE];
    let _tiles = (kernel == Kernel::Amx).then(amx::Tiles::configure);
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let ntiles = nc.div_ceil(nr);
        for pc in (0..kp_total).step_by(kc_max) {
            let kc = kc_max.min(kp_total - pc);
            // AMX steps over k in blocks of 16 pairs: pad the panels with zeros.
            let kcp = if kernel == Kernel::Amx {
                kc.div_ceil(16) * 16
            } else {
                kc
            };
            pack_b(&b, nr, pc, kc, kcp, k, j0 + jc, nc, &mut bpack);
            let acc = accumulate || pc > 0;
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                let mtiles = mc.div_ceil(mr);
                if kernel == Kernel::Amx {
                    pack_a_rows(&a, mr, i0 + ic, mc, pc, kc, kcp, k, &mut apack);
                } else {
                    pack_a(&a, mr, i0 + ic, mc, pc, kc, k, &mut apack);
                }
                for jt in 0..ntiles {
                    let bp = &bpack[jt * kcp * nr..(jt + 1) * kcp * nr];
                    let cols = nr.min(nc - jt * nr);
                    for it in 0..mtiles {
                        let ap = &apack[it * kcp * mr..(it + 1) * kcp * mr];
                        let rows = mr.min(mc - it * mr);
                        let c0 = (ic + it * mr) * ldc + jc + jt * nr;
                        // SAFETY: the caller checked the kernel runs here; the panels hold
                        // kcp k-pairs of mr rows and nr columns; rows × cols of c from c0
                        // lie inside the caller's block.
                        unsafe {
                            match kernel {
                                // A whole tile goes straight to c (accumulated in the tiles).
                                Kernel::Amx if rows == mr && cols == nr => {
                                    let (a, b) = (ap.as_ptr(), bp.as_ptr());
                                    amx::kernel(kcp, a, b, c.add(c0), ldc, acc);
                                    continue;
                                }
                                Kernel::Amx => {
                                    let (a, b) = (ap.as_ptr(), bp.as_ptr());
                                    amx::kernel(kcp, a, b, tile.as_mut_ptr(), nr, false);
                                }
                                _ => avx512_kernel(kc, ap.as_ptr(), bp.as_ptr(), &mut tile),
                            }
                            for r in 0..rows {
                                let out = std::slice::from_raw_parts_mut(c.add(c0 + r * ldc), cols);
                                let t = &tile[r * nr..r * nr + cols];
                                if acc {
                                    for (o, v) in out.iter_mut().zip(t) {
                                        *o += v;
                                    }
                                } else {
                                    out.copy_from_slice(t);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    PACKS.with(|p| *p.borrow_mut() = (apack, bpack));
}

/// Packs k-pairs `pc..pc+kc` of columns `j0..j0+nc` of op(b): per `nr`-column panel,
/// per k-pair (`kcp` ≥ `kc` of them), `nr` words each holding (b[2p, j], b[2p+1, j]) as
/// (low, high) halves; columns past `nc`, pairs past `kc` and the k past the end are 0.
#[allow(clippy::too_many_arguments)]
fn pack_b<T: Operand>(
    b: &View<T>,
    nr: usize,
    pc: usize,
    kc: usize,
    kcp: usize,
    k: usize,
    j0: usize,
    nc: usize,
    out: &mut Vec<u32>,
) {
    let ntiles = nc.div_ceil(nr);
    out.clear();
    out.resize(ntiles * kcp * nr, 0);
    let v = b.v;
    for jt in 0..ntiles {
        let cols = nr.min(nc - jt * nr);
        let jb = j0 + jt * nr;
        let panel = &mut out[jt * kcp * nr..(jt + 1) * kcp * nr];
        if b.rs == 1 && b.cs != 1 {
            // op(b) = bᵀ: column j of op(b) is a stored row, its k-pairs adjacent. Read
            // each row in order, write its words down the panel.
            let whole = (2 * (pc + kc)).min(k) - 2 * pc;
            for jj in 0..cols {
                let row = &v[(jb + jj) * b.cs + 2 * pc..(jb + jj) * b.cs + 2 * pc + whole];
                let mut pairs = row.chunks_exact(2);
                for (p, two) in pairs.by_ref().enumerate() {
                    panel[p * nr + jj] = word(two[0], two[1]);
                }
                if let [last] = pairs.remainder() {
                    panel[(whole / 2) * nr + jj] = last.bf16_bits() as u32;
                }
            }
            continue;
        }
        for p in 0..kc {
            let k0 = 2 * (pc + p);
            let row = &mut panel[p * nr..p * nr + cols];
            if b.cs == 1 {
                // Rows k0 and k0+1 are contiguous along j: interleave them.
                let r0 = &v[k0 * b.rs + jb..k0 * b.rs + jb + cols];
                if k0 + 1 < k {
                    let r1 = &v[(k0 + 1) * b.rs + jb..(k0 + 1) * b.rs + jb + cols];
                    for ((w, x), y) in row.iter_mut().zip(r0).zip(r1) {
                        *w = word(*x, *y);
                    }
                } else {
                    for (w, x) in row.iter_mut().zip(r0) {
                        *w = x.bf16_bits() as u32;
                    }
                }
            } else {
                for (jj, w) in row.iter_mut().enumerate() {
                    let j = jb + jj;
                    let lo = b.bits(k0, j) as u32;
                    let hi = if k0 + 1 < k {
                        b.bits(k0 + 1, j) as u32
                    } else {
                        0
                    };
                    *w = lo | (hi << 16);
                }
            }
        }
    }
}

/// The word (a[i, 2p], a[i, 2p+1]) of op(a), the second half 0 past the end of k.
#[inline]
fn pair<T: Operand>(a: &View<T>, i: usize, k0: usize, k: usize) -> u32 {
    let lo = a.bits(i, k0) as u32;
    let hi = if k0 + 1 < k {
        a.bits(i, k0 + 1) as u32
    } else {
        0
    };
    lo | (hi << 16)
}

/// Packs rows `i0..i0+mc` of op(a) over k-pairs `pc..pc+kc` for the AMX kernel: per
/// `mr`-row panel, row by row, `kcp` words (a[i, 2p], a[i, 2p+1]) (a tile row is 16 of
/// them); rows past `mc` and pairs past `kc` are zero.
#[allow(clippy::too_many_arguments)]
fn pack_a_rows<T: Operand>(
    a: &View<T>,
    mr: usize,
    i0: usize,
    mc: usize,
    pc: usize,
    kc: usize,
    kcp: usize,
    k: usize,
    out: &mut Vec<u32>,
) {
    let mtiles = mc.div_ceil(mr);
    out.clear();
    out.resize(mtiles * kcp * mr, 0);
    for it in 0..mtiles {
        let rows = mr.min(mc - it * mr);
        let panel = &mut out[it * kcp * mr..(it + 1) * kcp * mr];
        if a.rs == 1 && a.cs != 1 {
            // op(a) = aᵀ: rows 2p and 2p+1 of the stored a run along i. Read both in
            // order, write each row's word.
            let ib = i0 + it * mr;
            for p in 0..kc {
                let k0 = 2 * (pc + p);
                let r0 = &a.v[k0 * a.cs + ib..k0 * a.cs + ib + rows];
                if k0 + 1 < k {
                    let r1 = &a.v[(k0 + 1) * a.cs + ib..(k0 + 1) * a.cs + ib + rows];
                    for (r, (x, y)) in r0.iter().zip(r1).enumerate() {
                        panel[r * kcp + p] = word(*x, *y);
                    }
                } else {
                    for (r, x) in r0.iter().enumerate() {
                        panel[r * kcp + p] = x.bf16_bits() as u32;
                    }
                }
            }
            continue;
        }
        for r in 0..rows {
            let i = i0 + it * mr + r;
            let words = &mut panel[r * kcp..r * kcp + kc];
            if a.cs == 1 && 2 * (pc + kc) <= k {
                // The pairs are adjacent in the stored row.
                let row = &a.v[i * a.rs + 2 * pc..i * a.rs + 2 * (pc + kc)];
                for (w, two) in words.iter_mut().zip(row.chunks_exact(2)) {
                    *w = word(two[0], two[1]);
                }
            } else {
                for (p, w) in words.iter_mut().enumerate() {
                    *w = pair(a, i, 2 * (pc + p), k);
                }
            }
        }
    }
}

/// Packs rows `i0..i0+mc` of op(a) over k-pairs `pc..pc+kc` for the AVX512 kernel: per
/// `mr`-row panel, per k-pair, `mr` words (a[i, 2p], a[i, 2p+1]); rows past `mc` are 0.
/// That is [`pack_b`]'s layout for op(a)ᵀ, whose columns are op(a)'s rows.
#[allow(clippy::too_many_arguments)]
fn pack_a<T: Operand>(
    a: &View<T>,
    mr: usize,
    i0: usize,
    mc: usize,
    pc: usize,
    kc: usize,
    k: usize,
    out: &mut Vec<u32>,
) {
    let at = View {
        v: a.v,
        rs: a.cs,
        cs: a.rs,
    };
    pack_b(&at, mr, pc, kc, kc, k, i0, mc, out);
}

const MR: usize = 8;
const NR: usize = 48;

/// One 8×48 tile over `kc` k-pairs into `tile` (row-major, stride 48, overwritten).
///
/// # Safety
/// The CPU has AVX512F and AVX512_BF16; `a` holds `kc·8` words and `b` `kc·48`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn avx512_kernel(kc: usize, a: *const u32, b: *const u32, tile: &mut [f32; TILE]) {
    use std::arch::x86_64::*;
    // SAFETY: the bounds are the caller's; __m512i and __m512bh are both 64 bytes.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 3]; MR];
        for p in 0..kc {
            let bp = b.add(p * NR);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp as *const _));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(16) as *const _));
            let b2: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(32) as *const _));
            let ap = a.add(p * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], av, b0);
                row[1] = _mm512_dpbf16_ps(row[1], av, b1);
                row[2] = _mm512_dpbf16_ps(row[2], av, b2);
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let out = tile.as_mut_ptr().add(r * NR);
            _mm512_storeu_ps(out, row[0]);
            _mm512_storeu_ps(out.add(16), row[1]);
            _mm512_storeu_ps(out.add(32), row[2]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn avx512_kernel(_kc: usize, _a: *const u32, _b: *const u32, _tile: &mut [f32; TILE]) {
    unreachable!("AVX512 is not available off x86_64")
}

/// The AMX tile kernel and the OS handshake it needs.
mod amx {

    /// True when the CPU has AMX-TILE and AMX-BF16 and the OS grants the tile state.
    pub(super) fn available() -> bool {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            use std::arch::x86_64::__cpuid_count;
            // CPUID.(7,0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
            let edx = __cpuid_count(7, 0).edx;
            if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
                return false;
            }
            // arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): once per process.
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain syscall with integer arguments.
            unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                ) == 0
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    }

    /// The tile configuration (palette 1): tiles 0–3 accumulate 16×16 f32, tiles 4–5
    /// hold 16 rows of A (16 k-pairs each), tiles 6–7 16 k-pairs of 16 columns of B.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// The tile registers, configured while this lives (released on drop).
    pub(super) struct Tiles;

    impl Tiles {
        pub(super) fn configure() -> Tiles {
            let mut cfg = Config {
                palette: 1,
                start_row: 0,
                reserved: [0; 14],
                colsb: [0; 16],
                rows: [0; 16],
            };
            for t in 0..8 {
                cfg.colsb[t] = 64;
                cfg.rows[t] = 16;
            }
            // SAFETY: only reached when available() granted the tile state.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                std::arch::asm!("ldtilecfg [{}]", in(reg) &cfg as *const Config, options(nostack));
            }
            Tiles
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: the tiles were configured by `configure`.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                std::arch::asm!("tilerelease", options(nostack, nomem));
            }
        }
    }

    /// One 32×32 tile of c over `kcp` k-pairs (a multiple of 16): c[0..16|16..32,
    /// 0..16|16..32] at `c` (row stride `ldc` elements) from the A panel (32 rows of
    /// `kcp` words) and the B panel (`kcp` rows of 32 words), added to what `c` holds
    /// when `load`, else overwriting it.
    ///
    /// # Safety
    /// [`Tiles::configure`] ran on this thread; the panels hold 32·`kcp` words each; `c`
    /// addresses 32 rows of 32 elements at stride `ldc`.
    #[cfg(target_arch = "x86_64")]
    pub(super) unsafe fn kernel(
        kcp: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        load: bool,
    ) {
        use std::arch::asm;
        let a_stride = kcp * 4;
        let sc = ldc * 4;
        let (c00, c01, c10, c11) = (
            c,
            c.wrapping_add(16),
            c.wrapping_add(16 * ldc),
            c.wrapping_add(16 * ldc + 16),
        );
        // SAFETY: every load reads 16 rows of 64 bytes inside the panels or c; the
        // stores write the 32×32 block of c.
        unsafe {
            if load {
                asm!(
                    "tileloadd tmm0, [{c00} + {s}*1]",
                    "tileloadd tmm1, [{c01} + {s}*1]",
                    "tileloadd tmm2, [{c10} + {s}*1]",
                    "tileloadd tmm3, [{c11} + {s}*1]",
                    c00 = in(reg) c00,
                    c01 = in(reg) c01,
                    c10 = in(reg) c10,
                    c11 = in(reg) c11,
                    s = in(reg) sc,
                    options(nostack, readonly)
                );
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            for p in (0..kcp).step_by(16) {
                let a0 = a.add(p);
                let a1 = a.add(16 * kcp + p);
                let b0 = b.add(p * 32);
                let b1 = b.add(p * 32 + 16);
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a1,
                    b0 = in(reg) b0,
                    b1 = in(reg) b1,
                    sa = in(reg) a_stride,
                    sb = in(reg) 128usize,
                    options(nostack, readonly)
                );
            }
            asm!(
                "tilestored [{c00} + {s}*1], tmm0",
                "tilestored [{c01} + {s}*1], tmm1",
                "tilestored [{c10} + {s}*1], tmm2",
                "tilestored [{c11} + {s}*1], tmm3",
                c00 = in(reg) c00,
                c01 = in(reg) c01,
                c10 = in(reg) c10,
                c11 = in(reg) c11,
                s = in(reg) sc,
                options(nostack)
            );
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn kernel(
        _kcp: usize,
        _a: *const u32,
        _b: *const u32,
        _c: *mut f32,
        _ldc: usize,
        _load: bool,
    ) {
        unreachable!("AMX is not available off x86_64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::reduced::{from_bf16, to_bf16};

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    }

    /// f64 reference of op(a)·op(b) on the bf16 values.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        ta: bool,
        b: &[f32],
        tb: bool,
    ) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let x = if ta { a[p * m + i] } else { a[i * k + p] };
                    let y = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += x as f64 * y as f64;
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    #[test]
    fn bf16_product_matches_f64_on_sizes_across_the_block_boundaries() {
        // Sizes straddle the tiles (8×48 and 32×32), the k-pair, AMX's 16-pair step, the
        // packed blocks (512 and 1024 values of k, 128 rows) and odd strides.
        let sizes = [
            (1, 1, 1),
            (3, 17, 5),
            (17, 3, 257),
            (9, 49, 513),
            (33, 31, 1025),
            (129, 97, 33),
            (257, 1, 3),
        ];
        for kernel in Kernel::runnable() {
            for &(m, n, k) in &sizes {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    let a = from_bf16(&to_bf16(&values(m * k, 1)));
                    let b = from_bf16(&to_bf16(&values(k * n, 7)));
                    let want = reference(m, n, k, &a, ta, &b, tb);
                    for accumulate in [false, true] {
                        let mut c = vec![0.5f32; m * n];
                        gemm_with(
                            kernel,
                            m,
                            n,
                            k,
                            &to_bf16(&a),
                            ta,
                            &to_bf16(&b),
                            tb,
                            &mut c,
                            accumulate,
                        );
                        for (idx, (&got, &w)) in c.iter().zip(&want).enumerate() {
                            let w = w + if accumulate { 0.5 } else { 0.0 };
                            // Inputs are exact bf16 and |a|,|b| ≤ 1, so the only error is f32
                            // accumulation: ≤ k·2⁻²³·Σ|ab| ≤ k²·2⁻²³ (plus the 0.5 added).
                            let bound = (k * k) as f64 * 2f64.powi(-23) + 1e-6;
                            assert!(
                                (got as f64 - w).abs() <= bound,
                                "{kernel:?} {m}×{n}×{k} ta={ta} tb={tb} acc={accumulate} at {idx}: {got} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_product_of_f32_data_stays_within_bf16_rounding_of_the_f32_product() {
        let (m, n, k) = (33, 65, 301);
        let (a, b) = (values(m * k, 3), values(k * n, 11));
        let exact = reference(m, n, k, &a, false, &b, false);
        for kernel in Kernel::runnable() {
            let mut c = vec![0f32; m * n];
            gemm_with(
                kernel,
                m,
                n,
                k,
                &to_bf16(&a),
                false,
                &to_bf16(&b),
                false,
                &mut c,
                false,
            );
            // Each operand is rounded by ≤ 2⁻⁹ relative, so each product by ≤ 2⁻⁸:
            // |error| ≤ 2⁻⁸·Σ|a||b| ≤ 2⁻⁸·k.
            let abs_sum = reference(
                m,
                n,
                k,
                &a.iter().map(|x| x.abs()).collect::<Vec<_>>(),
                false,
                &b.iter().map(|x| x.abs()).collect::<Vec<_>>(),
                false,
            );
            for ((&got, &w), &s) in c.iter().zip(&exact).zip(&abs_sum) {
                assert!(
                    (got as f64 - w).abs() <= 2f64.powi(-8) * s + 1e-5,
                    "{kernel:?}: {got} vs {w}"
                );
            }
        }
    }

    #[test]
    fn threaded_bf16_product_equals_the_single_threaded_one() {
        let k = 64;
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        // Rows split (m ≥ n), then columns.
        for (m, n) in [(200, 150), (150, 200)] {
            let (a, b) = (to_bf16(&values(m * k, 5)), to_bf16(&values(k * n, 9)));
            for kernel in Kernel::runnable() {
                let mut c1 = vec![0f32; m * n];
                let mut c3 = vec![0f32; m * n];
                one.install(|| gemm_with(kernel, m, n, k, &a, false, &b, false, &mut c1, false));
                three.install(|| gemm_with(kernel, m, n, k, &a, false, &b, false, &mut c3, false));
                assert_eq!(c1, c3, "{kernel:?}");
            }
        }
    }
}
