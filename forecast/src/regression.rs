//! A direct regression on recent levels: for each step ahead, the value
//! that many hours after an origin as a linear function of the latest
//! value and the means of the last season and the last long season at
//! that origin, fit on the recent past with Huber weights.
//!
//! Series of cluster occupancy move mostly in levels (jobs start and end
//! in blocks) and revert toward their recent average, which a smoothing
//! model with a season does not express and this does. Huber weights keep
//! one outage (a logging dropout, a drained cluster) from setting the
//! slope.

use crate::{Error, Result};

/// Features per origin: intercept, latest value, season mean, long-season
/// mean.
const FEATURES: usize = 4;
/// Fewer training rows than this and the model declines.
const MIN_ROWS: usize = 48;
/// Reweighting rounds of the Huber fit.
const HUBER_ROUNDS: usize = 5;
/// Huber's tuning constant (95 % efficiency for normal errors).
const HUBER_K: f64 = 1.345;

/// Point forecasts for the steps `steps` (1 is the hour after `history`),
/// one fit per step on the origins of the last `window` hours. `season`
/// and `long` are the two season lengths in hours.
pub(crate) fn forecast(
    history: &[f64],
    steps: std::ops::RangeInclusive<usize>,
    season: usize,
    long: usize,
    window: usize,
) -> Result<Vec<f64>> {
    let n = history.len();
    let decline = |why: &str| Error::Model {
        method: "level_regression",
        reason: why.to_owned(),
    };
    // Prefix sums make each origin's means O(1).
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    let mut acc = 0.0;
    for v in history {
        acc += v;
        prefix.push(acc);
    }
    let mean_before = |origin: usize, len: usize| -> Option<f64> {
        let lo = origin.checked_sub(len)?;
        Some((prefix.get(origin)? - prefix.get(lo)?) / len as f64)
    };
    let features = |origin: usize| -> Option<[f64; FEATURES]> {
        Some([
            1.0,
            *history.get(origin.checked_sub(1)?)?,
            mean_before(origin, season)?,
            mean_before(origin, long)?,
        ])
    };
    let now = features(n).ok_or_else(|| decline("history shorter than a long season"))?;
    let mut out = Vec::new();
    for step in steps {
        let step = step.max(1);
        // An origin o has its target at o + step - 1, which must be known.
        let last_origin = (n + 1).saturating_sub(step);
        let first_origin = long.max(last_origin.saturating_sub(window));
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for origin in first_origin..last_origin {
            if let (Some(x), Some(&y)) = (features(origin), history.get(origin + step - 1)) {
                rows.push(x);
                targets.push(y);
            }
        }
        if rows.len() < MIN_ROWS {
            return Err(decline("too few hours to fit this far ahead"));
        }
        let coef = huber_fit(&rows, &targets).ok_or_else(|| decline("singular fit"))?;
        let point: f64 = coef.iter().zip(now).map(|(c, x)| c * x).sum();
        out.push(point);
    }
    Ok(out)
}

/// Linear least squares with Huber weights by iterative reweighting.
fn huber_fit(rows: &[[f64; FEATURES]], targets: &[f64]) -> Option<[f64; FEATURES]> {
    let mut weights = vec![1.0; rows.len()];
    let mut coef = weighted_least_squares(rows, targets, &weights)?;
    for _ in 0..HUBER_ROUNDS {
        let residuals: Vec<f64> = rows
            .iter()
            .zip(targets)
            .map(|(x, y)| y - x.iter().zip(coef).map(|(a, c)| a * c).sum::<f64>())
            .collect();
        let mut abs: Vec<f64> = residuals.iter().map(|r| r.abs()).collect();
        abs.sort_by(f64::total_cmp);
        let scale = abs.get(abs.len() / 2).copied().unwrap_or(0.0) / 0.6745;
        if scale <= f64::EPSILON {
            break;
        }
        let delta = HUBER_K * scale;
        for (w, r) in weights.iter_mut().zip(&residuals) {
            *w = if r.abs() <= delta {
                1.0
            } else {
                delta / r.abs()
            };
        }
        coef = weighted_least_squares(rows, targets, &weights)?;
    }
    Some(coef)
}

/// Solves the weighted normal equations, with a whisper of ridge on the
/// slopes so that a flat series (all features equal) still has an answer.
fn weighted_least_squares(
    rows: &[[f64; FEATURES]],
    targets: &[f64],
    weights: &[f64],
) -> Option<[f64; FEATURES]> {
    let mut a = [[0.0; FEATURES]; FEATURES];
    let mut b = [0.0; FEATURES];
    for ((x, y), w) in rows.iter().zip(targets).zip(weights) {
        for (i, xi) in x.iter().enumerate() {
            if let Some(bi) = b.get_mut(i) {
                *bi += w * xi * y;
            }
            if let Some(row) = a.get_mut(i) {
                for (aij, xj) in row.iter_mut().zip(x) {
                    *aij += w * xi * xj;
                }
            }
        }
    }
    let trace: f64 = (0..FEATURES)
        .filter_map(|i| a.get(i).and_then(|r| r.get(i)))
        .sum();
    let ridge = 1e-9 * trace / FEATURES as f64 + 1e-12;
    for (i, row) in a.iter_mut().enumerate().skip(1) {
        if let Some(d) = row.get_mut(i) {
            *d += ridge;
        }
    }
    solve(a, b)
}

/// Gaussian elimination with partial pivoting; `None` if singular.
fn solve(mut a: [[f64; FEATURES]; FEATURES], mut b: [f64; FEATURES]) -> Option<[f64; FEATURES]> {
    for col in 0..FEATURES {
        let pivot = (col..FEATURES).max_by(|&i, &j| {
            let ai = a.get(i).and_then(|r| r.get(col)).map_or(0.0, |v| v.abs());
            let aj = a.get(j).and_then(|r| r.get(col)).map_or(0.0, |v| v.abs());
            ai.total_cmp(&aj)
        })?;
        a.swap(col, pivot);
        b.swap(col, pivot);
        let p = *a.get(col)?.get(col)?;
        if p.abs() < 1e-300 {
            return None;
        }
        let pivot_row = *a.get(col)?;
        let pivot_b = *b.get(col)?;
        for row in 0..FEATURES {
            if row == col {
                continue;
            }
            let factor = a.get(row)?.get(col)? / p;
            if let Some(r) = a.get_mut(row) {
                for (v, pv) in r.iter_mut().zip(pivot_row) {
                    *v -= factor * pv;
                }
            }
            if let Some(v) = b.get_mut(row) {
                *v -= factor * pivot_b;
            }
        }
    }
    let mut x = [0.0; FEATURES];
    for (i, xi) in x.iter_mut().enumerate() {
        *xi = b.get(i)? / a.get(i)?.get(i)?;
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_linear_rule_and_shrugs_off_an_outage() {
        // A mean-reverting series: each hour moves 10 % of the way back
        // to 300 from where it was, plus a deterministic wiggle.
        let mut y = vec![400.0];
        for h in 1..800 {
            let last = y[h - 1];
            let wiggle = ((h * 31) % 17) as f64 - 8.0;
            y.push(last + 0.1 * (300.0 - last) + wiggle);
        }
        // An outage: a logging dropout to near zero for half a day.
        for v in y.iter_mut().skip(500).take(12) {
            *v = 5.0;
        }
        let points = forecast(&y, 1..=24, 24, 168, 672).unwrap();
        assert_eq!(points.len(), 24);
        let last = *y.last().unwrap();
        // Far ahead the forecast is near the long-run level, not the last
        // value: the reversion was learnt despite the outage.
        assert!((points[23] - 300.0).abs() < 15.0, "{points:?}");
        // One step ahead it is close to last + 10 % of the way back.
        let expected = last + 0.1 * (300.0 - last);
        assert!(
            (points[0] - expected).abs() < 8.0,
            "{} vs {expected}",
            points[0]
        );
        // Asking for some steps only gives the same figures for them.
        let tail = forecast(&y, 20..=24, 24, 168, 672).unwrap();
        assert_eq!(tail, points[19..]);
    }

    #[test]
    fn flat_series_forecast_flat_and_short_ones_decline() {
        let points = forecast(&[7.0; 400], 1..=5, 24, 168, 672).unwrap();
        assert!(points.iter().all(|p| (p - 7.0).abs() < 1e-6), "{points:?}");
        assert!(forecast(&[7.0; 100], 1..=5, 24, 168, 672).is_err());
        assert!(forecast(&[7.0; 200], 1..=100, 24, 168, 672).is_err());
    }

    #[test]
    fn solves_a_small_system() {
        let a = [
            [2.0, 0.0, 0.0, 1.0],
            [0.0, 3.0, 0.0, 0.0],
            [0.0, 0.0, 4.0, 0.0],
            [1.0, 0.0, 0.0, 5.0],
        ];
        let x = solve(a, [3.0, 6.0, 8.0, 6.0]).unwrap();
        for (got, want) in x.iter().zip([1.0, 2.0, 2.0, 1.0]) {
            assert!((got - want).abs() < 1e-12, "{x:?}");
        }
        assert!(solve([[0.0; 4]; 4], [1.0; 4]).is_none());
    }
}
