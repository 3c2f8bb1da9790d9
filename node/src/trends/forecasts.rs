//! Forecasts of the node's series with the forecast crate, cached: a
//! series' forecast at a horizon is computed once per hour (its inputs
//! change only when an hour completes) and reused until the next one.
//!
//! The model selection behind a forecast backtests every candidate and
//! can take seconds on a long series, so it runs on the blocking pool,
//! one at a time (a semaphore), and a caller waits at most
//! [`FORECAST_TIMEOUT`] for it; the work still finishes and lands in the
//! cache for the next call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rigmesh_forecast::{ForecastPoint, Hour, Method, Series};

use super::book::{check_name, Kind, SeriesBook, Unit, KEPT_HOURS};
use crate::error::{Error, Result};

/// Longest a request waits for a forecast being computed.
pub const FORECAST_TIMEOUT: Duration = Duration::from_secs(30);

/// Most forecasts kept in the cache; past it the cache starts afresh.
pub const MAX_CACHED: usize = 256;

/// The longest horizon asked for: 31 days, as the forecast crate allows.
pub const MAX_HORIZON_HOURS: usize = rigmesh_forecast::plan::MAX_HORIZON;

/// A series' forecast from the current hour on, in the series' stored
/// unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// The series.
    pub name: String,
    /// What its values count.
    pub unit: Unit,
    /// Flow or level.
    pub kind: Kind,
    /// The method its own backtest chose.
    pub method: Method,
    /// Hours of history the forecast saw (gaps included).
    pub history_hours: usize,
    /// The hour after the history: the first forecast hour.
    pub from: Hour,
    /// One point per hour from `from` on.
    pub points: Vec<ForecastPoint>,
}

/// A horizon as the API and CLI take it: `24h`, `7d`, `2w` or a number of
/// hours; 1 hour to 31 days.
pub fn parse_horizon(text: &str) -> std::result::Result<usize, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "h"),
    };
    let bad = || format!("{text:?} is not a horizon (e.g. 24h, 7d, 30d)");
    let n: usize = number.parse().map_err(|_| bad())?;
    let hours = match unit {
        "h" => Some(n),
        "d" => n.checked_mul(24),
        "w" => n.checked_mul(168),
        _ => None,
    }
    .ok_or_else(bad)?;
    if hours == 0 || hours > MAX_HORIZON_HOURS {
        return Err(format!(
            "the horizon must be 1 hour to {} days",
            MAX_HORIZON_HOURS / 24
        ));
    }
    Ok(hours)
}

/// The series `name` as the forecaster reads it: its hours before `now`
/// (the current hour is not complete), from the first one kept. A flow's
/// hours without a record are zero; a level's are gaps. `None` when it
/// has no hour before `now`.
pub fn history(book: &SeriesBook, name: &str, now: Hour) -> Result<Option<Series>> {
    let (kind, _) = check_name(name).map_err(Error::Store)?;
    let hours: Vec<(Hour, i64)> = book
        .read(name, now.plus(-KEPT_HOURS))?
        .into_iter()
        .filter(|(h, _)| *h < now)
        .collect();
    let Some(&(start, _)) = hours.first() else {
        return Ok(None);
    };
    let len = usize::try_from(now.since(start)).unwrap_or(0);
    let empty = match kind {
        Kind::Flow => Some(0.0),
        Kind::Level => None,
    };
    let mut values = vec![empty; len];
    for (hour, value) in hours {
        if let Some(slot) = usize::try_from(hour.since(start))
            .ok()
            .and_then(|i| values.get_mut(i))
        {
            *slot = Some(value as f64);
        }
    }
    Series::new(start, values)
        .map(Some)
        .map_err(|e| Error::Store(format!("series {name}: {e}")))
}

/// Forecasts `name` for `horizon` hours from `now` (blocking; no cache).
pub fn compute(
    book: &SeriesBook,
    name: &str,
    horizon: usize,
    now: Hour,
) -> Result<Option<Forecast>> {
    let (kind, unit) = check_name(name).map_err(Error::Store)?;
    let Some(series) = history(book, name, now)? else {
        return Ok(None);
    };
    if series.observed() == 0 {
        return Ok(None);
    }
    let forecast = rigmesh_forecast::forecast(&series, horizon)
        .map_err(|e| Error::Store(format!("forecasting {name}: {e}")))?;
    let mut points = forecast.points;
    if kind == Kind::Flow {
        // Spend, earnings and GPU time do not flow backwards.
        for p in &mut points {
            p.value = p.value.max(0.0);
            p.lower = p.lower.max(0.0);
            p.upper = p.upper.max(0.0);
        }
    }
    Ok(Some(Forecast {
        name: name.to_owned(),
        unit,
        kind,
        method: forecast.method,
        history_hours: series.len(),
        from: series.end(),
        points,
    }))
}

/// A series and a horizon.
type CacheKey = (String, usize);
/// The hour a forecast was made in, and the forecast (`None`: no history).
type Cached = (Hour, Option<Arc<Forecast>>);

/// The forecasts of one node's series, cached per series, horizon and
/// hour.
#[derive(Debug)]
pub struct Forecasts {
    book: Arc<SeriesBook>,
    cache: Mutex<BTreeMap<CacheKey, Cached>>,
    /// One computation at a time: the permit goes with the work, so a
    /// caller that stops waiting does not let a second one start.
    one_at_a_time: Arc<tokio::sync::Semaphore>,
}

impl Forecasts {
    /// Forecasts over `book`.
    pub fn new(book: Arc<SeriesBook>) -> Self {
        Forecasts {
            book,
            cache: Mutex::new(BTreeMap::new()),
            one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The series themselves.
    pub fn book(&self) -> &Arc<SeriesBook> {
        &self.book
    }

    fn cached(&self, name: &str, horizon: usize, now: Hour) -> Option<Option<Arc<Forecast>>> {
        let cache = self.cache.lock().ok()?;
        match cache.get(&(name.to_owned(), horizon)) {
            Some((at, forecast)) if *at == now => Some(forecast.clone()),
            _ => None,
        }
    }

    fn keep(&self, name: &str, horizon: usize, now: Hour, forecast: Option<Arc<Forecast>>) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert((name.to_owned(), horizon), (now, forecast));
        }
    }

    /// `name`'s forecast for `horizon` hours from the current hour, from
    /// the cache or computed off the executor; `None` without history.
    pub async fn forecast(
        self: &Arc<Self>,
        name: &str,
        horizon: usize,
    ) -> Result<Option<Arc<Forecast>>> {
        let now = super::book::hour_at(rigmesh_protocol::UnixMillis::now());
        if let Some(hit) = self.cached(name, horizon, now) {
            return Ok(hit);
        }
        let permit =
            tokio::time::timeout(FORECAST_TIMEOUT, self.one_at_a_time.clone().acquire_owned())
                .await
                .map_err(|_| busy())?
                .map_err(|_| busy())?;
        // Another caller may have computed it while this one waited.
        if let Some(hit) = self.cached(name, horizon, now) {
            return Ok(hit);
        }
        let this = self.clone();
        let owned = name.to_owned();
        let work = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let result = compute(&this.book, &owned, horizon, now).map(|f| f.map(Arc::new));
            if let Ok(forecast) = &result {
                this.keep(&owned, horizon, now, forecast.clone());
            }
            result
        });
        match tokio::time::timeout(FORECAST_TIMEOUT, work).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(Error::Store(format!("the forecast task failed: {e}"))),
            Err(_) => Err(busy()),
        }
    }
}

fn busy() -> Error {
    Error::Busy("a forecast is being computed; ask again in a moment".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizons_read_as_hours() {
        assert_eq!(parse_horizon("24h"), Ok(24));
        assert_eq!(parse_horizon("7d"), Ok(168));
        assert_eq!(parse_horizon("30d"), Ok(720));
        assert_eq!(parse_horizon("12"), Ok(12));
        for bad in ["", "0h", "32d", "h", "1y", "-1h", "99999999999999999999h"] {
            assert!(parse_horizon(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_flow_without_records_is_zero_and_the_current_hour_is_left_out() {
        let book = SeriesBook::in_memory();
        book.add("spend", Hour(100), 4).unwrap();
        book.add("spend", Hour(103), 2).unwrap();
        book.add("spend", Hour(105), 9).unwrap();
        let s = history(&book, "spend", Hour(105)).unwrap().unwrap();
        assert_eq!(s.start(), Hour(100));
        assert_eq!(
            s.values(),
            &[Some(4.0), Some(0.0), Some(0.0), Some(2.0), Some(0.0)]
        );
        book.set("utilisation", Hour(100), 10).unwrap();
        book.set("utilisation", Hour(102), 30).unwrap();
        let s = history(&book, "utilisation", Hour(105)).unwrap().unwrap();
        assert_eq!(s.values(), &[Some(10.0), None, Some(30.0), None, None]);
        assert!(history(&book, "earnings", Hour(105)).unwrap().is_none());
    }

    #[test]
    fn a_daily_spend_is_forecast_by_the_hour_with_an_interval() {
        let book = SeriesBook::in_memory();
        let start = Hour(24 * 20_000);
        for h in 0..4 * 24 {
            let value = if (h % 24) < 8 { 1_000_000 } else { 3_000_000 };
            book.add("spend", start.plus(h), value).unwrap();
        }
        let now = start.plus(4 * 24);
        let f = compute(&book, "spend", 24, now).unwrap().unwrap();
        assert_eq!(f.from, now);
        assert_eq!(f.points.len(), 24);
        let total: f64 = f.points.iter().map(|p| p.value).sum();
        assert!(
            (total - 56_000_000.0).abs() < 2_000_000.0,
            "{total} by {}",
            f.method
        );
        for p in &f.points {
            assert!(p.lower <= p.value && p.value <= p.upper, "{p:?}");
        }
    }
}
