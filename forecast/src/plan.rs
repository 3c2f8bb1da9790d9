//! Forecasts for callers that plan with them: the next hours of a series
//! with 80 % intervals, and when a forecast spend runs through a budget.

use crate::backtest::{select, selection_span, short_history_band, FITTED_MARGIN};
use crate::method::{Method, DAY};
use crate::series::Series;
use crate::{Error, Hour, Result};

/// A cap on the horizon of [`forecast`]: 31 days ahead, so a month's
/// spend can be forecast in one piece.
pub const MAX_HORIZON: usize = 31 * 24;

/// One forecast hour.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ForecastPoint {
    /// The hour forecast.
    pub hour: Hour,
    /// The point forecast.
    pub value: f64,
    /// Lower end of the 80 % prediction interval.
    pub lower: f64,
    /// Upper end of the 80 % prediction interval.
    pub upper: f64,
}

/// A series' forecast and the method that made it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeriesForecast {
    /// The method chosen by the series' own backtest.
    pub method: Method,
    /// The hours after the series' end, in order.
    pub points: Vec<ForecastPoint>,
}

/// Forecasts the `horizon` hours after the end of `series` (at most
/// [`MAX_HORIZON`]). The method is the one with the lowest error at that
/// horizon in a rolling-origin backtest over the series' own last two
/// weeks. Each step's 80 % interval is the 10-90 % range of that method's
/// errors at the same step in the backtest, so it widens with the step as
/// the errors did. A series with fewer than two days of data gets
/// persistence and a wide interval.
pub fn forecast(series: &Series, horizon: usize) -> Result<SeriesForecast> {
    if horizon == 0 {
        return Err(Error::ZeroHorizon);
    }
    if series.observed() == 0 {
        return Err(Error::Empty);
    }
    let horizon = horizon.min(MAX_HORIZON);
    let method = choose(series, horizon)?;
    let history = series.filled();
    let points = method
        .predict(&history, horizon, DAY)
        .or_else(|_| Method::Persistence.predict(&history, horizon, DAY))?;
    let bands = step_bands(series, method, horizon);
    let end = series.end();
    Ok(SeriesForecast {
        method,
        points: points
            .into_iter()
            .enumerate()
            .map(|(i, value)| {
                let (lo, hi) = bands
                    .get(i)
                    .copied()
                    .flatten()
                    .unwrap_or_else(|| short_history_band(&history, i + 1));
                ForecastPoint {
                    hour: end.plus(i as i64),
                    value,
                    lower: value + lo,
                    upper: value + hi,
                }
            })
            .collect(),
    })
}

/// The method for a forecast of the next `horizon` hours. A backtest at
/// the last step alone cannot tell persistence from the same hour
/// yesterday at a horizon of a day (both forecast the value a day before
/// the target), yet over the hours in between they differ; so the
/// candidates are scored at the middle step too and the lowest sum of
/// the two MAEs wins, a fitted model again needing a 2 % margin over the
/// best baseline.
fn choose(series: &Series, horizon: usize) -> Result<Method> {
    let last = select(series, horizon, DAY, DAY)?;
    if horizon < 2 || last.maes.is_empty() {
        return Ok(last.method);
    }
    let middle = select(series, horizon.div_ceil(2), DAY, DAY)?;
    let totals: Vec<(Method, f64)> = last
        .maes
        .iter()
        .filter_map(|a| {
            let b = middle.maes.iter().find(|b| b.method == a.method)?;
            Some((a.method, a.mae + b.mae))
        })
        .collect();
    let lowest = |fitted: Option<bool>| {
        totals
            .iter()
            .copied()
            .filter(|(m, _)| fitted.is_none_or(|f| m.is_fitted() == f))
            .reduce(|a, b| if b.1 < a.1 { b } else { a })
    };
    Ok(match (lowest(None), lowest(Some(false))) {
        (Some((best, total)), Some((baseline, base_total)))
            if best.is_fitted() && total > (1.0 - FITTED_MARGIN) * base_total =>
        {
            baseline
        }
        (Some((best, _)), _) => best,
        (None, _) => last.method,
    })
}

/// For each step 1..=horizon, the 10 % and 90 % quantiles of `method`'s
/// errors at that step, from forecasts made every six hours over the last
/// two weeks of the series (`None` where fewer than ten were made).
fn step_bands(series: &Series, method: Method, horizon: usize) -> Vec<Option<(f64, f64)>> {
    let span = selection_span(DAY).min(series.len() / 2) as i64;
    let mut errors: Vec<Vec<f64>> = vec![Vec::new(); horizon];
    let last_cut = series.end().plus(-1);
    let mut cut = series.end().plus(-span - horizon as i64);
    while cut <= last_cut {
        let history = series.until(cut).filled();
        if let Ok(points) = method.predict(&history, horizon, DAY) {
            for (i, p) in points.iter().enumerate() {
                if let (Some(y), Some(slot)) = (series.get(cut.plus(i as i64)), errors.get_mut(i)) {
                    slot.push(y - p);
                }
            }
        }
        cut = cut.plus(6);
    }
    errors
        .into_iter()
        .map(|mut e| {
            if e.len() < 10 {
                return None;
            }
            e.sort_by(f64::total_cmp);
            let q = |p: f64| {
                e.get(((e.len() - 1) as f64 * p).round() as usize)
                    .copied()
                    .unwrap_or(0.0)
            };
            Some((q(0.1), q(0.9)))
        })
        .collect()
}

/// The hour in which the cumulative forecast spend, summed hour by hour
/// from the forecast's first hour, reaches `remaining_budget`; `None` if
/// it does not within the forecast. Negative forecasts count as zero
/// (spend does not flow back). A budget already at or below zero runs out
/// in the first hour. Pass a forecast of upper bounds to get the earliest
/// plausible run-out.
pub fn run_out(forecast: &SeriesForecast, remaining_budget: f64) -> Option<Hour> {
    let mut spent = 0.0;
    for point in &forecast.points {
        spent += point.value.max(0.0);
        if spent >= remaining_budget {
            return Some(point.hour);
        }
    }
    None
}

/// The same forecast with each point replaced by its interval's upper
/// end: spend at the high end of what is likely, for a cautious
/// [`run_out`].
pub fn upper_bounds(forecast: &SeriesForecast) -> SeriesForecast {
    SeriesForecast {
        method: forecast.method,
        points: forecast
            .points
            .iter()
            .map(|p| ForecastPoint {
                value: p.upper,
                ..*p
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(hours: usize, value: f64) -> Series {
        Series::new(Hour(1_000), vec![Some(value); hours]).unwrap()
    }

    fn spend(values: &[f64]) -> SeriesForecast {
        SeriesForecast {
            method: Method::Persistence,
            points: values
                .iter()
                .enumerate()
                .map(|(i, &v)| ForecastPoint {
                    hour: Hour(10 + i as i64),
                    value: v,
                    lower: v - 1.0,
                    upper: v + 1.0,
                })
                .collect(),
        }
    }

    #[test]
    fn run_out_is_the_hour_the_cumulative_spend_reaches_the_budget() {
        let f = spend(&[2.0, 3.0, -4.0, 5.0]);
        assert_eq!(run_out(&f, 1.0), Some(Hour(10)));
        assert_eq!(run_out(&f, 5.0), Some(Hour(11)), "2 + 3 reaches 5 exactly");
        assert_eq!(
            run_out(&f, 6.0),
            Some(Hour(13)),
            "the negative hour does not give money back"
        );
        assert_eq!(run_out(&f, 10.1), None);
        assert_eq!(run_out(&f, 0.0), Some(Hour(10)));
        assert_eq!(run_out(&upper_bounds(&f), 6.0), Some(Hour(11)));
        assert_eq!(run_out(&spend(&[]), 1.0), None);
    }

    #[test]
    fn forecast_continues_after_the_series_with_intervals_around_the_points() {
        let values = (0..21 * 24)
            .map(|h| Some(50.0 + 10.0 * ((h % 24) as f64 / 24.0 * std::f64::consts::TAU).cos()))
            .collect();
        let s = Series::new(Hour(0), values).unwrap();
        let f = forecast(&s, 30).unwrap();
        assert_eq!(f.points.len(), 30);
        assert_eq!(f.points[0].hour, Hour(21 * 24));
        for p in &f.points {
            let truth = 50.0 + 10.0 * ((p.hour.0 % 24) as f64 / 24.0 * std::f64::consts::TAU).cos();
            assert!((p.value - truth).abs() < 2.0, "{p:?} vs {truth}");
            assert!(p.lower <= p.value && p.value <= p.upper, "{p:?}");
        }
    }

    #[test]
    fn short_history_gets_persistence_and_an_interval_wider_than_its_range() {
        let values = [10.0, 12.0, 11.0, 30.0, 12.0, 11.0]
            .iter()
            .map(|v| Some(*v))
            .collect();
        let s = Series::new(Hour(0), values).unwrap();
        let f = forecast(&s, 3).unwrap();
        assert_eq!(f.method, Method::Persistence);
        for p in &f.points {
            assert_eq!(p.value, 11.0);
            assert!(p.upper - p.lower >= 2.0 * 20.0, "{p:?}");
        }
        // A constant short series still gets an interval, not a point.
        let f = forecast(&flat(5, 8.0), 1).unwrap();
        assert!(f.points[0].upper - f.points[0].lower >= 4.0, "{f:?}");
    }

    #[test]
    fn a_daily_shape_is_kept_over_the_next_day() {
        // At a horizon of a day persistence and the same hour yesterday
        // score alike at the last step; only the latter keeps the shape.
        let values = (0..4 * 24)
            .map(|h| Some(if h % 24 < 8 { 1.0 } else { 3.0 }))
            .collect();
        let s = Series::new(Hour(480_000), values).unwrap();
        let f = forecast(&s, 24).unwrap();
        let total: f64 = f.points.iter().map(|p| p.value).sum();
        assert!((total - 56.0).abs() < 1.0, "{total} by {}", f.method);
    }

    #[test]
    fn bad_requests_are_errors() {
        assert!(matches!(
            forecast(&flat(50, 1.0), 0),
            Err(Error::ZeroHorizon)
        ));
        let gaps = Series::new(Hour(0), vec![None; 3]).unwrap();
        assert!(matches!(forecast(&gaps, 2), Err(Error::Empty)));
        assert_eq!(
            forecast(&flat(50, 1.0), 10_000).unwrap().points.len(),
            MAX_HORIZON
        );
    }
}
