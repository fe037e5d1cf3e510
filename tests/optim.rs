//! One table of tests for every optimizer: convergence on an ill-conditioned quadratic
//! and on Rosenbrock's function, no NaN on zero gradients, state round trips, and
//! two-step numeric fixtures. θ₀ = [0.5, −1.5, 2], gradients g₁ = [0.1, −0.2, 0.3],
//! g₂ = [−0.4, 0.5, 0.6], float64. Fixture sources:
//! - PyTorch 2.15 `torch.optim` (SGD, Adam, AdamW, RMSprop, Adagrad, NAdam): `p.grad = g;
//!   opt.step()` twice under `torch.set_default_dtype(torch.float64)`;
//! - Lion, LARS, LAMB (not in torch.optim): an independent NumPy transcription of the
//!   papers' update equations, run once:
//!   Lion  c = β₁m + (1−β₁)g; θ −= η(sign c + λθ); m = β₂m + (1−β₂)g;
//!   LARS  u = g + λθ; u ·= c‖θ‖/‖u‖; b = μb + u; θ −= ηb;
//!   LAMB  r = m̂/(√v̂ + ε) + λθ; θ −= η(‖θ‖/‖r‖)r.

use futureprop::nn::{Grads, Params};
use futureprop::optim::{
    Objective, OptimizerConfig, REGISTRY, Schedule, StepContext, build_optimizer,
};
use futureprop::tensor::Tensor;

/// Optimizers that read a network's trace (per-layer inputs and errors); tested in
/// tests/curvature.rs and tests/kfac.rs.
const NEEDS_TRACE: &[&str] = &["natgrad", "kfac"];

fn cfg(name: &str, lr: f64) -> OptimizerConfig {
    OptimizerConfig::new(name, lr)
}

fn params(v: &[f64]) -> Params {
    let mut p = Params::new();
    p.insert("w", Tensor::from_vec_f64(&[v.len()], v.to_vec()).unwrap());
    p
}

/// (label, config, θ after two steps, tolerance)
fn fixtures() -> Vec<(&'static str, OptimizerConfig, [f64; 3], f64)> {
    let wd = |mut c: OptimizerConfig| {
        c.weight_decay = 0.01;
        c
    };
    let clip = |mut c: OptimizerConfig| {
        c.clip_norm = Some(0.5);
        c
    };
    vec![
        ("sgd", cfg("sgd", 0.1), [0.53, -1.53, 1.91], 1e-12),
        (
            "sgd + L2 0.01",
            wd(cfg("sgd", 0.1)),
            [0.5290105, -1.5270215, 1.906032],
            1e-12,
        ),
        (
            "momentum 0.9",
            cfg("momentum", 0.1),
            [0.521, -1.512, 1.883],
            1e-12,
        ),
        (
            "nesterov 0.9",
            cfg("nesterov", 0.1),
            [0.5488999999999999, -1.5408, 1.8047],
            1e-12,
        ),
        (
            "adam",
            cfg("adam", 0.1),
            [0.4559503574851284, -1.444221530217233, 1.8034818027856336],
            1e-12,
        ),
        (
            "adam + L2 0.01",
            wd(cfg("adam", 0.1)),
            [0.45476529206769234, -1.4409605477168215, 1.8031311908531402],
            1e-12,
        ),
        (
            "adamw 0.01",
            wd(cfg("adamw", 0.1)),
            [0.4550508574751284, -1.4413230302122328, 1.7995838027823003],
            1e-12,
        ),
        // PyTorch's clip_grad_norm_ divides by ‖g‖ + 1e-6; we divide by ‖g‖ exactly.
        (
            "sgd + clip 0.5",
            clip(cfg("sgd", 0.1)),
            [0.5127920893179312, -1.508490111647414, 1.9358118660231032],
            1e-6,
        ),
        (
            "rmsprop lr 0.01",
            cfg("rmsprop", 0.01),
            [0.49704287266865177, -1.4929118010156806, 1.8104677504862046],
            1e-12,
        ),
        (
            "rmsprop centred, momentum 0.9, lr 0.01",
            cfg("rmsprop", 0.01)
                .with("centered", true)
                .with("momentum", 0.9),
            [0.40634556459129023, -1.4021013124504371, 1.7186976243423462],
            1e-12,
        ),
        (
            "adagrad eps 1e-10",
            cfg("adagrad", 0.1).with("eps", 1e-10),
            [0.49701425009100375, -1.4928476691212844, 1.810557280946675],
            1e-12,
        ),
        (
            "nadam",
            cfg("nadam", 0.1),
            [0.4942068304334792, -1.4890441286259273, 1.7980600926872827],
            1e-12,
        ),
        (
            "lion wd 0.01",
            wd(cfg("lion", 0.1)),
            [0.49910050000000006, -1.4971015, 1.7961019999999999],
            1e-12,
        ),
        (
            "lars wd 0.01 trust 0.5",
            wd(cfg("lars", 0.1)).with("trust_coefficient", 0.5),
            [0.4907349704178162, -1.436484903135428, 1.72087705837925],
            1e-12,
        ),
        (
            "lamb wd 0.01",
            wd(cfg("lamb", 0.1)),
            [0.46076164178251566, -1.4348726484015, 1.66296891086426],
            1e-12,
        ),
    ]
}

#[test]
fn two_step_fixtures_match_pytorch() {
    let g = [[0.1, -0.2, 0.3], [-0.4, 0.5, 0.6]];
    for (label, c, want, tol) in fixtures() {
        let mut opt = build_optimizer(&c, 100).unwrap();
        let mut p = params(&[0.5, -1.5, 2.0]);
        for gk in &g {
            opt.step(&mut p, &params(gk), &mut StepContext::empty())
                .unwrap();
        }
        let got = p.get("w").unwrap().to_vec_f64();
        for (a, b) in got.iter().zip(want) {
            assert!(
                (a - b).abs() <= tol,
                "{label}: got {got:?}, PyTorch {want:?}"
            );
        }
    }
}

type F = fn(&[f64]) -> (f64, Vec<f64>);
type Gn = fn(&[f64], &[f64]) -> Vec<f64>;

/// A differentiable test function of θ ∈ ℝⁿ with its Gauss–Newton and Hessian products,
/// usable as the step's objective (SAM, L-BFGS, Hessian-free, Sophia). Each function is a
/// sum of squared residuals f = Σ rₖ(θ)², so G = 2JᵀJ.
struct Fun(F, Gn, Gn);

impl Objective for Fun {
    fn evaluate(&mut self, p: &Params) -> futureprop::Result<(f64, Grads)> {
        let (f, g) = (self.0)(&p.get("w")?.to_vec_f64());
        Ok((f, params(&g)))
    }

    fn gauss_newton_vector(&mut self, p: &Params, v: &Params) -> futureprop::Result<Grads> {
        Ok(params(&(self.1)(
            &p.get("w")?.to_vec_f64(),
            &v.get("w")?.to_vec_f64(),
        )))
    }

    fn hessian_vector(&mut self, p: &Params, v: &Params) -> futureprop::Result<Grads> {
        Ok(params(&(self.2)(
            &p.get("w")?.to_vec_f64(),
            &v.get("w")?.to_vec_f64(),
        )))
    }
}

/// H·v of Rosenbrock: H = [[2 − 400(y − x²) + 800x², −400x], [−400x, 200]].
fn rosenbrock_hv(t: &[f64], v: &[f64]) -> Vec<f64> {
    let (x, y) = (t[0], t[1]);
    let (a, b, c) = (2.0 - 400.0 * (y - x * x) + 800.0 * x * x, -400.0 * x, 200.0);
    vec![a * v[0] + b * v[1], b * v[0] + c * v[1]]
}

/// G·v of the quadratic below: diag(a)·v.
fn quadratic_gn(_: &[f64], v: &[f64]) -> Vec<f64> {
    let a = [0.5, 1.0, 2.0, 4.0];
    (0..4).map(|i| a[i] * v[i]).collect()
}

/// G·v of Rosenbrock's residuals r = (1 − x, 10(y − x²)), J = [[−1, 0], [−20x, 10]].
fn rosenbrock_gn(t: &[f64], v: &[f64]) -> Vec<f64> {
    let j = [[-1.0, 0.0], [-20.0 * t[0], 10.0]];
    let jv = [
        j[0][0] * v[0] + j[0][1] * v[1],
        j[1][0] * v[0] + j[1][1] * v[1],
    ];
    vec![
        2.0 * (j[0][0] * jv[0] + j[1][0] * jv[1]),
        2.0 * (j[0][1] * jv[0] + j[1][1] * jv[1]),
    ]
}

fn identity_gn(_: &[f64], v: &[f64]) -> Vec<f64> {
    v.to_vec()
}

/// f(θ) = ½ Σ aᵢ(θᵢ − cᵢ)², ∇f = a ⊙ (θ − c); ill-conditioned (a from 0.5 to 4).
fn quadratic(th: &[f64]) -> (f64, Vec<f64>) {
    let (a, c) = ([0.5, 1.0, 2.0, 4.0], [1.0, -2.0, 0.5, 3.0]);
    let f = (0..4).map(|i| 0.5 * a[i] * (th[i] - c[i]).powi(2)).sum();
    (f, (0..4).map(|i| a[i] * (th[i] - c[i])).collect())
}

/// f(θ) = ½‖θ‖².
fn half_square(t: &[f64]) -> (f64, Vec<f64>) {
    (0.5 * t.iter().map(|x| x * x).sum::<f64>(), t.to_vec())
}

/// Rosenbrock: f = (1 − x)² + 100(y − x²)², minimum at (1, 1).
fn rosenbrock(t: &[f64]) -> (f64, Vec<f64>) {
    let (x, y) = (t[0], t[1]);
    let f = (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2);
    (
        f,
        vec![
            -2.0 * (1.0 - x) - 400.0 * x * (y - x * x),
            200.0 * (y - x * x),
        ],
    )
}

fn minimise(conf: &OptimizerConfig, f: F, gn: Gn, hv: Gn, start: &[f64], steps: u64) -> Vec<f64> {
    let mut opt = build_optimizer(conf, steps).unwrap();
    let mut p = params(start);
    let mut obj = Fun(f, gn, hv);
    for _ in 0..steps {
        let (_, g) = f(&p.get("w").unwrap().to_vec_f64());
        let mut ctx = StepContext {
            trace: None,
            objective: Some(&mut obj),
            reducer: None,
        };
        opt.step(&mut p, &params(&g), &mut ctx).unwrap();
    }
    p.get("w").unwrap().to_vec_f64()
}

/// Settings per optimizer for the convergence table (cosine decay to 0 for all that
/// take a schedule; L-BFGS and Hessian-free choose their own step).
fn tuned(name: &str, lr: f64) -> OptimizerConfig {
    let mut c = cfg(name, lr);
    let spec = futureprop::optim::spec(name).unwrap();
    if spec.wraps || spec.reads.contains(&"schedule") {
        c.schedule = "cosine".into();
    }
    match name {
        "lars" => c.with("trust_coefficient", 0.02),
        "lamb" => c.with("trust_coefficient", 0.05),
        // SAM minimises the worst loss within radius ρ, whose minimiser is not the
        // function's in a curved valley; a small ρ keeps the two close.
        "sam" | "asam" => c.with("rho", 1e-3),
        // A frozen variance suits a gradient scale that has settled (Tang et al. 2021);
        // in Rosenbrock's valley it settles late.
        "onebit_adam" => c.with("freeze_step", 10_000),
        _ => c,
    }
}

#[test]
fn every_optimizer_converges_on_an_ill_conditioned_quadratic() {
    let c = [1.0, -2.0, 0.5, 3.0];
    for name in REGISTRY
        .iter()
        .map(|s| s.name)
        .filter(|n| !NEEDS_TRACE.contains(n))
    {
        let lr = match name {
            "adam" | "adamw" | "nadam" | "lion" => 0.05,
            "lars" | "lamb" | "hf" | "lbfgs" => 1.0,
            "adagrad" => 0.5,
            _ => 0.1,
        };
        let steps = if matches!(name, "hf" | "lbfgs") {
            100
        } else {
            3000
        };
        let th = minimise(
            &tuned(name, lr),
            quadratic,
            quadratic_gn,
            quadratic_gn,
            &[0.0; 4],
            steps,
        );
        let err = th
            .iter()
            .zip(c)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-3, "{name}: θ = {th:?}, optimum {c:?}");
    }
}

#[test]
fn every_optimizer_reaches_the_rosenbrock_minimum() {
    for name in REGISTRY
        .iter()
        .map(|s| s.name)
        .filter(|n| !NEEDS_TRACE.contains(n))
    {
        let lr = match name {
            "momentum" | "nesterov" => 2e-4,
            "hf" | "lbfgs" => 1.0,
            "adam" | "adamw" | "nadam" | "rmsprop" | "lion" | "onebit_adam" => 0.01,
            "adagrad" | "lars" | "lamb" => 0.5,
            _ => 1e-3,
        };
        let steps = if matches!(name, "hf" | "lbfgs") {
            200
        } else {
            40_000
        };
        let th = minimise(
            &tuned(name, lr),
            rosenbrock,
            rosenbrock_gn,
            rosenbrock_hv,
            &[-1.0, 1.5],
            steps,
        );
        let err = (th[0] - 1.0).abs().max((th[1] - 1.0).abs());
        assert!(err < 2e-2, "{name}: θ = {th:?}, minimum (1, 1)");
    }
}

#[test]
fn no_optimizer_produces_nan_on_zero_gradients() {
    // natgrad needs a network's trace; it has its own tests in tests/curvature.rs.
    for name in REGISTRY
        .iter()
        .map(|s| s.name)
        .filter(|n| !NEEDS_TRACE.contains(n))
    {
        let mut opt = build_optimizer(&cfg(name, 0.1), 10).unwrap();
        let mut p = params(&[0.5, -1.5, 2.0]);
        let mut obj = Fun(
            |_| (0.0, vec![0.0; 3]),
            |_, v| vec![0.0; v.len()],
            |_, v| vec![0.0; v.len()],
        );
        for _ in 0..3 {
            let mut ctx = StepContext {
                trace: None,
                objective: Some(&mut obj),
                reducer: None,
            };
            opt.step(&mut p, &params(&[0.0; 3]), &mut ctx).unwrap();
        }
        assert!(p.get("w").unwrap().all_finite(), "{name}");
        assert_eq!(
            p.get("w").unwrap().to_vec_f64(),
            vec![0.5, -1.5, 2.0],
            "{name}: a zero gradient moves nothing"
        );
    }
}

#[test]
fn amsgrad_uses_the_largest_second_moment() {
    // A large gradient then a small one: v shrinks, AMSGrad keeps the maximum.
    // PyTorch 2.15: torch.optim.Adam(lr=0.1, amsgrad=True), g₁ = [1, −2, 3], g₂ = [0.01, 0.02, −0.03].
    let want = [0.33228355101282037, -1.3337718236707254, 1.8337718233479965];
    let mut opt = build_optimizer(&cfg("adam", 0.1).with("amsgrad", true), 10).unwrap();
    let mut p = params(&[0.5, -1.5, 2.0]);
    for g in [[1.0, -2.0, 3.0], [0.01, 0.02, -0.03]] {
        opt.step(&mut p, &params(&g), &mut StepContext::empty())
            .unwrap();
    }
    for (a, b) in p.get("w").unwrap().to_vec_f64().iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
fn sam_with_zero_radius_is_its_inner_optimizer_and_needs_an_objective() {
    let g = params(&[0.1, -0.2, 0.3]);
    for name in ["sam", "asam"] {
        let conf = cfg(name, 0.1).with("rho", 0.0).with("inner", "adam");
        let mut sam = build_optimizer(&conf, 10).unwrap();
        let mut adam = build_optimizer(&cfg("adam", 0.1), 10).unwrap();
        let (mut p, mut q) = (params(&[0.5, -1.5, 2.0]), params(&[0.5, -1.5, 2.0]));
        let mut obj = Fun(half_square, identity_gn, identity_gn);
        sam.step(
            &mut p,
            &g,
            &mut StepContext {
                trace: None,
                objective: Some(&mut obj),
                reducer: None,
            },
        )
        .unwrap();
        adam.step(&mut q, &g, &mut StepContext::empty()).unwrap();
        assert_eq!(p, q, "{name}");
        let mut sam = build_optimizer(&cfg(name, 0.1), 10).unwrap();
        let e = sam
            .step(&mut p, &g, &mut StepContext::empty())
            .unwrap_err()
            .to_string();
        assert!(e.contains("objective"), "{e}");
    }
    // With ρ > 0 SAM steps with the gradient at θ + ρg/‖g‖; for f = ½‖θ‖² that gradient is θ + ρg/‖g‖.
    let conf = cfg("sam", 1.0).with("rho", 0.5).with("inner", "sgd");
    let mut sam = build_optimizer(&conf, 10).unwrap();
    let mut p = params(&[3.0, 4.0, 0.0]);
    let mut obj = Fun(half_square, identity_gn, identity_gn);
    sam.step(
        &mut p,
        &params(&[3.0, 4.0, 0.0]),
        &mut StepContext {
            trace: None,
            objective: Some(&mut obj),
            reducer: None,
        },
    )
    .unwrap();
    // g = (3, 4, 0), ‖g‖ = 5, θ + ε = (3.3, 4.4, 0), θ ← θ − 1·(3.3, 4.4, 0).
    let got = p.get("w").unwrap().to_vec_f64();
    assert!(
        (got[0] + 0.3).abs() < 1e-12 && (got[1] + 0.4).abs() < 1e-12,
        "{got:?}"
    );
    assert!(build_optimizer(&cfg("sam", 0.1).with("inner", "sam"), 1).is_err());
}

#[test]
fn restart_and_one_cycle_schedules_match_pytorch() {
    // torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(T_0=10, T_mult=2), lr 1.
    let s = Schedule::parse("cosine-restarts:10:2", 100).unwrap();
    for (k, want) in [
        (0, 1.0),
        (5, 0.5),
        (10, 1.0),
        (20, 0.5),
        (29, 0.006155829702),
        (30, 1.0),
        (35, 0.961939766256),
    ] {
        assert!(
            (s.factor(k) - want).abs() < 1e-9,
            "sgdr step {k}: {} vs {want}",
            s.factor(k)
        );
    }
    // torch.optim.lr_scheduler.OneCycleLR(max_lr=1, total_steps=100, pct_start=0.3).
    let s = Schedule::parse("one-cycle:0.3", 100).unwrap();
    for (k, want) in [
        (0, 0.04),
        (15, 0.5459866761210004),
        (29, 1.0),
        (30, 0.9994965352845243),
        (60, 0.5892800902855287),
        (99, 4e-6),
    ] {
        assert!(
            (s.factor(k) - want).abs() < 1e-9,
            "one-cycle step {k}: {} vs {want}",
            s.factor(k)
        );
    }
}

#[test]
fn state_round_trip_continues_identically() {
    // Saving state after one step and loading it into a fresh optimizer gives the same
    // second step as never stopping.
    let g1 = params(&[0.1, -0.2, 0.3]);
    let g2 = params(&[-0.4, 0.5, 0.6]);
    for (label, c, _, _) in fixtures() {
        let mut a = build_optimizer(&c, 100).unwrap();
        let mut pa = params(&[0.5, -1.5, 2.0]);
        a.step(&mut pa, &g1, &mut StepContext::empty()).unwrap();
        let mut b = build_optimizer(&c, 100).unwrap();
        b.load_state(&a.state()).unwrap();
        let mut pb = pa.clone();
        a.step(&mut pa, &g2, &mut StepContext::empty()).unwrap();
        b.step(&mut pb, &g2, &mut StepContext::empty()).unwrap();
        assert_eq!(pa, pb, "{label}");
    }
}

#[test]
fn parameters_without_gradient_are_untouched() {
    let mut p = params(&[1.0, 2.0, 3.0]);
    p.insert(
        "frozen",
        Tensor::from_vec_f64(&[2], vec![5.0, 6.0]).unwrap(),
    );
    let mut opt = build_optimizer(&cfg("adam", 0.1), 10).unwrap();
    opt.step(&mut p, &params(&[1.0, 1.0, 1.0]), &mut StepContext::empty())
        .unwrap();
    assert_eq!(p.get("frozen").unwrap().to_vec_f64(), vec![5.0, 6.0]);
}

#[test]
fn schedules_follow_their_formulas() {
    let s = Schedule::parse("step:10:0.5", 100).unwrap();
    assert_eq!(
        (s.factor(0), s.factor(9), s.factor(10), s.factor(25)),
        (1.0, 1.0, 0.5, 0.25)
    );
    let s = Schedule::parse("cosine", 100).unwrap();
    assert_eq!(s.factor(0), 1.0);
    assert!((s.factor(50) - 0.5).abs() < 1e-12);
    assert!(s.factor(100).abs() < 1e-12);
    let s = Schedule::parse("warmup:4,constant", 100).unwrap();
    assert_eq!(
        (s.factor(0), s.factor(1), s.factor(3), s.factor(50)),
        (0.25, 0.5, 1.0, 1.0)
    );
    // η₀/(1 + k/τ)
    let s = Schedule::parse("robbins-monro:10", 100).unwrap();
    assert_eq!((s.factor(0), s.factor(10), s.factor(30)), (1.0, 0.5, 0.25));
    let s = Schedule::parse("warmup:10,cosine:0.1", 110).unwrap();
    assert!((s.factor(10) - 1.0).abs() < 1e-12 && (s.factor(110) - 0.1).abs() < 1e-12);
    for bad in ["cosine:x", "step:0:0.5", "linear", "robbins-monro:-1"] {
        assert!(
            Schedule::parse(bad, 10).is_err(),
            "{bad} should be rejected"
        );
    }
}

#[test]
fn bad_hyperparameters_are_rejected_with_names() {
    let e = build_optimizer(&cfg("adagrad2", 0.1), 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("unknown optimizer 'adagrad2'") && e.contains("adamw"),
        "{e}"
    );
    let e = build_optimizer(&cfg("sgd", -1.0), 1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("invalid lr: -1") && e.contains("> 0"), "{e}");
    for (conf, want) in [
        (cfg("adam", 0.1).with("beta2", 1.0), "invalid beta2: 1"),
        (
            OptimizerConfig {
                weight_decay: f64::NAN,
                ..cfg("sgd", 0.1)
            },
            "invalid weight_decay (--weight-decay): NaN",
        ),
        (
            OptimizerConfig {
                clip_norm: Some(0.0),
                ..cfg("sgd", 0.1)
            },
            "invalid clip_norm (--clip-norm): 0",
        ),
        (
            cfg("kfac", 0.1).with("inv_every", 0),
            "invalid kfac_inv_every (--kfac-inv-every): 0",
        ),
    ] {
        let e = build_optimizer(&conf, 1).err().unwrap().to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn no_decay_on_bias_exempts_biases() {
    let mut c = cfg("sgd", 1.0);
    c.weight_decay = 0.5;
    c.no_decay_on_bias = true;
    let mut opt = build_optimizer(&c, 1).unwrap();
    let mut p = Params::new();
    p.insert("fc.weight", Tensor::from_vec_f64(&[1], vec![2.0]).unwrap());
    p.insert("fc.bias", Tensor::from_vec_f64(&[1], vec![2.0]).unwrap());
    let mut g = p.zeros_like();
    g.insert("fc.weight", Tensor::from_vec_f64(&[1], vec![0.0]).unwrap());
    opt.step(&mut p, &g, &mut StepContext::empty()).unwrap();
    // weight: 2 − 1·(0 + 0.5·2) = 1; bias: unchanged.
    assert_eq!(p.get("fc.weight").unwrap().to_vec_f64(), vec![1.0]);
    assert_eq!(p.get("fc.bias").unwrap().to_vec_f64(), vec![2.0]);
}

#[test]
fn lbfgs_reaches_the_rosenbrock_minimum_to_1e_8() {
    let conf = cfg("lbfgs", 1.0).with("history", 10);
    let mut opt = build_optimizer(&conf, 100).unwrap();
    let mut p = params(&[-1.2, 1.0]);
    let mut obj = Fun(rosenbrock, rosenbrock_gn, rosenbrock_hv);
    let mut iterations = 0;
    for i in 0..200 {
        let (_, g) = rosenbrock(&p.get("w").unwrap().to_vec_f64());
        if g.iter().all(|v| v.abs() < 1e-12) {
            break;
        }
        opt.step(
            &mut p,
            &params(&g),
            &mut StepContext {
                trace: None,
                objective: Some(&mut obj),
                reducer: None,
            },
        )
        .unwrap();
        iterations = i + 1;
    }
    let th = p.get("w").unwrap().to_vec_f64();
    let err = (th[0] - 1.0).abs().max((th[1] - 1.0).abs());
    assert!(err < 1e-8, "θ = {th:?} after {iterations} iterations");
    // Quasi-Newton speed: far fewer iterations than first-order methods need.
    assert!(iterations < 100, "{iterations} iterations");
    // Without an objective there is no line search.
    let e = build_optimizer(&conf, 1)
        .unwrap()
        .step(&mut p, &params(&[1.0, 1.0]), &mut StepContext::empty())
        .unwrap_err()
        .to_string();
    assert!(e.contains("objective"), "{e}");
}

#[test]
fn sophia_clips_each_coordinate_step_to_the_learning_rate() {
    // Far from the minimum of ½‖θ‖², m/max(γh, ε) is huge, so every coordinate moves by
    // exactly η·sign(m): θ = (100, −100, 0) → (99.5, −99.5, 0) with η = 0.5.
    for estimator in ["hutchinson", "gauss-newton"] {
        let conf = cfg("sophia", 0.5).with("estimator", estimator);
        let mut opt = build_optimizer(&conf, 10).unwrap();
        let mut p = params(&[100.0, -100.0, 0.0]);
        let mut obj = Fun(half_square, identity_gn, identity_gn);
        let g = params(&[100.0, -100.0, 0.0]);
        opt.step(
            &mut p,
            &g,
            &mut StepContext {
                trace: None,
                objective: Some(&mut obj),
                reducer: None,
            },
        )
        .unwrap();
        assert_eq!(
            p.get("w").unwrap().to_vec_f64(),
            vec![99.5, -99.5, 0.0],
            "{estimator}"
        );
    }
    assert!(build_optimizer(&cfg("sophia", 0.1).with("estimator", "magic"), 1).is_err());
}

#[test]
fn parameter_groups_equal_separate_optimizers_per_group() {
    use futureprop::optim::ParamGroup;
    // Groups: fc1.* at a tenth of the learning rate without decay; the rest as configured.
    for name in ["sgd", "momentum", "adam", "adamw", "rmsprop", "lamb"] {
        let mut base = cfg(name, 0.05);
        base.weight_decay = 0.1;
        let mut grouped = base.clone();
        grouped.param_groups = vec!["fc1.*:lr_scale=0.1,weight_decay=0".parse().unwrap()];
        let mut slow = base.clone();
        slow.lr = 0.005;
        slow.weight_decay = 0.0;
        let mut opt = build_optimizer(&grouped, 10).unwrap();
        let mut opt_slow = build_optimizer(&slow, 10).unwrap();
        let mut opt_rest = build_optimizer(&base, 10).unwrap();
        let mut p = Params::new();
        p.insert(
            "fc1.weight",
            Tensor::from_vec_f64(&[3], vec![1.0, -2.0, 0.5]).unwrap(),
        );
        p.insert(
            "fc2.weight",
            Tensor::from_vec_f64(&[2], vec![0.3, -0.7]).unwrap(),
        );
        let (mut p1, mut p2) = (Params::new(), Params::new());
        p1.insert("fc1.weight", p.get("fc1.weight").unwrap().clone());
        p2.insert("fc2.weight", p.get("fc2.weight").unwrap().clone());
        for k in 0..3 {
            let mut g = Params::new();
            let s = k as f64 + 1.0;
            g.insert(
                "fc1.weight",
                Tensor::from_vec_f64(&[3], vec![0.2 * s, -0.1, 0.4]).unwrap(),
            );
            g.insert(
                "fc2.weight",
                Tensor::from_vec_f64(&[2], vec![-0.3, 0.5 * s]).unwrap(),
            );
            let (mut g1, mut g2) = (Params::new(), Params::new());
            g1.insert("fc1.weight", g.get("fc1.weight").unwrap().clone());
            g2.insert("fc2.weight", g.get("fc2.weight").unwrap().clone());
            opt.step(&mut p, &g, &mut StepContext::empty()).unwrap();
            opt_slow
                .step(&mut p1, &g1, &mut StepContext::empty())
                .unwrap();
            opt_rest
                .step(&mut p2, &g2, &mut StepContext::empty())
                .unwrap();
        }
        for (n, want) in [("fc1.weight", &p1), ("fc2.weight", &p2)] {
            let (a, b) = (
                p.get(n).unwrap().to_vec_f64(),
                want.get(n).unwrap().to_vec_f64(),
            );
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-12, "{name} {n}: {a:?} vs {b:?}");
            }
        }
    }
    assert!(
        "fc1.*:lr=2"
            .parse::<ParamGroup>()
            .unwrap_err()
            .to_string()
            .contains("lr")
    );
    assert!("no-colon".parse::<ParamGroup>().is_err());
    assert!("*.bias:lr_scale=-1".parse::<ParamGroup>().is_err());
    let g: ParamGroup = "fc1.*|*.bias:lr_scale=0.5".parse().unwrap();
    assert!(g.matches("fc1.weight") && g.matches("fc3.bias") && !g.matches("fc3.weight"));
    let mut k = cfg("kfac", 0.1);
    k.param_groups = vec!["*.bias:weight_decay=0".parse().unwrap()];
    assert!(build_optimizer(&k, 1).is_err());
}

#[test]
fn onebit_adam_is_adam_through_its_warm_up_then_freezes_the_variance() {
    let g = |t: u64| {
        let mut g = Grads::new();
        let v = [0.1 * t as f64, -0.2, 0.3 / t as f64];
        g.insert("w", Tensor::from_vec_f64(&[3], v.to_vec()).unwrap());
        g
    };
    let conf = cfg("onebit_adam", 0.1).with("freeze_step", 3);
    let mut onebit = build_optimizer(&conf, 10).unwrap();
    let mut adam = build_optimizer(&cfg("adam", 0.1), 10).unwrap();
    let (mut a, mut b) = (params(&[0.5, -1.5, 2.0]), params(&[0.5, -1.5, 2.0]));
    for t in 1..=3 {
        let mut ctx = StepContext::empty();
        onebit.step(&mut a, &g(t), &mut ctx).unwrap();
        adam.step(&mut b, &g(t), &mut StepContext::empty()).unwrap();
        let (x, y) = (
            a.get("w").unwrap().to_vec_f64(),
            b.get("w").unwrap().to_vec_f64(),
        );
        for (x, y) in x.iter().zip(&y) {
            assert!((x - y).abs() < 1e-12, "step {t}: {x} against Adam's {y}");
        }
    }
    let v =
        |o: &dyn futureprop::optim::Optimizer| o.state().tensors.get("v/w").unwrap().to_vec_f64();
    let frozen = v(onebit.as_ref());
    for t in 4..=6 {
        onebit
            .step(&mut a, &g(t), &mut StepContext::empty())
            .unwrap();
    }
    assert_eq!(v(onebit.as_ref()), frozen, "v after the freeze");
    assert!(onebit.reduces_own_update() && onebit.splits_over_batch());
}
