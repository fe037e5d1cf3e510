//! The numeric core: GEMM in every transpose combination against a naive triple loop,
//! sizes across micro-kernel and thread-split boundaries, thread-count invariance,
//! and element-wise kernels against their formulas.

use futureprop::tensor::{DType, Tensor, Unary};

fn det(rows: usize, cols: usize, seed: usize) -> Vec<f64> {
    (0..rows * cols)
        .map(|i| (((i * 2654435761 + seed * 97) % 1000) as f64) / 500.0 - 1.0)
        .collect()
}

/// c = op(a)·op(b) by the definition cᵢⱼ = Σₖ op(a)ᵢₖ op(b)ₖⱼ.
fn naive(a: &[f64], ta: bool, b: &[f64], tb: bool, m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av * bv;
            }
            c[i * n + j] = s;
        }
    }
    c
}

fn check_gemm(m: usize, k: usize, n: usize, dtype: DType) {
    for ta in [false, true] {
        for tb in [false, true] {
            let av = det(m, k, 1);
            let bv = det(k, n, 2);
            let a = Tensor::from_vec_f64(&if ta { [k, m] } else { [m, k] }, av.clone())
                .unwrap()
                .to_dtype(dtype);
            let b = Tensor::from_vec_f64(&if tb { [n, k] } else { [k, n] }, bv.clone())
                .unwrap()
                .to_dtype(dtype);
            let c = a.matmul(ta, &b, tb).unwrap();
            assert_eq!(c.shape(), &[m, n]);
            let want = naive(&a.to_vec_f64(), ta, &b.to_vec_f64(), tb, m, k, n);
            let tol = if dtype == DType::F32 {
                1e-4 * (k as f64).sqrt()
            } else {
                1e-10 * k as f64
            };
            for (i, (x, y)) in c.to_vec_f64().iter().zip(&want).enumerate() {
                assert!(
                    (x - y).abs() <= tol,
                    "{m}x{k}x{n} ta={ta} tb={tb} {dtype:?} [{i}]: {x} vs {y}"
                );
            }
            // Accumulating form: c + op(a)·op(b).
            let mut acc = Tensor::full(&[m, n], 1.0, dtype);
            acc.matmul_acc(&a, ta, &b, tb).unwrap();
            for (x, y) in acc.to_vec_f64().iter().zip(&want) {
                assert!((x - (y + 1.0)).abs() <= tol);
            }
        }
    }
}

#[test]
fn gemm_all_transposes_odd_and_boundary_sizes() {
    let sizes = [1, 3, 7, 16, 17, 33, 65];
    for &m in &sizes {
        for &k in &[1, 17, 64] {
            for &n in &sizes {
                check_gemm(m, k, n, DType::F64);
            }
        }
    }
    check_gemm(257, 31, 129, DType::F32);
    check_gemm(129, 257, 3, DType::F32);
}

#[test]
fn gemm_result_is_identical_at_any_thread_count() {
    // Large enough to be split across threads; splitting the output never changes the
    // order of the k-sum, so results are bit-identical.
    let (m, k, n) = (300, 200, 260);
    let a = Tensor::from_vec_f64(&[m, k], det(m, k, 5))
        .unwrap()
        .to_dtype(DType::F32);
    let b = Tensor::from_vec_f64(&[n, k], det(n, k, 6))
        .unwrap()
        .to_dtype(DType::F32);
    let run = |t: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
            .install(|| a.matmul(false, &b, true).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
    let want = naive(&a.to_vec_f64(), false, &b.to_vec_f64(), true, m, k, n);
    for (x, y) in one.to_vec_f64().iter().zip(&want) {
        assert!((x - y).abs() < 1e-3);
    }
}

#[test]
fn shape_errors_name_the_shapes() {
    let a = Tensor::zeros(&[2, 3], DType::F32);
    let e = a.matmul(false, &a, false).unwrap_err().to_string();
    assert!(
        e.contains("[2, 3]") && e.contains("inner dimensions"),
        "{e}"
    );
    let e = a
        .add(&Tensor::zeros(&[3, 2], DType::F32))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[2, 3]") && e.contains("[3, 2]"), "{e}");
    let e = a
        .matmul(false, &Tensor::zeros(&[3, 1], DType::F64), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dtype"), "{e}");
    assert!(Tensor::from_vec(&[2, 2], vec![1.0; 3]).is_err());
    assert!(Tensor::zeros(&[4], DType::F32).dims2().is_err());
}

#[test]
fn elementwise_kernels_follow_their_formulas() {
    let x = Tensor::from_vec_f64(&[2, 3], vec![-2.0, -0.5, 0.0, 0.5, 1.0, 3.0]).unwrap();
    // relu(x) = max(0, x)
    assert_eq!(
        x.unary(Unary::Relu).to_vec_f64(),
        vec![0.0, 0.0, 0.0, 0.5, 1.0, 3.0]
    );
    // sign and |x|, in f64 and in the f32 fast path
    for d in [DType::F64, DType::F32] {
        let xd = x.to_dtype(d);
        assert_eq!(
            xd.unary(Unary::Sign).to_vec_f64(),
            vec![-1.0, -1.0, 0.0, 1.0, 1.0, 1.0]
        );
        assert_eq!(
            xd.unary(Unary::Abs).to_vec_f64(),
            vec![2.0, 0.5, 0.0, 0.5, 1.0, 3.0]
        );
    }
    // hard sigmoid = clamp(x/6 + 1/2, 0, 1)
    let hs = x.unary(Unary::HardSigmoid).to_vec_f64();
    assert!((hs[0] - (1.0 / 6.0)).abs() < 1e-15 && hs[5] == 1.0);
    // softmax rows sum to one, and are invariant to adding a constant per row
    let s = x.softmax_rows().unwrap().to_vec_f64();
    assert!((s[0..3].iter().sum::<f64>() - 1.0).abs() < 1e-15);
    let shifted =
        Tensor::from_vec_f64(&[2, 3], x.to_vec_f64().iter().map(|v| v + 100.0).collect()).unwrap();
    for (a, b) in s.iter().zip(shifted.softmax_rows().unwrap().to_vec_f64()) {
        assert!((a - b).abs() < 1e-12);
    }
    // cross-entropy of uniform logits over c classes is ln c
    let z = Tensor::zeros(&[4, 5], DType::F64);
    let (l, g) = z.softmax_cross_entropy(&[0, 1, 2, 3]).unwrap();
    assert!((l - 5f64.ln()).abs() < 1e-14);
    // gradient rows: (1/5 − onehot)/4
    assert!((g.get(0).unwrap() - (0.2 - 1.0) / 4.0).abs() < 1e-15);
    assert_eq!(x.argmax_rows().unwrap(), vec![2, 2]);
    assert_eq!(x.sum_rows().unwrap().to_vec_f64(), vec![-1.5, 0.5, 3.0]);
    let mut y = x.clone();
    y.axpby(2.0, -1.0, &x).unwrap();
    assert_eq!(y, x, "2x − x = x");
    assert!(x.transpose().unwrap().transpose().unwrap() == x);
    assert_eq!(x.gather_rows(&[1, 0]).unwrap().to_vec_f64()[0], 0.5);
    assert!(x.gather_rows(&[2]).is_err());
    // Adam ratio: (m/c1)/(√(v/c2)+ε)
    let m = Tensor::from_vec_f64(&[1], vec![0.2]).unwrap();
    let v = Tensor::from_vec_f64(&[1], vec![0.09]).unwrap();
    let r = Tensor::adam_ratio(&m, &v, 0.5, 0.25, 0.0)
        .unwrap()
        .get(0)
        .unwrap();
    assert!((r - 0.4 / 0.6).abs() < 1e-15);
}

#[test]
fn copies_are_independent() {
    // Storage is shared on clone and copied on write.
    let a = Tensor::from_vec(&[2], vec![1.0, 2.0]).unwrap();
    let mut b = a.clone();
    b.scale_in_place(3.0);
    assert_eq!(a.to_vec_f32(), vec![1.0, 2.0]);
    assert_eq!(b.to_vec_f32(), vec![3.0, 6.0]);
}

#[test]
fn f32_tanh_and_sigmoid_agree_with_f64() {
    // The f32 kernels use their own (vectorisable) evaluation; compare with f64 on a grid
    // that covers the saturated tails.
    let xs: Vec<f64> = (-2000..=2000).map(|i| i as f64 * 0.01).collect();
    let x = Tensor::from_vec_f64(&[xs.len()], xs.clone()).unwrap();
    for f in [Unary::Tanh, Unary::Sigmoid] {
        let got = x.to_dtype(DType::F32).unary(f).to_vec_f64();
        for (xi, g) in xs.iter().zip(&got) {
            let want = f.apply(*xi);
            // a few f32 ulps: 3e-7 near ±1, 1e-6 relative near 0
            assert!(
                (g - want).abs() < 3e-7 || (g - want).abs() < 1e-6 * want.abs(),
                "{f:?}({xi}) = {g}, f64 gives {want}"
            );
        }
    }
}

#[test]
fn row_sums_of_squares_and_row_scaling() {
    for dtype in [DType::F32, DType::F64] {
        let t = Tensor::from_vec_f64(&[2, 3], vec![1.0, -2.0, 2.0, 0.5, 0.0, -0.5])
            .unwrap()
            .to_dtype(dtype);
        let s = t.row_sum_sq().unwrap();
        assert!(
            (s[0] - 9.0).abs() < 1e-6 && (s[1] - 0.5).abs() < 1e-6,
            "{s:?}"
        );
        let r = t.scale_rows(&[2.0, -4.0]).unwrap();
        assert_eq!(r.dtype(), dtype);
        assert_eq!(r.to_vec_f64(), vec![2.0, -4.0, 4.0, -2.0, 0.0, 2.0]);
        // The input is untouched and a wrong number of scales is named.
        assert_eq!(t.to_vec_f64()[0], 1.0);
        let e = t.scale_rows(&[1.0]).unwrap_err().to_string();
        assert!(e.contains("scale_rows"), "{e}");
    }
}

#[test]
fn long_elementwise_maps_are_identical_at_any_thread_count() {
    // 100 003 elements: split into chunks on the pool above 65 536, with a ragged tail.
    let n = 100_003;
    let x = Tensor::from_vec_f64(&[n], det(n, 1, 7))
        .unwrap()
        .to_dtype(DType::F32);
    let y = Tensor::from_vec_f64(&[n], det(n, 1, 8))
        .unwrap()
        .to_dtype(DType::F32);
    let run = |t: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
            .install(|| {
                let mut a = y.clone();
                a.axpby(0.9, 0.1, &x).unwrap();
                let mut v = y.clone();
                v.axpby_sq(0.99, 0.01, &x).unwrap();
                let r = Tensor::adam_ratio(&a, &v, 0.5, 0.25, 1e-8).unwrap();
                (a, r.scale(-3.0))
            })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
    let (xv, yv) = (x.to_vec_f64(), y.to_vec_f64());
    let last = n - 1;
    let a = 0.9 * yv[last] + 0.1 * xv[last];
    assert!((one.0.to_vec_f64()[last] - a).abs() < 1e-5);
    let v = 0.99 * yv[last] + 0.01 * xv[last] * xv[last];
    let r = -3.0 * (a / 0.5) / ((v / 0.25).max(0.0).sqrt() + 1e-8);
    assert!((one.1.to_vec_f64()[last] - r).abs() < 1e-3 * r.abs().max(1.0));
}

/// Memory another owner keeps alive and can inspect afterwards (a numpy array's role).
struct Owner(Vec<f32>);

impl AsRef<[f32]> for Owner {
    fn as_ref(&self) -> &[f32] {
        &self.0
    }
}

#[test]
fn a_shared_tensor_reads_in_place_computes_as_an_owned_one_and_copies_before_a_write() {
    use std::sync::Arc;
    let (r, c) = (17, 5);
    let data: Vec<f32> = det(r, c, 3).into_iter().map(|v| v as f32).collect();
    let owner = Arc::new(Owner(data.clone()));
    let shared = Tensor::from_shared_f32(&[r, c], owner.clone()).unwrap();
    let owned = Tensor::from_vec(&[r, c], data.clone()).unwrap();
    assert!(shared.is_shared() && !owned.is_shared());
    assert_eq!(shared.dtype(), DType::F32);
    assert_eq!(shared, owned);
    // Reads (a gather, a product, an element-wise map) give what the owned tensor gives.
    let idx = [16, 0, 3, 3];
    assert_eq!(
        shared.gather_rows(&idx).unwrap(),
        owned.gather_rows(&idx).unwrap()
    );
    let w = Tensor::from_vec(&[c, 3], (0..c * 3).map(|i| i as f32 * 0.1).collect()).unwrap();
    assert_eq!(
        shared.matmul(false, &w, false).unwrap(),
        owned.matmul(false, &w, false).unwrap()
    );
    assert_eq!(shared.unary(Unary::Tanh), owned.unary(Unary::Tanh));
    assert!(shared.is_shared(), "reading does not copy");
    assert_eq!(shared.as_f32().unwrap().as_ptr(), owner.0.as_ptr());
    // A write goes to a copy: the owner's memory is never written.
    let mut written = shared.clone();
    written.axpy(2.0, &owned).unwrap();
    assert!(!written.is_shared() && shared.is_shared());
    assert_eq!(owner.0, data);
    assert_eq!(written, owned.scale(3.0));
    let mut set = shared.clone();
    set.set(0, 7.0).unwrap();
    assert_eq!(owner.0[0], data[0]);
    // Wrong sizes are refused.
    assert!(Tensor::from_shared_f32(&[r, c + 1], owner).is_err());
}
