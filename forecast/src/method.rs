//! The candidate models: three naive baselines and the statistical models
//! from `augurs` (ETS, and MSTL with an ETS trend). Each turns a gap-free
//! history into point forecasts for the next hours; prediction intervals
//! come from the backtest's errors (see [`crate::backtest`]), the same way
//! for every method, so they are comparable and honest about the horizon.

use augurs::ets::{trend::AutoETSTrendModel, AutoETS};
use augurs::mstl::MSTLModel;
use augurs::{Fit, Predict};

use crate::{Error, Result};

/// Hours in a day and in a week: the seasons of GPU demand.
pub const DAY: usize = 24;
/// Hours in a week.
pub const WEEK: usize = 7 * DAY;

/// The statistical models fit on at most this many recent hours (eight
/// weeks): enough for the weekly season twice over, and it keeps a fit in
/// milliseconds however long the series is.
pub const FIT_WINDOW: usize = 8 * WEEK;

/// A way to forecast a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// The last value, for every hour ahead.
    Persistence,
    /// The same hour on the latest day known (a day before the target, or
    /// more when the horizon is longer than a day).
    SameHourYesterday,
    /// The same hour on the latest week known.
    SameHourLastWeek,
    /// Exponential smoothing (AutoETS, no season), chosen by AICc.
    Ets,
    /// MSTL decomposition (daily and, with two weeks of history, weekly
    /// seasons) with an AutoETS model of the deseasonalised series.
    MstlEts,
    /// The mean of MSTL+ETS and the same hour yesterday: a hedge that
    /// often beats both when the daily shape is stable but the level
    /// drifts.
    MstlEtsYesterday,
}

impl Method {
    /// The naive baselines, reported beside every model.
    pub const BASELINES: [Method; 3] = [
        Method::Persistence,
        Method::SameHourYesterday,
        Method::SameHourLastWeek,
    ];

    /// Every candidate a series' backtest chooses from.
    pub const CANDIDATES: [Method; 6] = [
        Method::Persistence,
        Method::SameHourYesterday,
        Method::SameHourLastWeek,
        Method::Ets,
        Method::MstlEts,
        Method::MstlEtsYesterday,
    ];

    /// A short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Method::Persistence => "persistence",
            Method::SameHourYesterday => "same_hour_yesterday",
            Method::SameHourLastWeek => "same_hour_last_week",
            Method::Ets => "ets",
            Method::MstlEts => "mstl_ets",
            Method::MstlEtsYesterday => "mstl_ets+yesterday",
        }
    }

    /// The fewest hours of history this method needs.
    pub fn min_history(self) -> usize {
        match self {
            Method::Persistence => 1,
            Method::SameHourYesterday => DAY,
            Method::SameHourLastWeek => WEEK,
            Method::Ets => 2 * DAY,
            // MSTL needs two whole seasons of the shortest period.
            Method::MstlEts | Method::MstlEtsYesterday => 2 * DAY,
        }
    }

    /// True for the statistical models, which cost a fit per forecast.
    pub fn is_fitted(self) -> bool {
        matches!(
            self,
            Method::Ets | Method::MstlEts | Method::MstlEtsYesterday
        )
    }

    /// Point forecasts for the `horizon` hours after the end of `history`
    /// (which has no gaps; see [`crate::Series::filled`]).
    pub fn predict(self, history: &[f64], horizon: usize) -> Result<Vec<f64>> {
        if history.len() < self.min_history() {
            return Err(Error::Model {
                method: self.name(),
                reason: format!(
                    "needs {} hours of history, has {}",
                    self.min_history(),
                    history.len()
                ),
            });
        }
        match self {
            Method::Persistence => Ok(seasonal_naive(history, 1, horizon)),
            Method::SameHourYesterday => Ok(seasonal_naive(history, DAY, horizon)),
            Method::SameHourLastWeek => Ok(seasonal_naive(history, WEEK, horizon)),
            Method::Ets => ets(recent(history), horizon),
            Method::MstlEts => mstl_ets(recent(history), horizon),
            Method::MstlEtsYesterday => {
                let model = mstl_ets(recent(history), horizon)?;
                let naive = seasonal_naive(history, DAY, horizon);
                Ok(model
                    .iter()
                    .zip(&naive)
                    .map(|(a, b)| (a + b) / 2.0)
                    .collect())
            }
        }
    }
}

impl serde::Serialize for Method {
    /// As its [`Method::name`].
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn recent(history: &[f64]) -> &[f64] {
    let skip = history.len().saturating_sub(FIT_WINDOW);
    history.get(skip..).unwrap_or(history)
}

/// The value one `period` before each target, repeating the last period
/// known when the horizon is longer. `history` is at least `period` long.
fn seasonal_naive(history: &[f64], period: usize, horizon: usize) -> Vec<f64> {
    let n = history.len();
    (1..=horizon)
        .map(|step| {
            // Whole periods back from the target until inside the history.
            let back = period * step.div_ceil(period);
            (n + step - 1)
                .checked_sub(back)
                .and_then(|i| history.get(i))
                .copied()
                .unwrap_or(f64::NAN)
        })
        .collect()
}

fn model_error(method: Method) -> impl Fn(String) -> Error {
    move |reason| Error::Model {
        method: method.name(),
        reason,
    }
}

fn checked(method: Method, points: Vec<f64>, horizon: usize) -> Result<Vec<f64>> {
    if points.len() != horizon || points.iter().any(|p| !p.is_finite()) {
        return Err(model_error(method)(
            "returned no finite forecast".to_owned(),
        ));
    }
    Ok(points)
}

fn ets(history: &[f64], horizon: usize) -> Result<Vec<f64>> {
    let err = model_error(Method::Ets);
    let fitted = AutoETS::non_seasonal()
        .fit(history)
        .map_err(|e| err(e.to_string()))?;
    let forecast = fitted
        .predict(horizon, None)
        .map_err(|e| err(e.to_string()))?;
    checked(Method::Ets, forecast.point, horizon)
}

fn mstl_ets(history: &[f64], horizon: usize) -> Result<Vec<f64>> {
    let err = model_error(Method::MstlEts);
    // The weekly season only with two whole weeks to estimate it from:
    // MSTL needs two cycles of every period it is given.
    let periods = if history.len() >= 2 * WEEK {
        vec![DAY, WEEK]
    } else {
        vec![DAY]
    };
    let trend = AutoETSTrendModel::from(AutoETS::non_seasonal());
    let fitted = MSTLModel::new(periods, trend)
        .fit(history)
        .map_err(|e| err(e.to_string()))?;
    let forecast = fitted
        .predict(horizon, None)
        .map_err(|e| err(e.to_string()))?;
    checked(Method::MstlEts, forecast.point, horizon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_baselines_look_back_whole_seasons() {
        let history: Vec<f64> = (0..200).map(f64::from).collect();
        assert_eq!(
            Method::Persistence.predict(&history, 3).unwrap(),
            [199.0; 3]
        );
        let day = Method::SameHourYesterday.predict(&history, 26).unwrap();
        assert_eq!(day[0], 176.0, "hour 200 is predicted by hour 176");
        assert_eq!(day[23], 199.0);
        assert_eq!(day[24], 176.0, "hour 224 is two days after hour 176");
        let week = Method::SameHourLastWeek.predict(&history, 2).unwrap();
        assert_eq!(week, [32.0, 33.0]);
    }

    #[test]
    fn statistical_models_follow_a_daily_shape() {
        let shape = |h: usize| 100.0 + 30.0 * ((h % DAY) as f64 / DAY as f64 * 6.283).sin();
        let history: Vec<f64> = (0..3 * WEEK).map(shape).collect();
        for method in [Method::MstlEts, Method::MstlEtsYesterday] {
            let points = method.predict(&history, DAY).unwrap();
            for (step, p) in points.iter().enumerate() {
                let truth = shape(history.len() + step);
                assert!(
                    (p - truth).abs() < 3.0,
                    "{method:?} step {step}: {p} vs {truth}"
                );
            }
        }
        let flat = Method::Ets.predict(&[5.0; 100], 4).unwrap();
        assert!(flat.iter().all(|p| (p - 5.0).abs() < 0.01), "{flat:?}");
    }

    #[test]
    fn too_short_a_history_is_an_error_not_a_panic() {
        for method in Method::CANDIDATES {
            let short = vec![1.0; method.min_history() - 1];
            assert!(method.predict(&short, 5).is_err(), "{method:?}");
        }
    }
}
