//! `rigmesh forecast backtest` on a CSV written here: the printed table,
//! the JSON shape, figures checked against a hand computation, and the
//! exit codes for bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write;
use std::path::Path;

use assert_cmd::Command;

const DAYS: usize = 30;

/// The hourly truth: a daily cycle, a weekly dip and a little noise; one
/// hour of the last day is zero.
fn truth() -> Vec<f64> {
    (0..DAYS * 24)
        .map(|h| {
            if h == DAYS * 24 - 10 {
                return 0.0;
            }
            let day = ((h % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
            let weekend = if (h / 24) % 7 >= 5 { -15.0 } else { 0.0 };
            let noise = ((h * 37) % 11) as f64 - 5.0;
            100.0 + 20.0 * day + weekend + noise
        })
        .collect()
}

/// Two rows per hour (at :00 and :30, 1 above and below the hour's value,
/// so their mean is the truth), times in both formats, values quoted.
fn write_csv(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("gpus.csv");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "\"when\",region,\"busy gpus\"").unwrap();
    for (h, v) in truth().iter().enumerate() {
        let (day, hour) = (1 + h / 24, h % 24);
        writeln!(
            f,
            "2024-03-{day:02} {hour:02}:00:00,\"eu, west\",\"{}\"",
            v - 1.0
        )
        .unwrap();
        writeln!(
            f,
            "2024-03-{day:02}T{hour:02}:30:00Z,\"eu, west\",{}",
            v + 1.0
        )
        .unwrap();
    }
    path
}

fn rigmesh() -> Command {
    Command::cargo_bin("rigmesh").unwrap()
}

fn backtest(csv: &Path) -> Command {
    let mut cmd = rigmesh();
    cmd.args(["forecast", "backtest", "--csv"]).arg(csv).args([
        "--time-column",
        "when",
        "--value-column",
        "busy gpus",
    ]);
    cmd
}

#[test]
fn backtest_prints_the_model_against_the_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write_csv(dir.path());

    let out = backtest(&csv)
        .args(["--horizon", "6", "--test-last", "3d", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["horizon"], 6);
    assert_eq!(v["from"], "2024-03-28 00:00");
    assert_eq!(v["to"], "2024-03-30 23:00");
    assert_eq!(v["aggregation"], "mean");
    assert_eq!(v["model_metrics"]["hours"], 72);
    assert_eq!(v["model_metrics"]["mape_skipped_zeros"], 1);
    let model = v["model"].as_str().unwrap();
    assert!(!model.is_empty());
    let names: Vec<&str> = v["baselines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["persistence", "same_hour_yesterday", "same_hour_last_week"]
    );
    for entry in v["baselines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["metrics"])
        .chain([&v["model_metrics"]])
    {
        for key in ["mae", "mape", "wape", "coverage"] {
            let x = entry[key].as_f64().unwrap();
            assert!(x.is_finite() && x >= 0.0, "{key} = {x}");
        }
        assert!(entry["coverage"].as_f64().unwrap() <= 100.0);
    }
    assert!(!v["selection"].as_array().unwrap().is_empty());

    // Persistence at 6 h, computed by hand from the truth: the value six
    // hours before each of the last 72 hours.
    let y = truth();
    let n = y.len();
    let targets = n - 72..n;
    let errors: Vec<f64> = targets.clone().map(|t| (y[t] - y[t - 6]).abs()).collect();
    let mae = errors.iter().sum::<f64>() / 72.0;
    let nonzero: Vec<usize> = targets.clone().filter(|&t| y[t] != 0.0).collect();
    let mape = 100.0
        * nonzero
            .iter()
            .map(|&t| (y[t] - y[t - 6]).abs() / y[t])
            .sum::<f64>()
        / nonzero.len() as f64;
    let wape = 100.0 * errors.iter().sum::<f64>() / targets.map(|t| y[t].abs()).sum::<f64>();
    let persistence = &v["baselines"][0]["metrics"];
    assert!((persistence["mae"].as_f64().unwrap() - mae).abs() < 1e-9);
    assert!((persistence["mape"].as_f64().unwrap() - mape).abs() < 1e-9);
    assert!((persistence["wape"].as_f64().unwrap() - wape).abs() < 1e-9);

    // A daily cycle six hours ahead: a model must beat persistence by far.
    let model_mae = v["model_metrics"]["mae"].as_f64().unwrap();
    assert!(
        model_mae < 0.5 * mae,
        "model {model} MAE {model_mae} vs {mae}"
    );

    // The same run as a table.
    let text = String::from_utf8(
        backtest(&csv)
            .args(["--horizon", "6", "--test-last", "72h"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    assert!(
        text.contains("test 2024-03-28 00:00 to 2024-03-30 23:00: 72 hours scored, horizon 6 h"),
        "{text}"
    );
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in {text}"))
            .to_owned()
    };
    let persistence_line = line("persistence ");
    assert!(
        persistence_line.contains(&format!("{mae:.3}")),
        "{persistence_line} lacks MAE {mae:.3}"
    );
    assert!(persistence_line.contains(&format!("{mape:.2} %")));
    line("same_hour_yesterday");
    line("same_hour_last_week");
    assert!(line("model (").contains(&format!("{model_mae:.3}")));
    assert!(text.contains("MAPE leaves out 1 hours whose actual is zero."));
}

#[test]
fn test_range_by_dates_and_aggregations() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write_csv(dir.path());
    let out = backtest(&csv)
        .args(["--horizon", "1", "--agg", "sum", "--json"])
        .args(["--test-from", "2024-03-29", "--test-to", "2024-03-29 11:00"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["model_metrics"]["hours"], 12);
    assert_eq!(v["aggregation"], "sum");
    // Summed, each hour is twice the truth: so is persistence's MAE.
    let y = truth();
    let start = 28 * 24;
    let mae = (start..start + 12)
        .map(|t| 2.0 * (y[t] - y[t - 1]).abs())
        .sum::<f64>()
        / 12.0;
    let got = v["baselines"][0]["metrics"]["mae"].as_f64().unwrap();
    assert!((got - mae).abs() < 1e-9, "{got} vs {mae}");
}

/// Runs a bad command and returns its stderr, checking the exit code and
/// that the complaint is one line, not a panic.
fn fails(cmd: &mut Command, code: i32) -> String {
    let out = cmd.assert().code(code).get_output().clone();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    if code == 1 {
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    assert!(out.stdout.is_empty());
    err
}

#[test]
fn bad_input_is_a_one_line_error_with_the_right_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write_csv(dir.path());

    let err = fails(
        rigmesh()
            .args(["forecast", "backtest", "--csv"])
            .arg(&csv)
            .args(["--time-column", "when", "--value-column", "idle"])
            .args(["--horizon", "1", "--test-last", "1d"]),
        1,
    );
    assert!(err.contains("no column \"idle\""), "{err}");

    let err = fails(
        backtest(&csv).args([
            "--horizon",
            "1",
            "--test-from",
            "2025-01-01",
            "--test-to",
            "2025-01-02",
        ]),
        1,
    );
    assert!(err.contains("no observed hour to score"), "{err}");

    let err = fails(
        backtest(&csv).args(["--horizon", "0", "--test-last", "1d"]),
        2,
    );
    assert!(err.contains("--horizon"), "{err}");
    fails(backtest(&csv).args(["--horizon", "1"]), 2);
    fails(
        backtest(&csv).args([
            "--horizon",
            "1",
            "--test-last",
            "1d",
            "--test-from",
            "2024-03-02",
        ]),
        2,
    );
    fails(
        backtest(&csv).args([
            "--horizon",
            "1",
            "--test-from",
            "2024-03-05",
            "--test-to",
            "2024-03-02",
        ]),
        2,
    );
    fails(
        backtest(&csv).args(["--horizon", "1", "--test-last", "1d", "--resample", "15m"]),
        2,
    );

    let bad_time = dir.path().join("bad_time.csv");
    std::fs::write(
        &bad_time,
        "when,busy gpus\n2024-03-01 00:00:00,5\n03/01/2024 01:00,6\n",
    )
    .unwrap();
    let err = fails(
        backtest(&bad_time).args(["--horizon", "1", "--test-last", "1h"]),
        1,
    );
    assert!(err.contains("line 3, column \"when\""), "{err}");

    let bad_number = dir.path().join("bad_number.csv");
    std::fs::write(&bad_number, "when,busy gpus\n2024-03-01 00:00:00,five\n").unwrap();
    let err = fails(
        backtest(&bad_number).args(["--horizon", "1", "--test-last", "1h"]),
        1,
    );
    assert!(err.contains("\"five\" is not a number"), "{err}");

    let err = fails(
        backtest(&dir.path().join("missing.csv")).args(["--horizon", "1", "--test-last", "1h"]),
        1,
    );
    assert!(err.contains("missing.csv"), "{err}");
}
