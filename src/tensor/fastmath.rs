//! Branch-free f32 elementary functions that the compiler vectorises (libm's `expf` and
//! `erff` are scalar calls): e^x and GELU with its derivative, for the f32 kernels; and
//! the element-wise maps that compile them for the widest vector unit the CPU has
//! (runtime detection; the baseline x86-64 build has SSE2 only).

/// `f` over `x`, compiled for AVX-512 or AVX2 when the CPU has them.
#[inline(always)]
pub(crate) fn map<T: Copy, F: Fn(T) -> T + Copy>(x: &[T], f: F) -> Vec<T> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { map_avx512(x, f) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { map_avx2(x, f) };
        }
    }
    map_loop(x, f)
}

/// `f` over the pairs of `x` and `y`, as [`map`].
#[inline(always)]
pub(crate) fn map2<T: Copy, F: Fn(T, T) -> T + Copy>(x: &[T], y: &[T], f: F) -> Vec<T> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { map2_avx512(x, y, f) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { map2_avx2(x, y, f) };
        }
    }
    map2_loop(x, y, f)
}

// The loops are written out: an iterator's `collect` is compiled outside these
// functions, without their target features, and would call `f` once per element.

/// `f` over `x` into a new vector (inlined into the target-feature functions below).
#[inline(always)]
fn map_loop<T: Copy, F: Fn(T) -> T>(x: &[T], f: F) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(x.len());
    for (o, &v) in out.spare_capacity_mut().iter_mut().zip(x) {
        o.write(f(v));
    }
    // SAFETY: the loop wrote all x.len() elements.
    unsafe { out.set_len(x.len()) };
    out
}

/// `f` over pairs into a new vector of the shorter length.
#[inline(always)]
fn map2_loop<T: Copy, F: Fn(T, T) -> T>(x: &[T], y: &[T], f: F) -> Vec<T> {
    let n = x.len().min(y.len());
    let mut out: Vec<T> = Vec::with_capacity(n);
    for ((o, &a), &b) in out.spare_capacity_mut().iter_mut().zip(x).zip(y) {
        o.write(f(a, b));
    }
    // SAFETY: the loop wrote all n elements.
    unsafe { out.set_len(n) };
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn map_avx512<T: Copy, F: Fn(T) -> T>(x: &[T], f: F) -> Vec<T> {
    map_loop(x, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_avx2<T: Copy, F: Fn(T) -> T>(x: &[T], f: F) -> Vec<T> {
    map_loop(x, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn map2_avx512<T: Copy, F: Fn(T, T) -> T>(x: &[T], y: &[T], f: F) -> Vec<T> {
    map2_loop(x, y, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map2_avx2<T: Copy, F: Fn(T, T) -> T>(x: &[T], y: &[T], f: F) -> Vec<T> {
    map2_loop(x, y, f)
}

/// e^x in f32, within 2 ulp on the range where e^x is a normal f32.
///
/// Range reduction x = n·ln 2 + r with |r| ≤ ln2/2 (ln 2 split in two parts so n·ln 2 is
/// exact), e^r by its degree-7 Taylor polynomial in Horner form (truncation < 2e-9
/// relative on that interval), then 2ⁿ put into the exponent bits.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Rounds to the nearest integer for |t| < 2²²: adding 1.5·2²³ leaves no fraction bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n sits in the low mantissa bits of `shifted` (an integer op, unlike `n as i32`,
    // which is a saturating conversion that does not vectorise).
    let k = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(k.wrapping_add(127) << 23);
    p * scale
}

/// ½·erfc(z) for z ≥ 0 with relative error under 1.2e-7 everywhere (the Chebyshev
/// fit of Press et al., *Numerical Recipes* §6.2, `erfcc`): t·e^(−z² + P(t)) / 2 with
/// t = 1/(1 + z/2).
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn half_erfc(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    0.5 * t * exp(p - z * z)
}

/// (Φ(x), φ(x)): the standard normal CDF and density.
#[inline(always)]
fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let z = x.abs() * INV_SQRT_2;
    let tail = half_erfc(z);
    let cdf = if x < 0.0 { tail } else { 1.0 - tail };
    (cdf, INV_SQRT_2PI * exp(-z * z))
}

/// GELU (exact form) x·Φ(x).
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    x * normal_cdf_pdf(x).0
}

/// GELU′(x) = Φ(x) + x·φ(x).
#[inline(always)]
pub(crate) fn gelu_derivative(x: f32) -> f32 {
    let (cdf, pdf) = normal_cdf_pdf(x);
    cdf + x * pdf
}

#[cfg(test)]
mod tests {
    use crate::tensor::Unary;

    fn grid() -> impl Iterator<Item = f32> {
        (-4000..=4000).map(|i| i as f32 * 0.0025)
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64_exp() {
        for x in (-8700..=8830).map(|i| i as f32 * 0.01) {
            let want = (x as f64).exp();
            let got = super::exp(x) as f64;
            let ulp = f32::EPSILON as f64 * want;
            assert!(
                (got - want).abs() <= 2.0 * ulp,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(-200.0), super::exp(-87.3));
    }

    #[test]
    fn gelu_and_its_derivative_match_the_f64_forms() {
        for x in grid() {
            let (f, d) = (
                Unary::Gelu.apply(x as f64),
                Unary::Gelu.derivative(x as f64),
            );
            let (gf, gd) = (super::gelu(x) as f64, super::gelu_derivative(x) as f64);
            assert!(
                (gf - f).abs() <= 4e-7 * (1.0 + f.abs()),
                "gelu({x}) = {gf}, want {f}"
            );
            assert!(
                (gd - d).abs() <= 4e-7 * (1.0 + d.abs()),
                "gelu'({x}) = {gd}, want {d}"
            );
        }
        // The far left tail keeps its relative accuracy (no 1 − erfc cancellation).
        let (f, g) = (Unary::Gelu.apply(-6.0), super::gelu(-6.0) as f64);
        assert!(((g - f) / f).abs() < 1e-5, "gelu(-6) = {g}, want {f}");
    }
}
