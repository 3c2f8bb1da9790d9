//! What the analytics API answers about the future: a customer's spend
//! for the next day, week and month with 80 % intervals and when each cap
//! runs out at that rate ([`SpendReport`]), a supplier's earnings and
//! utilisation ([`EarningsReport`]), and the market's prices, supply and
//! demand (leases started) per
//! GPU model ([`MarketReport`]). The CLI reads the same types.

use std::sync::Arc;

use rigmesh_forecast::plan::{run_out, upper_bounds};
use rigmesh_forecast::SeriesForecast;
use rigmesh_protocol::{Credits, Id, UnixMillis};
use serde::{Deserialize, Serialize};

use super::book::{hour_at, millis_of, Kind, Unit};
use super::forecasts::{Forecast, Forecasts};
use crate::customer::commands::{CustomerCommand, LeaseStatus, RequestError};
use crate::customer::report::{BudgetReport, LeaseState};
use crate::error::{Error, Result};

/// The spans every money forecast is summed over: a day, a week, 30 days.
pub const SPANS: [(&str, usize); 3] = [("24h", 24), ("7d", 168), ("30d", 720)];

/// Most GPU models in a market report (the most offered first).
pub const MAX_MODELS: usize = 32;

/// One forecast hour, in the unit the series is shown in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointView {
    /// The hour's first millisecond.
    pub at: UnixMillis,
    /// The point forecast.
    pub value: f64,
    /// Lower end of the 80 % interval.
    pub lower: f64,
    /// Upper end of the 80 % interval.
    pub upper: f64,
}

/// A series' forecast as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastView {
    /// The series.
    pub series: String,
    /// A flow (summed over an hour: spend, leases started) or a level
    /// (sampled: a price, offers, a share).
    pub kind: Kind,
    /// The unit of the values (`credits`, `gpu_hours`, `percent`, `count`).
    pub unit: String,
    /// The method chosen by the series' own backtest.
    pub method: String,
    /// Hours of history it saw. Under two days the method is persistence
    /// and the interval is wide.
    pub history_hours: usize,
    /// The hours forecast, from the current one on.
    pub points: Vec<PointView>,
}

impl ForecastView {
    fn of(f: &Forecast) -> Self {
        let show = |v: f64| f.unit.show(v);
        ForecastView {
            series: f.name.clone(),
            kind: f.kind,
            unit: f.unit.shown_as().to_owned(),
            method: f.method.name().to_owned(),
            history_hours: f.history_hours,
            points: f
                .points
                .iter()
                .map(|p| PointView {
                    at: millis_of(p.hour),
                    value: show(p.value),
                    lower: show(p.lower),
                    upper: show(p.upper),
                })
                .collect(),
        }
    }
}

/// A money forecast summed over a span, exact to the micro-credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyTotal {
    /// `24h`, `7d` or `30d`.
    pub span: String,
    /// Hours summed.
    pub hours: usize,
    /// The method of that span's forecast.
    pub method: String,
    /// The sum of the point forecasts.
    pub value: Credits,
    /// The sum of the hours' lower ends: the interval of a sum is at most
    /// this wide, so it holds the total at least as often as the hours'.
    pub lower: Credits,
    /// The sum of the hours' upper ends.
    pub upper: Credits,
}

fn credits(micro: f64) -> Credits {
    Credits::from_units(micro.round().clamp(i64::MIN as f64, i64::MAX as f64) as i64)
}

fn total(span: &str, f: &Forecast) -> MoneyTotal {
    let sum = |g: fn(&rigmesh_forecast::ForecastPoint) -> f64| f.points.iter().map(g).sum::<f64>();
    MoneyTotal {
        span: span.to_owned(),
        hours: f.points.len(),
        method: f.method.name().to_owned(),
        value: credits(sum(|p| p.value)),
        lower: credits(sum(|p| p.lower)),
        upper: credits(sum(|p| p.upper)),
    }
}

async fn totals(forecasts: &Arc<Forecasts>, name: &str) -> Result<Vec<MoneyTotal>> {
    let mut out = Vec::new();
    for (span, hours) in SPANS {
        if let Some(f) = forecasts.forecast(name, hours).await? {
            out.push(total(span, &f));
        }
    }
    Ok(out)
}

/// When a cap runs out at the forecast (or known) rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapRunOut {
    /// The lease whose cap it is; `None` for the account's.
    pub lease: Option<Id>,
    /// The cap.
    pub cap: Credits,
    /// Spent against it so far.
    pub spent: Credits,
    /// What is left.
    pub remaining: Credits,
    /// The hour in which the spend reaches the cap at the forecast rate
    /// (its first millisecond); `None` when not within the horizon.
    pub run_out_at: Option<UnixMillis>,
    /// The same at the upper end of the interval: the earliest plausible.
    pub earliest_run_out_at: Option<UnixMillis>,
    /// How it was worked out.
    pub basis: String,
}

/// `GET /v1/forecast/spend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpendReport {
    /// Hours forecast in `spend`.
    pub horizon_hours: usize,
    /// When the report was made.
    pub generated_at: UnixMillis,
    /// Spend per hour, credits; `None` before any window was paid.
    pub spend: Option<ForecastView>,
    /// GPU-hours per hour.
    pub gpu_hours: Option<ForecastView>,
    /// Spend over the next 24 h, 7 d and 30 d.
    pub totals: Vec<MoneyTotal>,
    /// The account's cap, when one is set.
    pub account_cap: Option<CapRunOut>,
    /// The caps of running leases.
    pub lease_caps: Vec<CapRunOut>,
    /// The leases running now.
    pub running_leases: Vec<LeaseStatus>,
}

async fn ask<T>(
    customer: &tokio::sync::mpsc::Sender<CustomerCommand>,
    make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> CustomerCommand,
) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    customer.send(make(tx)).await.map_err(|_| Error::Stopped)?;
    rx.await.map_err(|_| Error::Stopped)
}

/// The account cap's run-out from the spend forecast `f`.
pub fn account_run_out(
    cap: Credits,
    spent: Credits,
    f: Option<&Forecast>,
    now: UnixMillis,
) -> CapRunOut {
    let remaining = cap
        .checked_sub(spent)
        .unwrap_or(Credits::ZERO)
        .max(Credits::ZERO);
    let at = |forecast: &SeriesForecast| {
        if remaining.is_zero() {
            return Some(now);
        }
        run_out(forecast, remaining.units() as f64).map(millis_of)
    };
    let (run_out_at, earliest_run_out_at, basis) = match f {
        Some(f) => {
            let forecast = SeriesForecast {
                method: f.method,
                points: f.points.clone(),
            };
            (
                at(&forecast),
                at(&upper_bounds(&forecast)),
                format!(
                    "the hourly spend forecast ({}) summed over the next {} h",
                    f.method.name(),
                    f.points.len()
                ),
            )
        }
        None => (
            remaining.is_zero().then_some(now),
            remaining.is_zero().then_some(now),
            "no spend recorded yet".to_owned(),
        ),
    };
    CapRunOut {
        lease: None,
        cap,
        spent,
        remaining,
        run_out_at,
        earliest_run_out_at,
        basis,
    }
}

/// A running lease's cap: its spend rate is known (price times GPUs), so
/// its run-out needs no forecast; `None` for the run-out when the lease
/// ends first or is not running.
pub fn lease_run_out(
    lease: &LeaseStatus,
    cap: Credits,
    spent: Credits,
    horizon_hours: usize,
    now: UnixMillis,
) -> CapRunOut {
    let remaining = cap
        .checked_sub(spent)
        .unwrap_or(Credits::ZERO)
        .max(Credits::ZERO);
    let rate = (lease.price_per_gpu_hour.units() as i128).saturating_mul(lease.gpus.len() as i128);
    let reached = lease.state == LeaseState::Running && cap < lease.max_cost && rate > 0;
    let at = reached
        .then(|| {
            let ms = (remaining.units() as i128).saturating_mul(3_600_000) / rate;
            u64::try_from(ms).ok().map(|ms| now.plus_ms(ms))
        })
        .flatten()
        .filter(|at| at.0 <= now.0.saturating_add(horizon_hours as u64 * 3_600_000));
    CapRunOut {
        lease: Some(lease.lease),
        cap,
        spent,
        remaining,
        run_out_at: at,
        earliest_run_out_at: at,
        basis: format!(
            "{} GPU(s) at {} credits per GPU-hour",
            lease.gpus.len(),
            lease.price_per_gpu_hour
        ),
    }
}

/// Why the customer role did not answer a report: busy, or failed.
fn refused(err: RequestError) -> Error {
    match err {
        RequestError::Busy(reason) => Error::Busy(reason),
        other => Error::Store(other.to_string()),
    }
}

/// Builds the spend report of a customer node for `horizon_hours`.
pub async fn spend(
    forecasts: &Arc<Forecasts>,
    customer: &tokio::sync::mpsc::Sender<CustomerCommand>,
    horizon_hours: usize,
) -> Result<SpendReport> {
    let now = UnixMillis::now();
    let spend = forecasts.forecast("spend", horizon_hours).await?;
    let gpu_hours = forecasts.forecast("gpu_hours", horizon_hours).await?;
    let totals = totals(forecasts, "spend").await?;
    let budget: BudgetReport = ask(customer, CustomerCommand::Budget)
        .await?
        .map_err(refused)?;
    let leases = ask(customer, CustomerCommand::Leases)
        .await?
        .map_err(refused)?;
    // A forecast of the next day is the surest: a cap it reaches is taken
    // from it, whatever the horizon asked for; the longer one says the rest.
    let day = if horizon_hours > 24 {
        forecasts.forecast("spend", 24).await?
    } else {
        spend.clone()
    };
    let account_cap = budget.account.cap.map(|cap| {
        let soon = account_run_out(cap, budget.account.spent, day.as_deref(), now);
        if soon.run_out_at.is_some() {
            soon
        } else {
            account_run_out(cap, budget.account.spent, spend.as_deref(), now)
        }
    });
    let lease_caps = budget
        .leases
        .iter()
        .filter_map(|l| {
            let cap = l.cap.cap?;
            let status = leases.iter().find(|s| s.lease == l.lease)?;
            (status.state == LeaseState::Running)
                .then(|| lease_run_out(status, cap, l.cap.spent, horizon_hours, now))
        })
        .collect();
    Ok(SpendReport {
        horizon_hours,
        generated_at: now,
        spend: spend.as_deref().map(ForecastView::of),
        gpu_hours: gpu_hours.as_deref().map(ForecastView::of),
        totals,
        account_cap,
        lease_caps,
        running_leases: leases
            .into_iter()
            .filter(|l| l.state == LeaseState::Running)
            .collect(),
    })
}

/// `GET /v1/forecast/earnings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarningsReport {
    /// Hours forecast.
    pub horizon_hours: usize,
    /// When the report was made.
    pub generated_at: UnixMillis,
    /// Earnings per hour (attested time at the lease price), credits.
    pub earnings: Option<ForecastView>,
    /// GPU-hours sold per hour.
    pub gpu_hours_sold: Option<ForecastView>,
    /// Share of the GPUs leased, percent.
    pub utilisation: Option<ForecastView>,
    /// Earnings over the next 24 h, 7 d and 30 d.
    pub totals: Vec<MoneyTotal>,
}

/// Builds a supplier's earnings report for `horizon_hours`.
pub async fn earnings(forecasts: &Arc<Forecasts>, horizon_hours: usize) -> Result<EarningsReport> {
    let view = |f: Option<Arc<Forecast>>| f.as_deref().map(ForecastView::of);
    Ok(EarningsReport {
        horizon_hours,
        generated_at: UnixMillis::now(),
        earnings: view(forecasts.forecast("earnings", horizon_hours).await?),
        gpu_hours_sold: view(forecasts.forecast("gpu_hours_sold", horizon_hours).await?),
        utilisation: view(forecasts.forecast("utilisation", horizon_hours).await?),
        totals: totals(forecasts, "earnings").await?,
    })
}

/// One GPU model's market forecast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelForecast {
    /// The GPU model, as in series names.
    pub model: String,
    /// The latest 10th, 50th and 90th percentile of the live offers'
    /// prices per GPU-hour, credits.
    pub latest_price: Option<[f64; 3]>,
    /// The median price per GPU-hour.
    pub price: Option<ForecastView>,
    /// Live offers: the supply customers can lease.
    pub offers: Option<ForecastView>,
    /// Leases started per hour on this model's offers: the demand.
    pub leases_started: Option<ForecastView>,
}

/// A model's latest price percentiles (p10, p50, p90), credits.
type LatestPrice = Option<[f64; 3]>;

/// `GET /v1/forecast/market`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarketReport {
    /// Hours forecast.
    pub horizon_hours: usize,
    /// When the report was made.
    pub generated_at: UnixMillis,
    /// Leases started per hour in the whole market, every model.
    pub leases_started: Option<ForecastView>,
    /// Each GPU model seen in the gossip store.
    pub models: Vec<ModelForecast>,
}

/// Builds the market report for `horizon_hours`.
pub async fn market(forecasts: &Arc<Forecasts>, horizon_hours: usize) -> Result<MarketReport> {
    let book = forecasts.book().clone();
    let now = hour_at(UnixMillis::now());
    let (models, latest) =
        tokio::task::spawn_blocking(move || -> Result<(Vec<String>, Vec<LatestPrice>)> {
            let models: Vec<String> = book
                .names()?
                .into_iter()
                .filter_map(|n| {
                    n.strip_prefix("market/")
                        .and_then(|r| r.strip_suffix("/offers"))
                        .map(str::to_owned)
                })
                .take(MAX_MODELS)
                .collect();
            let mut latest = Vec::new();
            for model in &models {
                let last = |what: &str| -> Result<Option<f64>> {
                    Ok(book
                        .read(&format!("market/{model}/{what}"), now.plus(-24))?
                        .last()
                        .map(|(_, v)| Unit::MicroCredits.show(*v as f64)))
                };
                let prices = match (last("price_p10")?, last("price_p50")?, last("price_p90")?) {
                    (Some(a), Some(b), Some(c)) => Some([a, b, c]),
                    _ => None,
                };
                latest.push(prices);
            }
            Ok((models, latest))
        })
        .await
        .map_err(|e| Error::Store(format!("reading the market series: {e}")))??;
    let mut out = Vec::new();
    for (model, latest_price) in models.into_iter().zip(latest) {
        let price = forecasts
            .forecast(&format!("market/{model}/price_p50"), horizon_hours)
            .await?;
        let offers = forecasts
            .forecast(&format!("market/{model}/offers"), horizon_hours)
            .await?;
        let leases_started = forecasts
            .forecast(&format!("market/{model}/leases_started"), horizon_hours)
            .await?;
        out.push(ModelForecast {
            model,
            latest_price,
            price: price.as_deref().map(ForecastView::of),
            offers: offers.as_deref().map(ForecastView::of),
            leases_started: leases_started.as_deref().map(ForecastView::of),
        });
    }
    let leases_started = forecasts
        .forecast("market/leases_started", horizon_hours)
        .await?;
    Ok(MarketReport {
        horizon_hours,
        generated_at: UnixMillis::now(),
        leases_started: leases_started.as_deref().map(ForecastView::of),
        models: out,
    })
}
