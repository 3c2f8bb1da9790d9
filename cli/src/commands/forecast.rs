//! `rigmesh forecast backtest`: how well the forecaster would have done on
//! any CSV with a time column and a number column, next to the naive
//! baselines, by rolling origin (each hour forecast from the data known
//! `--horizon` hours before it).

use std::fs::File;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rigmesh_forecast::backtest::{BacktestOptions, BacktestReport, Metrics};
use rigmesh_forecast::{table, Aggregation, Hour, Series};

/// Exit code for arguments that do not fit together (as clap's own).
const EXIT_USAGE: u8 = 2;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ForecastCommand {
    /// Score the forecaster on a CSV: for each hour of the test range, a
    /// forecast from the data up to `--horizon` hours before it, for the
    /// model chosen on the data before the range and for the baselines
    /// (persistence, same hour yesterday, same hour last week). Prints
    /// MAE, MAPE, WAPE and how often the 80 % interval held the actual.
    Backtest(BacktestArgs),
    /// The customer's spend ahead (24 h, 7 d, 30 d, with 80 % intervals)
    /// and when each cap runs out at that rate, from the node's analytics
    /// listener.
    Spend(super::outlook::OutlookArgs),
    /// The supplier's earnings, GPU-hours sold and utilisation ahead.
    Earnings(super::outlook::OutlookArgs),
    /// Price and supply per GPU model ahead, from the offers the node saw.
    Market(super::outlook::OutlookArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rigmesh forecast backtest --csv nodes.csv --time-column time --value-column active \\
      --horizon 24 --test-from '2017-12-01 00:00' --test-to '2017-12-14 23:00'
  rigmesh forecast backtest --csv spend.csv --time-column at --value-column usd \\
      --agg sum --horizon 1 --test-last 7d --json

Times are read as written (YYYY-MM-DD HH:MM:SS or RFC 3339); an RFC 3339
offset does not move a row to another hour, so a daylight-saving change
shows as one doubled hour and one gap. MAPE leaves out hours whose actual
is zero.")]
pub(crate) struct BacktestArgs {
    /// The CSV file (with a header row).
    #[arg(long, value_name = "FILE")]
    csv: PathBuf,
    /// Column holding the time of each row.
    #[arg(long, value_name = "COL")]
    time_column: String,
    /// Column holding the number to forecast.
    #[arg(long, value_name = "COL")]
    value_column: String,
    /// Bucket size of the series; only hourly series are supported.
    #[arg(long, default_value = "1h", value_parser = parse_resample)]
    resample: u64,
    /// How the rows of one hour become its value.
    #[arg(long, value_enum, default_value_t = AggArg::Mean)]
    agg: AggArg,
    /// Hours between the last data a forecast may use and its target.
    #[arg(long, value_name = "HOURS", value_parser = clap::value_parser!(u64).range(1..=672))]
    horizon: u64,
    /// Test on the last part of the data, e.g. 14d, 336h or 2w.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          conflicts_with_all = ["test_from", "test_to"],
          required_unless_present_all = ["test_from", "test_to"])]
    test_last: Option<u64>,
    /// First hour of the test range (`YYYY-MM-DD HH:MM[:SS]`, RFC 3339 or
    /// a date).
    #[arg(long, value_name = "TIME", value_parser = parse_hour, requires = "test_to")]
    test_from: Option<Hour>,
    /// Last hour of the test range (inclusive).
    #[arg(long, value_name = "TIME", value_parser = parse_hour, requires = "test_from")]
    test_to: Option<Hour>,
    /// Hours in the series' season (24 for a daily cycle); the long
    /// season is seven of them.
    #[arg(long, default_value_t = 24, value_name = "HOURS",
          value_parser = clap::value_parser!(u64).range(2..=168))]
    season: u64,
    /// Refit the statistical models every this many hours (each forecast
    /// still uses no data later than its horizon allows). The baselines and
    /// the level regression are cheap and always use the latest hour.
    #[arg(long, default_value_t = 6, value_name = "HOURS",
          value_parser = clap::value_parser!(u64).range(1..=168))]
    refit_every: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AggArg {
    Mean,
    Sum,
    Max,
}

fn parse_hour(text: &str) -> Result<Hour, String> {
    Hour::parse(text).map_err(|e| e.to_string())
}

/// `14d`, `336h`, `2w` or a bare number of hours, at least one hour.
fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "h"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 14d, 336h, 2w)"))?;
    let hours = match unit {
        "h" => Some(n),
        "d" => n.checked_mul(24),
        "w" => n.checked_mul(168),
        _ => None,
    }
    .ok_or_else(|| format!("{text:?} is not a duration (e.g. 14d, 336h, 2w)"))?;
    if hours == 0 {
        return Err("the duration must be at least one hour".to_owned());
    }
    let max = rigmesh_forecast::series::MAX_HOURS as u64;
    if hours > max {
        return Err(format!("the duration must be at most {max} hours"));
    }
    Ok(hours)
}

fn parse_resample(text: &str) -> Result<u64, String> {
    match text.trim() {
        "1h" | "60m" | "3600s" => Ok(1),
        other => Err(format!("{other:?}: only hourly series (1h) are supported")),
    }
}

pub(crate) fn run(cmd: ForecastCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ForecastCommand::Backtest(args) => backtest(args),
        ForecastCommand::Spend(args) => super::outlook::spend(args),
        ForecastCommand::Earnings(args) => super::outlook::earnings(args),
        ForecastCommand::Market(args) => super::outlook::market(args),
    }
}

fn backtest(args: BacktestArgs) -> anyhow::Result<ExitCode> {
    let file = File::open(&args.csv).with_context(|| format!("opening {}", args.csv.display()))?;
    let rows = table::read_csv(file, &args.time_column, &args.value_column)
        .with_context(|| format!("reading {}", args.csv.display()))?;
    let agg = match args.agg {
        AggArg::Mean => Aggregation::Mean,
        AggArg::Sum => Aggregation::Sum,
        AggArg::Max => Aggregation::Max,
    };
    let series = Series::from_observations(rows, agg)
        .with_context(|| format!("reading {}", args.csv.display()))?;
    let (from, to) = match (args.test_last, args.test_from, args.test_to) {
        (Some(hours), _, _) => {
            let to = series.end().plus(-1);
            (to.plus(1 - hours as i64), to)
        }
        (None, Some(from), Some(to)) => (from, to),
        _ => {
            eprintln!("error: give --test-last, or --test-from with --test-to");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    if to < from {
        eprintln!("error: --test-to ({to}) is before --test-from ({from})");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let options = BacktestOptions {
        horizon: args.horizon as usize,
        from,
        to,
        refit_every: args.refit_every as usize,
        season: args.season as usize,
    };
    let bar = progress_bar();
    let report = rigmesh_forecast::backtest(&series, &options, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(if done == 0 {
            "choosing a model on the history"
        } else {
            "forecasting the test range"
        });
    });
    bar.finish_and_clear();
    let report = report.context("backtest")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json(&report, &args)?)?);
    } else {
        print_report(&report, &args);
    }
    Ok(ExitCode::SUCCESS)
}

/// A bar on stderr when it is a terminal; hidden otherwise, so logs,
/// pipes and tests see only the report.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} {bar:30} {pos}/{len} hours ({elapsed})")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// The report's fields with where the series came from.
fn json(report: &BacktestReport, args: &BacktestArgs) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::to_value(report)?;
    if let Some(fields) = value.as_object_mut() {
        fields.insert("csv".into(), args.csv.display().to_string().into());
        fields.insert("value_column".into(), args.value_column.clone().into());
        fields.insert("aggregation".into(), agg_name(args.agg).into());
    }
    Ok(value)
}

fn agg_name(agg: AggArg) -> &'static str {
    match agg {
        AggArg::Mean => "mean",
        AggArg::Sum => "sum",
        AggArg::Max => "max",
    }
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} %"))
}

fn row(name: &str, m: &Metrics) -> String {
    format!(
        "{name:<30} {mae:>10.3} {mape:>9} {wape:>9} {cov:>8.1} %",
        mae = m.mae,
        mape = percent(m.mape),
        wape = percent(m.wape),
        cov = m.coverage
    )
}

fn print_report(report: &BacktestReport, args: &BacktestArgs) {
    println!(
        "{} ({} per hour) from {}",
        args.value_column,
        agg_name(args.agg),
        args.csv.display()
    );
    println!(
        "test {} to {}: {} hours scored, horizon {} h, season {} h, models refit every {} h",
        report.from,
        report.to,
        report.model_metrics.hours,
        report.horizon,
        report.season,
        report.refit_every
    );
    println!(
        "model {}: {} ({} hours of history)",
        report.model, report.chosen_because, report.history_hours
    );
    if !report.selection.is_empty() {
        let scores: Vec<String> = report
            .selection
            .iter()
            .map(|c| format!("{} {:.3}", c.method, c.mae))
            .collect();
        println!("candidates' MAE on the history: {}", scores.join(", "));
    }
    println!();
    println!(
        "{:<30} {:>10} {:>9} {:>9} {:>10}",
        "method", "MAE", "MAPE", "WAPE", "80% cover"
    );
    println!(
        "{}",
        row(&format!("model ({})", report.model), &report.model_metrics)
    );
    for b in &report.baselines {
        println!("{}", row(b.method.name(), &b.metrics));
    }
    let zeros = report.model_metrics.mape_skipped_zeros;
    if zeros > 0 {
        println!("MAPE leaves out {zeros} hours whose actual is zero.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_hours() {
        assert_eq!(parse_duration("14d"), Ok(336));
        assert_eq!(parse_duration("2w"), Ok(336));
        assert_eq!(parse_duration("36h"), Ok(36));
        assert_eq!(parse_duration("5"), Ok(5));
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("9223372036854775808h").is_err());
        assert!(parse_duration("18446744073709551615w").is_err());
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("d").is_err());
    }
}
