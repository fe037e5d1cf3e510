//! Reduced-precision element types, bf16 and f16: conversions to and from f32.
//!
//! Both compute in f32 (as `torch.autocast` does): a kernel without its own reduced
//! path widens its operands to f32, runs the f32 kernel and, when its output keeps the
//! input's type, rounds back. Only the matrix product has a bf16 path of its own
//! ([`super::bf16_gemm`]).
//!
//! bf16 (1 sign, 8 exponent, 7 mantissa bits) is the top half of an f32: widening is a
//! shift and rounding is round-to-nearest-even on the low 16 bits, with subnormals kept
//! (same exponent range as f32). f16 (5 exponent, 10 mantissa bits) goes through the
//! `half` crate, which uses the F16C instructions where the CPU has them.

use std::borrow::Cow;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use super::backend::BackendStorage;
use super::{DType, HostStorage};

/// f32 → bf16 bits, round to nearest, ties to even; NaN stays a (quiet) NaN.
#[inline]
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        ((b >> 16) | 0x0040) as u16
    } else {
        // Adding 0x7fff plus the kept lowest bit rounds half-way cases to even; a carry
        // out of the mantissa moves to the exponent (to ∞ past the largest finite).
        ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// f32 → bf16 element by element (a loop the compiler vectorises).
pub(crate) fn to_bf16(src: &[f32]) -> Vec<bf16> {
    src.iter().map(|&x| bf16::from_bits(bf16_bits(x))).collect()
}

/// bf16 → f32: exact (the bf16 bits are the top half of the f32).
pub(crate) fn from_bf16(src: &[bf16]) -> Vec<f32> {
    src.iter()
        .map(|h| f32::from_bits((h.to_bits() as u32) << 16))
        .collect()
}

/// f32 → f16, round to nearest even (overflow to ±∞, subnormals kept).
pub(crate) fn to_f16(src: &[f32]) -> Vec<f16> {
    let mut out = vec![f16::ZERO; src.len()];
    out.convert_from_f32_slice(src);
    out
}

/// f16 → f32: exact.
pub(crate) fn from_f16(src: &[f16]) -> Vec<f32> {
    let mut out = vec![0.0; src.len()];
    src.convert_to_f32_slice(&mut out);
    out
}

/// The elements of an f32, bf16 or f16 storage as f32 (borrowed for f32, widened for the
/// reduced types); `None` for f64, which never mixes with them.
pub(crate) fn f32_view(s: &HostStorage) -> Option<Cow<'_, [f32]>> {
    match s {
        HostStorage::F32(v) => Some(Cow::Borrowed(v)),
        HostStorage::BF16(v) => Some(Cow::Owned(from_bf16(v))),
        HostStorage::F16(v) => Some(Cow::Owned(from_f16(v))),
        HostStorage::F64(_) => None,
    }
}

/// A reduced storage widened to f32 (a copy for f32; f64 is narrowed, never reached by
/// the kernels that call this).
pub(crate) fn widen(s: &HostStorage) -> Vec<f32> {
    match s {
        HostStorage::F32(v) => v.to_vec(),
        HostStorage::BF16(v) => from_bf16(v),
        HostStorage::F16(v) => from_f16(v),
        HostStorage::F64(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

/// f32 values stored as `dtype` (rounded for bf16 and f16).
pub(crate) fn narrow(dtype: DType, v: Vec<f32>) -> HostStorage {
    match dtype {
        DType::F32 => HostStorage::F32(v.into()),
        DType::BF16 => HostStorage::BF16(to_bf16(&v)),
        DType::F16 => HostStorage::F16(to_f16(&v)),
        DType::F64 => HostStorage::F64(v.iter().map(|&x| x as f64).collect()),
    }
}

/// Runs `f` on the elements of an f32-computing storage as f32, writing a reduced
/// storage back rounded. The caller has ruled out f64.
pub(crate) fn with_f32_mut<R>(s: &mut HostStorage, f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    match s {
        HostStorage::F32(v) => f(v.vec_mut()),
        other => {
            let dtype = other.dtype();
            let mut w = widen(other);
            let r = f(&mut w);
            *other = narrow(dtype, w);
            r
        }
    }
}

/// `c (+)= op(a) · op(b)` with f32 output when an operand is bf16 or f16 and the other
/// is f32 or of the same type. bf16 runs the bf16 kernel (an f32 operand is rounded to
/// bf16 as it is packed, as `torch.autocast` casts it); f16 is widened to f32. False
/// (nothing written) when f64 takes part or bf16 meets f16.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mixed_gemm(
    (m, k, n): (usize, usize, usize),
    a: &HostStorage,
    ta: bool,
    b: &HostStorage,
    tb: bool,
    c: &mut [f32],
    accumulate: bool,
) -> bool {
    use super::bf16_gemm::gemm;
    if k == 0 && !accumulate {
        c.fill(0.0);
    }
    match (a, b) {
        (HostStorage::BF16(x), HostStorage::BF16(y)) => gemm(m, n, k, x, ta, y, tb, c, accumulate),
        (HostStorage::BF16(x), HostStorage::F32(y)) => gemm(m, n, k, x, ta, y, tb, c, accumulate),
        (HostStorage::F32(x), HostStorage::BF16(y)) => gemm(m, n, k, x, ta, y, tb, c, accumulate),
        (HostStorage::F16(_), HostStorage::F16(_) | HostStorage::F32(_))
        | (HostStorage::F32(_), HostStorage::F16(_)) => match (f32_view(a), f32_view(b)) {
            (Some(x), Some(y)) => super::gemm::gemm(m, n, k, &x, ta, &y, tb, c, accumulate),
            _ => return false,
        },
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    // A sweep of f32 bit patterns: every exponent, mantissas around the rounding point.
    fn patterns() -> Vec<u32> {
        let mut v = Vec::new();
        for sign in [0u32, 1] {
            for exp in 0..=255u32 {
                for low in [
                    0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff, 0x1_0000, 0x1_8000, 0x7f_ffff,
                    0x12_3456,
                ] {
                    v.push((sign << 31) | (exp << 23) | (low & 0x7f_ffff));
                }
            }
        }
        v
    }

    #[test]
    fn bf16_rounding_matches_the_half_crate_on_every_exponent() {
        for b in patterns() {
            let x = f32::from_bits(b);
            let ours = bf16_bits(x);
            let theirs = bf16::from_f32(x).to_bits();
            assert_eq!(ours, theirs, "x = {x:e} (bits {b:#010x})");
        }
    }

    #[test]
    fn bf16_rounds_ties_to_even_keeps_subnormals_and_specials() {
        // 1 + 2⁻⁸ is half-way between bf16 neighbours 1 and 1 + 2⁻⁷: ties go to the even one (1).
        assert_eq!(bf16_bits(1.0 + 2f32.powi(-8)), bf16_bits(1.0));
        // 1 + 3·2⁻⁸ is half-way between 1 + 2⁻⁷ and 1 + 2⁻⁶: ties go to even (1 + 2⁻⁶).
        let up = f32::from_bits((bf16_bits(1.0 + 2f32.powi(-6)) as u32) << 16);
        assert_eq!(from_bf16(&to_bf16(&[1.0 + 3.0 * 2f32.powi(-8)]))[0], up);
        // The smallest f32 subnormal rounds to 0; 2⁻¹³³ (a bf16 subnormal) is exact.
        assert_eq!(from_bf16(&to_bf16(&[f32::from_bits(1)]))[0], 0.0);
        let sub = 2f32.powi(-133);
        assert_eq!(from_bf16(&to_bf16(&[sub]))[0], sub);
        // Past the largest finite bf16 rounds to ∞; ∞ and NaN survive.
        let back = from_bf16(&to_bf16(&[
            f32::MAX,
            f32::INFINITY,
            -f32::INFINITY,
            f32::NAN,
        ]));
        assert_eq!(back[0], f32::INFINITY);
        assert_eq!(back[1], f32::INFINITY);
        assert_eq!(back[2], -f32::INFINITY);
        assert!(back[3].is_nan());
    }

    #[test]
    fn reduced_round_trips_are_exact_on_representable_values_and_within_half_an_ulp() {
        // Every bf16 value widens and narrows back to itself.
        for bits in (0..=u16::MAX).step_by(7) {
            let h = bf16::from_bits(bits);
            if h.is_nan() {
                continue;
            }
            assert_eq!(to_bf16(&from_bf16(&[h]))[0].to_bits(), bits);
        }
        // Relative rounding error of normal values ≤ 2⁻⁸ (bf16) and 2⁻¹¹ (f16).
        let xs: Vec<f32> = (1..2000)
            .map(|i| (i as f32 * 0.731).sin() * 100.0)
            .collect();
        for (x, y) in xs.iter().zip(from_bf16(&to_bf16(&xs))) {
            assert!((x - y).abs() <= x.abs() * 2f32.powi(-8), "{x} -> {y}");
        }
        for (x, y) in xs.iter().zip(from_f16(&to_f16(&xs))) {
            assert!((x - y).abs() <= x.abs() * 2f32.powi(-11), "{x} -> {y}");
        }
        // f16: 65504 is its largest finite value, 65520 rounds to ∞, 2⁻²⁴ is its
        // smallest subnormal.
        let f = from_f16(&to_f16(&[65504.0, 65520.0, 2f32.powi(-24), 2f32.powi(-26)]));
        assert_eq!(f, vec![65504.0, f32::INFINITY, 2f32.powi(-24), 0.0]);
    }
}
