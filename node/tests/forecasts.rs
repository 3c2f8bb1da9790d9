//! Forecasts on a real customer node: four days of hourly spend written
//! into its series store (sled) before it starts, an account cap in its
//! records, and then what its analytics listener answers: the spend of
//! the next 24 h with an interval, the hour the cap runs out at that
//! rate, the `forecast.cap` alert raised once, the series themselves, and
//! clear refusals of bad input. The market's series come from the live
//! offers in the node's gossip store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;
#[path = "common/offers.rs"]
mod offers;

use common::eventually;
use rigmesh_forecast::Hour;
use rigmesh_node::api::tokens::{read_token, Bootstrap};
use rigmesh_node::config::{NodeConfig, Role};
use rigmesh_node::customer::records::{Caps, CustomerRecords};
use rigmesh_node::node::RunningNode;
use rigmesh_node::trends::{ForecastConfig, SeriesBook};
use rigmesh_protocol::{Keypair, UnixMillis};

/// Micro-credits spent in `hour`: a credit an hour at night (00-08 UTC),
/// three by day.
fn spend_at(hour: Hour) -> i64 {
    if hour.0.rem_euclid(24) < 8 {
        1_000_000
    } else {
        3_000_000
    }
}

fn this_hour() -> Hour {
    Hour::containing((UnixMillis::now().0 / 1000) as i64)
}

/// Writes `days` of hourly spend (ending with the last complete hour) and
/// an account cap into a customer's data directory.
fn seed(dir: &std::path::Path, days: i64, cap: &str) {
    let book = SeriesBook::open(&dir.join("series")).unwrap();
    let now = this_hour();
    for h in 1..=days * 24 {
        let hour = now.plus(-h);
        book.add("spend", hour, spend_at(hour)).unwrap();
        book.add("gpu_hours", hour, 3_600_000).unwrap();
    }
    book.flush().unwrap();
    drop(book);
    let records = CustomerRecords::open(&dir.join("customer")).unwrap();
    records
        .put_caps(&Caps {
            account: Some(cap.parse().unwrap()),
            leases: Default::default(),
        })
        .unwrap();
}

async fn start(dir: &std::path::Path) -> RunningNode {
    common::logs();
    let here: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    rigmesh_node::node::start(NodeConfig {
        role: Role::Customer,
        data_dir: dir.to_path_buf(),
        network: common::config(),
        monitoring: here,
        customer_api: here,
        supplier_api: here,
        public_api: here,
        analytics_api: here,
        operator_api: here,
        forecast: ForecastConfig {
            sample_secs: 1,
            alert_horizon_hours: 24,
        },
        ..NodeConfig::default()
    })
    .await
    .unwrap()
}

fn split(response: &str) -> (u16, serde_json::Value) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let text = response.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(text).unwrap_or_default())
}

fn credits(v: &serde_json::Value) -> f64 {
    v.as_str().unwrap().parse::<f64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_sees_its_spend_ahead_and_when_its_cap_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 4, "30");
    let node = start(dir.path()).await;
    let api = node.analytics_api.unwrap();
    let token = read_token(dir.path(), Bootstrap::Customer).unwrap();
    let now = this_hour();

    let (status, report) =
        split(&common::http_get(api, "/v1/forecast/spend?horizon=24h", Some(&token)).await);
    assert_eq!(status, 200, "{report}");
    let spend = &report["spend"];
    let points = spend["points"].as_array().unwrap();
    assert_eq!(points.len(), 24);
    assert_eq!(spend["history_hours"], 96);
    assert_eq!(
        points[0]["at"].as_u64().unwrap(),
        now.0 as u64 * 3_600_000,
        "the forecast starts with the current hour"
    );
    // The next 24 hours of the pattern cost 8 x 1 + 16 x 3 = 56 credits.
    let day = &report["totals"][0];
    assert_eq!(day["span"], "24h");
    let value = credits(&day["value"]);
    assert!((value - 56.0).abs() < 3.0, "24 h total {value}: {report}");
    assert!(credits(&day["lower"]) <= value && value <= credits(&day["upper"]));
    assert_eq!(report["totals"][1]["span"], "7d");
    assert_eq!(report["totals"][2]["span"], "30d");
    assert!(credits(&report["totals"][2]["value"]) > value);
    for p in points {
        let (lo, v, hi) = (
            p["lower"].as_f64().unwrap(),
            p["value"].as_f64().unwrap(),
            p["upper"].as_f64().unwrap(),
        );
        assert!(lo <= v && v <= hi, "{p}");
    }

    // The cap of 30 credits is reached in the hour the pattern's running
    // sum from now reaches 30 (give or take an hour of forecast error).
    let mut sum = 0;
    let mut truth = now;
    for h in 0..24 {
        sum += spend_at(now.plus(h));
        if sum >= 30_000_000 {
            truth = now.plus(h);
            break;
        }
    }
    let cap = &report["account_cap"];
    assert_eq!(cap["cap"], "30");
    assert_eq!(cap["remaining"], "30");
    let at = cap["run_out_at"].as_u64().unwrap();
    let hour = Hour((at / 3_600_000) as i64);
    assert!(
        hour.since(truth).abs() <= 1,
        "run-out {hour} vs the pattern's {truth}: {report}"
    );
    let earliest = cap["earliest_run_out_at"].as_u64().unwrap();
    assert!(earliest <= at);

    // The sampler checks the caps every hour, the first time at start: the
    // run-out within 24 h raises one forecast.cap alert, kept with the
    // budget alerts.
    eventually(20, "the forecast.cap alert", || async {
        let (_, account) = split(&common::http_get(api, "/v1/spend", Some(&token)).await);
        account["budget"]["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["rule"] == "forecast.cap"))
    })
    .await;
    let (_, account) = split(&common::http_get(api, "/v1/spend", Some(&token)).await);
    let alerts: Vec<_> = account["budget"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["rule"] == "forecast.cap")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let message = alerts[0]["message"].as_str().unwrap();
    assert!(
        message.contains("the account's cap of 30 credits"),
        "{message}"
    );

    // The series as recorded, in credits.
    let (status, series) =
        split(&common::http_get(api, "/v1/series/spend?hours=48", Some(&token)).await);
    assert_eq!(status, 200);
    let recorded = series["points"].as_array().unwrap();
    assert_eq!(recorded.len(), 47, "the current hour has no spend yet");
    for p in recorded {
        let hour = Hour((p["at"].as_u64().unwrap() / 3_600_000) as i64);
        assert_eq!(
            p["value"].as_f64().unwrap(),
            spend_at(hour) as f64 / 1e6,
            "{p}"
        );
    }

    // Bad input is a 400 that says what is wrong.
    for (path, says) in [
        ("/v1/forecast/spend?horizon=0h", "horizon"),
        ("/v1/forecast/spend?horizon=banana", "horizon"),
        ("/v1/forecast/spend?horizon=40d", "31 days"),
        ("/v1/series/nope", "no series is called"),
        ("/v1/series/spend?hours=0", "hours"),
    ] {
        let (status, body) = split(&common::http_get(api, path, Some(&token)).await);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["reason"].as_str().unwrap().contains(says),
            "{path}: {body}"
        );
    }
    // And no token, no figures.
    let (status, _) = split(&common::http_get(api, "/v1/forecast/spend", None).await);
    assert_eq!(status, 401);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_market_series_follow_the_live_offers() {
    let dir = tempfile::tempdir().unwrap();
    // Three days of two leases started an hour on A100s, one more on
    // other models.
    let book = SeriesBook::open(&dir.path().join("series")).unwrap();
    for h in 1..=72 {
        let hour = this_hour().plus(-h);
        book.add("market/A100_80GB/leases_started", hour, 2)
            .unwrap();
        book.add("market/leases_started", hour, 3).unwrap();
    }
    book.flush().unwrap();
    drop(book);
    // Three live offers in the gossip store the node opens.
    let key = Keypair::from_seed([9; 32]);
    let listed: Vec<_> = [1_500_000, 1_700_000, 2_100_000]
        .iter()
        .enumerate()
        .map(|(i, p)| offers::offer(&key, "A100 80GB", *p, &format!("eu-{i}")))
        .collect();
    let store = rigmesh_ledger::MarketStore::open(&dir.path().join("ledger")).unwrap();
    store
        .store(&listed.iter().map(offers::record).collect::<Vec<_>>())
        .unwrap();
    store.flush().unwrap();
    drop(store);
    let node = start(dir.path()).await;
    let api = node.analytics_api.unwrap();
    let token = read_token(dir.path(), Bootstrap::Customer).unwrap();
    // The sampler writes the hour's offer count, then its price
    // percentiles one after the other: wait for the last of them.
    eventually(20, "the market series", || async {
        let (_, series) =
            split(&common::http_get(api, "/v1/series/market/A100_80GB/offers", Some(&token)).await);
        let (_, p90) = split(
            &common::http_get(api, "/v1/series/market/A100_80GB/price_p90", Some(&token)).await,
        );
        let last = |s: &serde_json::Value| {
            s["points"]
                .as_array()
                .and_then(|p| p.last())
                .map(|p| p["value"].clone())
        };
        last(&series) == Some(serde_json::json!(3.0)) && last(&p90) == Some(serde_json::json!(2.1))
    })
    .await;
    let (status, market) =
        split(&common::http_get(api, "/v1/forecast/market?horizon=6h", Some(&token)).await);
    assert_eq!(status, 200, "{market}");
    let model = &market["models"][0];
    assert_eq!(model["model"], "A100_80GB");
    assert_eq!(model["latest_price"], serde_json::json!([1.5, 1.7, 2.1]));
    // Only the current hour is known: nothing to forecast from yet.
    assert!(model["price"].is_null(), "{model}");
    // Demand: leases started, per model and in all, from their history.
    for (view, rate) in [
        (&model["leases_started"], 2.0),
        (&market["leases_started"], 3.0),
    ] {
        assert_eq!(view["kind"], "flow", "{view}");
        assert_eq!(view["unit"], "count", "{view}");
        let points = view["points"].as_array().unwrap();
        assert_eq!(points.len(), 6, "{view}");
        for p in points {
            let value = p["value"].as_f64().unwrap();
            assert!(
                (value - rate).abs() < 0.5,
                "{rate} an hour, forecast {value}"
            );
        }
    }
    let (status, _) = split(&common::http_get(api, "/v1/forecast/earnings", Some(&token)).await);
    assert_eq!(status, 200, "a customer has no earnings, but may ask");
    node.stop().await.unwrap();
}
