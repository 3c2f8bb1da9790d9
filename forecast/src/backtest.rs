//! Rolling-origin backtests: how a method would have done had it been run
//! hour by hour, each forecast made from the data known `horizon` hours
//! before its target and nothing later. The same machinery picks a model
//! for a series (on the part before the test range only) and calibrates
//! every method's 80 % interval from its own errors there.

use std::collections::BTreeMap;

use crate::method::{fit_window, Method};
use crate::series::{Series, MAX_HOURS};
use crate::{Error, Hour, Result};

/// The interval reported is the central 80 %.
pub const INTERVAL_LEVEL: f64 = 0.8;

/// How many hours before the test range a model is chosen on: fourteen
/// seasons (two weeks), or half the history when that is shorter.
pub fn selection_span(season: usize) -> usize {
    14 * season
}

/// With fewer observed hours than two seasons no model is chosen:
/// persistence forecasts, with a wide interval (see
/// [`short_history_band`]).
pub fn short_history(season: usize) -> usize {
    2 * season
}

/// A horizon must be at least one hour and at most a series' length.
fn check_horizon(horizon: usize) -> Result<()> {
    match horizon {
        0 => Err(Error::ZeroHorizon),
        h if h > MAX_HOURS => Err(Error::HorizonTooLong(h)),
        _ => Ok(()),
    }
}

/// A fitted model is chosen over the best baseline only when its MAE on
/// the history is at least this much (2 %) lower.
pub const FITTED_MARGIN: f64 = 0.02;

/// What to backtest.
#[derive(Debug, Clone)]
pub struct BacktestOptions {
    /// Hours between the last data a forecast may use and its target.
    pub horizon: usize,
    /// First target hour.
    pub from: Hour,
    /// Last target hour (inclusive).
    pub to: Hour,
    /// A fitted model is refit every this many hours and its forecast
    /// from that fit serves the targets until the next one (each target
    /// still at least `horizon` hours after the data the fit saw). 1 means
    /// a fresh fit for every target; the cheap methods (baselines and the
    /// regression, [`Method::is_cheap`]) are always fresh.
    pub refit_every: usize,
    /// Hours in the series' season (24: a day); the long season is seven.
    pub season: usize,
}

/// Accuracy over the scored hours of a range.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// Hours scored (those with an observed value).
    pub hours: usize,
    /// Mean absolute error, in the series' unit.
    pub mae: f64,
    /// Mean absolute percentage error (%), over the hours whose actual is
    /// not zero (a percentage of zero is undefined); `None` if all are.
    pub mape: Option<f64>,
    /// Hours left out of MAPE because their actual was zero.
    pub mape_skipped_zeros: usize,
    /// Weighted absolute percentage error (%): total absolute error over
    /// total absolute actual; `None` when the actuals sum to zero.
    pub wape: Option<f64>,
    /// Share of actuals inside the 80 % interval (%).
    pub coverage: f64,
}

/// One method's forecast of one hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// The target hour.
    pub hour: Hour,
    /// The point forecast.
    pub point: f64,
    /// Lower end of the 80 % interval.
    pub lower: f64,
    /// Upper end of the 80 % interval.
    pub upper: f64,
}

/// The outcome of [`backtest`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct BacktestReport {
    /// Hours between the data and the target.
    pub horizon: usize,
    /// First target hour.
    pub from: Hour,
    /// Last target hour.
    pub to: Hour,
    /// Refit interval of the fitted model, hours.
    pub refit_every: usize,
    /// Hours in the season.
    pub season: usize,
    /// Hours of history before the test range.
    pub history_hours: usize,
    /// The method chosen on the history (by MAE at this horizon).
    pub model: Method,
    /// Why it was chosen, in words.
    pub chosen_because: String,
    /// Each candidate's MAE on the history, in candidate order; a
    /// candidate that could not run there is left out.
    pub selection: Vec<CandidateScore>,
    /// The chosen method's accuracy over the test range.
    pub model_metrics: Metrics,
    /// Each baseline's accuracy over the same hours.
    pub baselines: Vec<BaselineScore>,
}

/// A candidate's error while a model was being chosen.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CandidateScore {
    /// The candidate.
    pub method: Method,
    /// Its MAE at the horizon over the selection hours.
    pub mae: f64,
}

/// A baseline's accuracy over the test range.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BaselineScore {
    /// The baseline.
    pub method: Method,
    /// Its accuracy.
    pub metrics: Metrics,
}

/// Point forecasts of `method` for each hour from `from` to `to`, each
/// made from the hours before `target - horizon + 1` only. Targets the
/// method cannot forecast (too little history) are left out. Fits of the
/// models run on as many threads as the machine has (at most 8).
pub fn rolling_points(
    series: &Series,
    method: Method,
    horizon: usize,
    from: Hour,
    to: Hour,
    refit_every: usize,
    season: usize,
) -> Result<BTreeMap<Hour, f64>> {
    check_horizon(horizon)?;
    let refit = if method.is_cheap() {
        1
    } else {
        // No fit needs to serve more hours than the range has.
        let range = usize::try_from(to.since(from)).unwrap_or(0) + 1;
        refit_every.clamp(1, range.clamp(1, MAX_HOURS))
    };
    // A cut is the first hour a forecast may not see; a target t needs a
    // cut at most t - horizon + 1.
    let first_cut = from.plus(1 - horizon as i64);
    let last_cut = to.plus(1 - horizon as i64);
    let cuts: Vec<Hour> = (first_cut.0..=last_cut.0)
        .step_by(refit)
        .map(Hour)
        .collect();
    let run = |cut: Hour| -> Vec<(Hour, f64)> {
        let history = window(series, cut, season);
        let last = horizon + refit - 1;
        match method.predict_steps(&history, horizon, last, season) {
            Ok(points) => points
                .into_iter()
                .enumerate()
                .map(|(i, p)| (cut.plus((horizon - 1 + i) as i64), p))
                .filter(|(t, _)| *t >= from && *t <= to)
                .collect(),
            Err(_) => Vec::new(),
        }
    };
    let threads = if method.is_fitted() {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    } else {
        1
    };
    let mut out = BTreeMap::new();
    if threads <= 1 || cuts.len() < 2 {
        for cut in cuts {
            out.extend(run(cut));
        }
        return Ok(out);
    }
    let chunk = cuts.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = cuts
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().flat_map(|&c| run(c)).collect::<Vec<_>>()))
            .collect();
        for handle in handles {
            // A panicking model thread loses its targets, not the run.
            if let Ok(points) = handle.join() {
                out.extend(points);
            }
        }
    });
    Ok(out)
}

/// The gap-free history a forecaster standing at `cut` sees: at most the
/// recent hours a model fits on (plus a day, so a gap at the window's
/// start can still be filled from the day before).
fn window(series: &Series, cut: Hour, season: usize) -> Vec<f64> {
    let known = series.until(cut);
    let keep = fit_window(season) + season;
    let skip = known.len().saturating_sub(keep);
    let tail = known.values().get(skip..).unwrap_or_default().to_vec();
    let filled = Series::new(known.start().plus(skip as i64), tail)
        .map(|s| s.filled())
        .unwrap_or_default();
    let extra = filled.len().saturating_sub(fit_window(season));
    filled.into_iter().skip(extra).collect()
}

/// The 10 % and 90 % quantiles of a method's errors (actual minus point)
/// in a backtest: added to a point forecast they make its 80 % interval.
pub fn error_band(series: &Series, points: &BTreeMap<Hour, f64>) -> Option<(f64, f64)> {
    let mut errors: Vec<f64> = points
        .iter()
        .filter_map(|(&t, &p)| series.get(t).map(|y| y - p))
        .collect();
    // Fewer than ten errors do not make a 10 % quantile.
    if errors.len() < 10 {
        return None;
    }
    errors.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let i = ((errors.len() - 1) as f64 * p).round() as usize;
        errors.get(i).copied().unwrap_or(0.0)
    };
    Some((q(0.1), q(0.9)))
}

/// The interval for a history too short to learn errors from: as wide as
/// the largest of the history's range, its largest change over `horizon`
/// hours and a quarter of its mean size, on either side. Wide on purpose:
/// the forecaster does not know the series yet.
pub fn short_history_band(history: &[f64], horizon: usize) -> (f64, f64) {
    let max = history.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = history.iter().copied().fold(f64::INFINITY, f64::min);
    let range = if history.is_empty() { 0.0 } else { max - min };
    let change = history
        .iter()
        .zip(history.iter().skip(horizon.max(1)))
        .map(|(a, b)| (b - a).abs())
        .fold(0.0, f64::max);
    let mean_size = history.iter().map(|v| v.abs()).sum::<f64>() / history.len().max(1) as f64;
    let half = range.max(change).max(0.25 * mean_size);
    (-half, half)
}

/// Scores predictions against the series' observed hours.
pub fn score(series: &Series, predictions: &[Prediction]) -> Option<Metrics> {
    let (mut hours, mut abs_sum, mut actual_sum, mut covered) = (0usize, 0.0, 0.0, 0usize);
    let (mut pct_sum, mut pct_n, mut zeros) = (0.0, 0usize, 0usize);
    for p in predictions {
        let Some(y) = series.get(p.hour) else {
            continue;
        };
        let e = (y - p.point).abs();
        hours += 1;
        abs_sum += e;
        actual_sum += y.abs();
        if y == 0.0 {
            zeros += 1;
        } else {
            pct_sum += e / y.abs();
            pct_n += 1;
        }
        if p.lower <= y && y <= p.upper {
            covered += 1;
        }
    }
    if hours == 0 {
        return None;
    }
    Some(Metrics {
        hours,
        mae: abs_sum / hours as f64,
        mape: (pct_n > 0).then(|| 100.0 * pct_sum / pct_n as f64),
        mape_skipped_zeros: zeros,
        wape: (actual_sum > 0.0).then(|| 100.0 * abs_sum / actual_sum),
        coverage: 100.0 * covered as f64 / hours as f64,
    })
}

/// MAE of points against the observed hours, `None` if none is observed.
fn mae(series: &Series, points: &BTreeMap<Hour, f64>) -> Option<f64> {
    let errors: Vec<f64> = points
        .iter()
        .filter_map(|(&t, &p)| series.get(t).map(|y| (y - p).abs()))
        .collect();
    (!errors.is_empty()).then(|| errors.iter().sum::<f64>() / errors.len() as f64)
}

/// What the history before a cut says about each candidate.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The method with the lowest MAE, except that a fitted model must
    /// beat the best baseline by [`FITTED_MARGIN`]; persistence for a
    /// short history.
    pub method: Method,
    /// Why, in words.
    pub because: String,
    /// MAE per candidate that ran.
    pub maes: Vec<CandidateScore>,
    /// The 80 % error band per candidate that ran on enough hours.
    pub bands: BTreeMap<Method, (f64, f64)>,
}

/// Backtests every candidate on the last hours of `history` (two weeks'
/// worth, or half of it) at `horizon` and picks the one with the lowest
/// MAE. `history` must end where the forecaster stands: all of it is
/// read.
pub fn select(
    history: &Series,
    horizon: usize,
    refit_every: usize,
    season: usize,
) -> Result<Selection> {
    check_horizon(horizon)?;
    let n = history.len();
    let short = short_history(season);
    if history.observed() < short || n < short + horizon {
        return Ok(Selection {
            method: Method::Persistence,
            because: format!(
                "history too short ({} observed hours; a model needs two seasons, \
                 {short} h, and the horizon): persistence with a wide interval",
                history.observed()
            ),
            maes: Vec::new(),
            bands: BTreeMap::new(),
        });
    }
    let span = selection_span(season).min(n / 2).max(1);
    let to = history.end().plus(-1);
    let from = history.end().plus(-(span as i64));
    let mut maes = Vec::new();
    let mut bands = BTreeMap::new();
    let mut mstl: Option<BTreeMap<Hour, f64>> = None;
    let mut yesterday: Option<BTreeMap<Hour, f64>> = None;
    for method in Method::CANDIDATES {
        let points = match method {
            // The blend is the mean of two candidates already run.
            Method::MstlEtsYesterday => match (&mstl, &yesterday) {
                (Some(a), Some(b)) => a
                    .iter()
                    .filter_map(|(t, x)| b.get(t).map(|y| (*t, (x + y) / 2.0)))
                    .collect(),
                _ => BTreeMap::new(),
            },
            _ => rolling_points(history, method, horizon, from, to, refit_every, season)?,
        };
        // A candidate that could forecast only part of the hours would be
        // compared on easier ground; it is left out.
        let full = points.len() == span;
        if let (true, Some(m)) = (full, mae(history, &points)) {
            maes.push(CandidateScore { method, mae: m });
            if let Some(band) = error_band(history, &points) {
                bands.insert(method, band);
            }
        }
        match method {
            Method::MstlEts => mstl = Some(points),
            Method::SameHourYesterday => yesterday = Some(points),
            _ => {}
        }
    }
    let best = maes
        .iter()
        .copied()
        .reduce(|a, b| if b.mae < a.mae { b } else { a });
    let Some(CandidateScore {
        method,
        mae: best_mae,
    }) = best
    else {
        return Ok(Selection {
            method: Method::Persistence,
            because: "no candidate could be scored on the history".to_owned(),
            maes,
            bands,
        });
    };
    // Occam: a fitted model must beat the best baseline by a margin, or
    // the simpler method is kept (its errors are easier to live with).
    let best_baseline = maes
        .iter()
        .copied()
        .filter(|c| !c.method.is_fitted())
        .reduce(|a, b| if b.mae < a.mae { b } else { a });
    if let Some(baseline) = best_baseline {
        if method.is_fitted() && best_mae > (1.0 - FITTED_MARGIN) * baseline.mae {
            return Ok(Selection {
                method: baseline.method,
                because: format!(
                    "lowest MAE of the baselines ({:.3}) at {horizon} h over the last {span} hours \
                     before the test range; {method} ({best_mae:.3}) was not {:.0} % better",
                    baseline.mae,
                    100.0 * FITTED_MARGIN
                ),
                maes,
                bands,
            });
        }
    }
    Ok(Selection {
        method,
        because: format!(
            "lowest MAE ({best_mae:.3}) at {horizon} h over the last {span} hours before the test range"
        ),
        maes,
        bands,
    })
}

/// Runs the whole backtest: chooses a model on the history before
/// `options.from`, then forecasts every hour of the test range with it and
/// with each baseline, all rolling-origin at the same horizon, and scores
/// them. `progress` is called with (hours done, hours in all): with 0
/// before the model is chosen (the longest step), then as the test
/// range's forecasts are made.
pub fn backtest(
    series: &Series,
    options: &BacktestOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<BacktestReport> {
    let BacktestOptions {
        horizon,
        from,
        to,
        refit_every,
        season,
    } = options.clone();
    let season = season.max(2);
    check_horizon(horizon)?;
    let from = from.max(series.start());
    let to = to.min(series.end().plus(-1));
    if to < from || (from.0..=to.0).all(|h| series.get(Hour(h)).is_none()) {
        return Err(Error::EmptyRange {
            from: options.from,
            to: options.to,
        });
    }
    // The model is chosen on what was known at the first forecast.
    let history = series.until(from.plus(1 - horizon as i64));
    if history.observed() == 0 {
        return Err(Error::NoHistory(from));
    }
    let total = (to.since(from) + 1) as usize;
    progress(0, total);
    let selection = select(&history, horizon, refit_every, season)?;
    let short_band = short_history_band(&history.filled(), horizon);
    let band = |m: Method| selection.bands.get(&m).copied().unwrap_or(short_band);

    // Progress is reported per chunk of about a day; a chunk is whole
    // refits, so the refit grid is the same as without chunks.
    let refit = refit_every.clamp(1, MAX_HOURS);
    let chunk = (24 / refit).max(1) * refit;
    let mut model_points = BTreeMap::new();
    let mut start = from;
    while start <= to {
        let end = start.plus(chunk as i64 - 1).min(to);
        model_points.extend(model_points_for(
            series,
            selection.method,
            horizon,
            start,
            end,
            refit_every,
            season,
        )?);
        progress((end.since(from) + 1) as usize, total);
        start = end.plus(1);
    }
    let predictions = |m: Method, points: &BTreeMap<Hour, f64>| -> Vec<Prediction> {
        let (lo, hi) = band(m);
        points
            .iter()
            .map(|(&hour, &point)| Prediction {
                hour,
                point,
                lower: point + lo,
                upper: point + hi,
            })
            .collect()
    };
    let model_predictions = predictions(selection.method, &model_points);
    let model_metrics = score(series, &model_predictions).ok_or(Error::EmptyRange {
        from: options.from,
        to: options.to,
    })?;
    let mut baselines = Vec::new();
    for method in Method::BASELINES {
        let points = rolling_points(series, method, horizon, from, to, 1, season)?;
        // Baselines are scored on the hours the model was, so the figures
        // compare like with like.
        let common: BTreeMap<Hour, f64> = points
            .into_iter()
            .filter(|(t, _)| model_points.contains_key(t))
            .collect();
        if let Some(metrics) = score(series, &predictions(method, &common)) {
            baselines.push(BaselineScore { method, metrics });
        }
    }
    Ok(BacktestReport {
        horizon,
        from,
        to,
        refit_every,
        season,
        history_hours: history.len(),
        model: selection.method,
        chosen_because: selection.because,
        selection: selection.maes,
        model_metrics,
        baselines,
    })
}

/// The chosen method's points over one chunk of the test range. The blend
/// is the mean of its two parts; a method that cannot forecast some
/// target (history too short there) falls back to persistence for it, so
/// every hour gets a forecast.
fn model_points_for(
    series: &Series,
    method: Method,
    horizon: usize,
    from: Hour,
    to: Hour,
    refit_every: usize,
    season: usize,
) -> Result<BTreeMap<Hour, f64>> {
    let mut points = rolling_points(series, method, horizon, from, to, refit_every, season)?;
    let fallback = rolling_points(series, Method::Persistence, horizon, from, to, 1, season)?;
    for (t, p) in fallback {
        points.entry(t).or_insert(p);
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::DAY;

    /// A daily shape with a slow drift and noise.
    fn demand(hours: usize) -> Series {
        let mut state: u64 = 7;
        let values = (0..hours)
            .map(|h| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                let noise = (state >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
                let day = ((h % DAY) as f64 / DAY as f64 * std::f64::consts::TAU).sin();
                Some(300.0 + 40.0 * day + h as f64 * 0.05 + 4.0 * noise)
            })
            .collect();
        Series::new(Hour(0), values).unwrap()
    }

    #[test]
    fn metrics_skip_zero_actuals_in_mape_only() {
        let s = Series::new(Hour(0), vec![Some(0.0), Some(10.0), Some(20.0), None]).unwrap();
        let p = |h: i64, point: f64| Prediction {
            hour: Hour(h),
            point,
            lower: point - 1.0,
            upper: point + 1.0,
        };
        let m = score(&s, &[p(0, 2.0), p(1, 15.0), p(2, 20.5), p(3, 99.0)]).unwrap();
        assert_eq!(m.hours, 3, "the gap at hour 3 is not scored");
        assert!((m.mae - 7.5 / 3.0).abs() < 1e-12);
        assert_eq!(m.mape_skipped_zeros, 1);
        // (5/10 + 0.5/20) / 2 = 26.25 %
        assert!((m.mape.unwrap() - 26.25).abs() < 1e-9);
        assert!((m.wape.unwrap() - 100.0 * 7.5 / 30.0).abs() < 1e-9);
        assert!((m.coverage - 100.0 / 3.0).abs() < 1e-9);

        let zeros = Series::new(Hour(0), vec![Some(0.0); 3]).unwrap();
        let m = score(&zeros, &[p(0, 1.0), p(1, 0.0)]).unwrap();
        assert_eq!((m.mape, m.wape), (None, None));
    }

    #[test]
    fn rolling_origin_never_sees_data_after_the_origin() {
        let clean = demand(30 * DAY);
        let (from, to) = (Hour(28 * DAY as i64), Hour(28 * DAY as i64 + 5));
        for horizon in [1, 6] {
            for method in Method::CANDIDATES {
                if method == Method::MstlEtsYesterday {
                    continue; // Not run alone; its parts are checked.
                }
                let honest = rolling_points(&clean, method, horizon, from, to, 3, DAY).unwrap();
                assert_eq!(honest.len(), 6, "{method:?}");
                for (&t, &p) in &honest {
                    // Everything after t - horizon is replaced by garbage:
                    // the forecast of t must not change.
                    let cut = t.plus(1 - horizon as i64);
                    let mut poisoned: Vec<Option<f64>> = clean.values().to_vec();
                    for v in poisoned.iter_mut().skip(cut.0 as usize) {
                        *v = Some(1e9);
                    }
                    let poisoned = Series::new(Hour(0), poisoned).unwrap();
                    let seen =
                        rolling_points(&poisoned, method, horizon, from, to, 3, DAY).unwrap();
                    let q = seen[&t];
                    assert!(
                        (q - p).abs() < 1e-6 * p.abs().max(1.0),
                        "{method:?} h={horizon} t={t:?}: {q} vs {p}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_seasonal_series_gets_a_seasonal_model_that_beats_the_baselines() {
        let s = demand(35 * DAY);
        let options = BacktestOptions {
            horizon: 6,
            from: Hour(32 * DAY as i64),
            to: Hour(35 * DAY as i64 - 1),
            refit_every: 6,
            season: DAY,
        };
        let report = backtest(&s, &options, &|_, _| {}).unwrap();
        assert!(report.model.is_fitted(), "{report:?}");
        assert_eq!(report.model_metrics.hours, 72);
        assert_eq!(report.baselines.len(), 3);
        for baseline in &report.baselines {
            assert!(
                report.model_metrics.mae < 0.8 * baseline.metrics.mae,
                "{:?}: {report:?}",
                baseline.method
            );
            assert_eq!(baseline.metrics.hours, 72);
        }
        let coverage = report.model_metrics.coverage;
        assert!((50.0..=100.0).contains(&coverage), "{report:?}");
    }

    #[test]
    fn short_history_forecasts_persistence_with_a_wide_interval() {
        let s = demand(40);
        let options = BacktestOptions {
            horizon: 1,
            from: Hour(30),
            to: Hour(39),
            refit_every: 1,
            season: DAY,
        };
        let report = backtest(&s, &options, &|_, _| {}).unwrap();
        assert_eq!(report.model, Method::Persistence);
        assert!(
            report.chosen_because.contains("history too short"),
            "{report:?}"
        );
        assert!(report.selection.is_empty());
        assert_eq!(report.model_metrics.coverage, 100.0, "{report:?}");
    }

    #[test]
    fn empty_ranges_and_zero_horizons_are_errors() {
        let s = demand(100);
        let mut options = BacktestOptions {
            horizon: 0,
            from: Hour(50),
            to: Hour(60),
            refit_every: 1,
            season: DAY,
        };
        assert!(matches!(
            backtest(&s, &options, &|_, _| {}),
            Err(Error::ZeroHorizon)
        ));
        options.horizon = usize::MAX;
        assert!(matches!(
            backtest(&s, &options, &|_, _| {}),
            Err(Error::HorizonTooLong(_))
        ));
        // An absurd refit interval is one fit for the whole range.
        options.horizon = 1;
        options.refit_every = usize::MAX;
        assert_eq!(
            backtest(&s, &options, &|_, _| {})
                .unwrap()
                .model_metrics
                .hours,
            11
        );
        options.from = Hour(500);
        options.to = Hour(600);
        assert!(matches!(
            backtest(&s, &options, &|_, _| {}),
            Err(Error::EmptyRange { .. })
        ));
        options.from = Hour(0);
        options.to = Hour(10);
        assert!(matches!(
            backtest(&s, &options, &|_, _| {}),
            Err(Error::NoHistory(_))
        ));
    }
}
