//! The candidate models: three naive baselines and the statistical models
//! from `augurs` (ETS, and MSTL with an ETS trend). Each turns a gap-free
//! history into point forecasts for the next hours; prediction intervals
//! come from the backtest's errors (see [`crate::backtest`]), the same way
//! for every method, so they are comparable and honest about the horizon.

use augurs::ets::{trend::AutoETSTrendModel, AutoETS};
use augurs::mstl::MSTLModel;
use augurs::{Fit, Predict};

use crate::{Error, Result};

/// Hours in a day: the default season of GPU demand. Every method takes
/// the season (`season`, in hours) as an argument; the long season is
/// seven of them (a week, for a daily season).
pub const DAY: usize = 24;
/// The long season is this many short ones.
pub const SEASONS_PER_LONG_SEASON: usize = 7;

/// The statistical models fit on at most this many recent hours: eight
/// long seasons (eight weeks), enough for the weekly season several times
/// over, and it keeps a fit fast however long the series is.
pub fn fit_window(season: usize) -> usize {
    8 * SEASONS_PER_LONG_SEASON * season
}

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
    /// A direct regression of the value `h` hours ahead on the latest
    /// value and the means of the last season and long season, with Huber
    /// weights, fit per step on the last four long seasons (see
    /// [`crate::regression`]).
    LevelRegression,
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
    pub const CANDIDATES: [Method; 7] = [
        Method::Persistence,
        Method::SameHourYesterday,
        Method::SameHourLastWeek,
        Method::LevelRegression,
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
            Method::LevelRegression => "level_regression",
            Method::Ets => "ets",
            Method::MstlEts => "mstl_ets",
            Method::MstlEtsYesterday => "mstl_ets+yesterday",
        }
    }

    /// The fewest hours of history this method needs with a season of
    /// `season` hours.
    pub fn min_history(self, season: usize) -> usize {
        match self {
            Method::Persistence => 1,
            Method::SameHourYesterday => season,
            Method::SameHourLastWeek => SEASONS_PER_LONG_SEASON * season,
            Method::LevelRegression => (SEASONS_PER_LONG_SEASON + 2) * season,
            Method::Ets => 2 * season,
            // MSTL needs two whole seasons of the shortest period.
            Method::MstlEts | Method::MstlEtsYesterday => 2 * season,
        }
    }

    /// True for the methods that cost little enough to run afresh for
    /// every target of a backtest, whatever its refit interval: the
    /// baselines and the regression.
    pub fn is_cheap(self) -> bool {
        !matches!(
            self,
            Method::Ets | Method::MstlEts | Method::MstlEtsYesterday
        )
    }

    /// True for the models fitted to the data (all but the baselines).
    pub fn is_fitted(self) -> bool {
        matches!(
            self,
            Method::LevelRegression | Method::Ets | Method::MstlEts | Method::MstlEtsYesterday
        )
    }

    /// Point forecasts for the `horizon` hours after the end of `history`
    /// (which has no gaps; see [`crate::Series::filled`]), with a season
    /// of `season` hours (at least 2).
    pub fn predict(self, history: &[f64], horizon: usize, season: usize) -> Result<Vec<f64>> {
        self.predict_steps(history, 1, horizon, season)
    }

    /// Like [`Method::predict`], for the steps `first..=last` only (1 is
    /// the hour after `history`): a backtest at horizon `h` needs no
    /// forecast of the hours before `h`, and the regression skips fitting
    /// them.
    pub fn predict_steps(
        self,
        history: &[f64],
        first: usize,
        last: usize,
        season: usize,
    ) -> Result<Vec<f64>> {
        let first = first.max(1);
        if self == Method::LevelRegression {
            let season = season.max(2);
            if history.len() < self.min_history(season) {
                return Err(self.too_short(history.len(), season));
            }
            let long = SEASONS_PER_LONG_SEASON * season;
            let points =
                crate::regression::forecast(history, first..=last, season, long, 4 * long)?;
            return checked(self, points, (last + 1).saturating_sub(first));
        }
        let all = self.predict_all(history, last, season)?;
        Ok(all.into_iter().skip(first - 1).collect())
    }

    fn too_short(self, len: usize, season: usize) -> Error {
        Error::Model {
            method: self.name(),
            reason: format!(
                "needs {} hours of history, has {len}",
                self.min_history(season)
            ),
        }
    }

    fn predict_all(self, history: &[f64], horizon: usize, season: usize) -> Result<Vec<f64>> {
        let season = season.max(2);
        let long = SEASONS_PER_LONG_SEASON * season;
        if history.len() < self.min_history(season) {
            return Err(self.too_short(history.len(), season));
        }
        if !self.is_cheap() {
            // The model libraries are numeric code run on whatever a user's
            // file holds: a panic in one is this method failing, not the
            // program.
            return std::panic::catch_unwind(|| self.predict_fitted(history, horizon, season))
                .unwrap_or_else(|_| {
                    Err(Error::Model {
                        method: self.name(),
                        reason: "the model library panicked".to_owned(),
                    })
                });
        }
        match self {
            Method::Persistence => Ok(seasonal_naive(history, 1, horizon)),
            Method::SameHourYesterday => Ok(seasonal_naive(history, season, horizon)),
            Method::SameHourLastWeek => Ok(seasonal_naive(history, long, horizon)),
            _ => self.predict_fitted(history, horizon, season),
        }
    }

    fn predict_fitted(self, history: &[f64], horizon: usize, season: usize) -> Result<Vec<f64>> {
        match self {
            Method::Persistence
            | Method::SameHourYesterday
            | Method::SameHourLastWeek
            | Method::LevelRegression => self.predict(history, horizon, season),
            Method::Ets => ets(recent(history, season), horizon),
            Method::MstlEts => mstl_ets(recent(history, season), horizon, season),
            Method::MstlEtsYesterday => {
                let model = mstl_ets(recent(history, season), horizon, season)?;
                let naive = seasonal_naive(history, season, horizon);
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

fn recent(history: &[f64], season: usize) -> &[f64] {
    let skip = history.len().saturating_sub(fit_window(season));
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

fn mstl_ets(history: &[f64], horizon: usize, season: usize) -> Result<Vec<f64>> {
    let err = model_error(Method::MstlEts);
    // The weekly season only with two whole weeks to estimate it from:
    // MSTL needs two cycles of every period it is given.
    let long = SEASONS_PER_LONG_SEASON * season;
    let periods = if history.len() >= 2 * long {
        vec![season, long]
    } else {
        vec![season]
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
            Method::Persistence.predict(&history, 3, DAY).unwrap(),
            [199.0; 3]
        );
        let day = Method::SameHourYesterday
            .predict(&history, 26, DAY)
            .unwrap();
        assert_eq!(day[0], 176.0, "hour 200 is predicted by hour 176");
        assert_eq!(day[23], 199.0);
        assert_eq!(day[24], 176.0, "hour 224 is two days after hour 176");
        let week = Method::SameHourLastWeek.predict(&history, 2, DAY).unwrap();
        assert_eq!(week, [32.0, 33.0]);
    }

    #[test]
    fn statistical_models_follow_a_daily_shape() {
        let shape =
            |h: usize| 100.0 + 30.0 * ((h % DAY) as f64 / DAY as f64 * std::f64::consts::TAU).sin();
        let history: Vec<f64> = (0..21 * DAY).map(shape).collect();
        for method in [Method::MstlEts, Method::MstlEtsYesterday] {
            let points = method.predict(&history, DAY, DAY).unwrap();
            for (step, p) in points.iter().enumerate() {
                let truth = shape(history.len() + step);
                assert!(
                    (p - truth).abs() < 3.0,
                    "{method:?} step {step}: {p} vs {truth}"
                );
            }
        }
        let flat = Method::Ets.predict(&[5.0; 100], 4, DAY).unwrap();
        assert!(flat.iter().all(|p| (p - 5.0).abs() < 0.01), "{flat:?}");
    }

    #[test]
    fn too_short_a_history_is_an_error_not_a_panic() {
        for method in Method::CANDIDATES {
            let short = vec![1.0; method.min_history(DAY) - 1];
            assert!(method.predict(&short, 5, DAY).is_err(), "{method:?}");
        }
    }
}
