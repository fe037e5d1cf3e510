//! Statistics across seeds.

/// Two-sided 95 % Student-t quantiles t₀.₉₇₅ for 1..=30 degrees of freedom.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// t₀.₉₇₅ with `df` degrees of freedom (normal quantile 1.96 beyond 30).
pub fn t_quantile_975(df: usize) -> f64 {
    match df {
        0 => f64::NAN,
        1..=30 => T975[df - 1],
        _ => 1.96,
    }
}

/// Mean and sample standard deviation (NaN sd for fewer than two values).
pub fn mean_sd(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    if x.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (m, f64::NAN);
    }
    let v = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, v.sqrt())
}

/// Paired difference a − b over matched seeds: mean and 95 % confidence interval from the
/// paired t statistic (mean ± t·sd/√n). The interval is `None` with fewer than two pairs.
pub fn paired_difference(a: &[f64], b: &[f64]) -> (f64, Option<(f64, f64)>) {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let (m, sd) = mean_sd(&d);
    if d.len() < 2 {
        return (m, None);
    }
    let h = t_quantile_975(d.len() - 1) * sd / (d.len() as f64).sqrt();
    (m, Some((m - h, m + h)))
}
