//! `rigmesh forecast spend|market` through the binary against a customer
//! node run with `rigmesh node run`: four days of hourly spend written
//! into its series store before it starts, an account cap set with
//! `rigmesh budget set`, then the forecast as text and as JSON, and clear
//! refusals of bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{interrupt, printed, start_with};
use rigmesh_forecast::Hour;
use rigmesh_node::trends::SeriesBook;

/// Micro-credits spent in `hour`: one credit an hour at night (00-08
/// UTC), three by day.
fn spend_at(hour: Hour) -> i64 {
    if hour.0.rem_euclid(24) < 8 {
        1_000_000
    } else {
        3_000_000
    }
}

fn this_hour() -> Hour {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Hour::containing(secs as i64)
}

fn rigmesh(args: &[&str], api: &str, dir: &Path) -> Output {
    Command::new(assert_cmd::cargo::cargo_bin("rigmesh"))
        .args(args)
        .args(["--api", api, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn forecast_spend_shows_the_days_ahead_and_the_caps_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("customer");
    let now = this_hour();
    {
        let book = SeriesBook::open(&data.join("series")).unwrap();
        for h in 1..=96 {
            book.add("spend", now.plus(-h), spend_at(now.plus(-h)))
                .unwrap();
        }
        book.flush().unwrap();
    }
    let (node, lines) = start_with(&data, &["--role", "customer"]);
    let customer_api = printed(&lines, "customer api on http://");
    let analytics_api = printed(&lines, "analytics api on http://");
    ok(rigmesh(
        &["budget", "set", "--account", "30"],
        &customer_api,
        &data,
    ));

    let report: serde_json::Value = serde_json::from_str(&ok(rigmesh(
        &["forecast", "spend", "--horizon", "24h", "--json"],
        &analytics_api,
        &data,
    )))
    .unwrap();
    let day: f64 = report["totals"][0]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((day - 56.0).abs() < 3.0, "24 h spend {day}: {report}");
    assert_eq!(report["account_cap"]["cap"], "30");
    let run_out = report["account_cap"]["run_out_at"].as_u64().unwrap();
    let mut sum = 0;
    let mut truth = now;
    for h in 0..24 {
        sum += spend_at(now.plus(h));
        if sum >= 30_000_000 {
            truth = now.plus(h);
            break;
        }
    }
    let hour = Hour((run_out / 3_600_000) as i64);
    assert!(hour.since(truth).abs() <= 1, "run-out {hour} vs {truth}");

    // The same figures for people.
    let text = ok(rigmesh(&["forecast", "spend"], &analytics_api, &data));
    println!("{text}");
    let total = report["totals"][0]["value"].as_str().unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("spend next 24h") && l.contains(total)),
        "{text}"
    );
    let expected = format!("{}", Hour((run_out / 3_600_000) as i64));
    let cap_line = text
        .lines()
        .find(|l| l.starts_with("account cap 30 credits"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        cap_line.contains("at this rate reached at") && cap_line.contains(&expected[..13]),
        "{cap_line} should name {expected}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("  20")).count(),
        24,
        "one line per hour: {text}"
    );

    // No offers were seen: the market has nothing to forecast.
    let market = ok(rigmesh(&["forecast", "market"], &analytics_api, &data));
    assert!(market.contains("no offers seen yet"), "{market}");

    // A bad horizon is a usage error before anything is asked.
    let bad = rigmesh(
        &["forecast", "spend", "--horizon", "40d"],
        &analytics_api,
        &data,
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("31 days"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // A customer node has no earnings series: nothing recorded, said so.
    let earnings = ok(rigmesh(&["forecast", "earnings"], &analytics_api, &data));
    assert!(earnings.contains("no earnings recorded yet"), "{earnings}");
    interrupt(node);
}
