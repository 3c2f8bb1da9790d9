//! A customer node whose records hold a long history of leases answers
//! its budget, a lease's usage, a change of cap and a bid without reading
//! every lease: each stored lease's spend and start are held in memory
//! from the one read at start. The account report reads the leases it
//! lists (those that start last, 100 unless asked for up to 10,000), and
//! does so off the executor, as does the read at start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use rigmesh_node::api::tokens::{read_token, Bootstrap};
use rigmesh_node::customer::records::{
    Caps, CustomerRecords, LeaseRecord, WindowRecord, WindowStatus,
};
use rigmesh_node::customer::runtime::REPORTS_AT_ONCE;
use rigmesh_protocol::{Credits, Id, Keypair, UnixMillis};

/// Leases in the records before the node starts: years of a busy account.
const LEASES: u64 = 30_000;
/// Windows stored for the one lease whose usage is asked.
const WINDOWS: u64 = 5;

/// The most the executor may be late (as in `orderbook.rs`): reading the
/// history on it takes far longer on this runtime of one thread.
const MAX_EXECUTOR_LAG_SECS: f64 = 0.5;

fn lease_id(n: u64) -> Id {
    Id(*blake3::hash(&n.to_be_bytes()).as_bytes())
}

/// Lease `n`, long over: one A100 for an hour, which cost 0.001 to 1.000.
fn lease(n: u64, supplier: &Keypair) -> LeaseRecord {
    let starts_at = UnixMillis(1_700_000_000_000 + n * 3_600_000);
    LeaseRecord {
        lease: lease_id(n),
        supplier: supplier.public(),
        gpu_model: "NVIDIA A100-SXM4-80GB".into(),
        gpus: vec![0],
        price_per_gpu_hour: Credits::from_units(1_000_000),
        hours: 1,
        window_ms: 60_000,
        starts_at,
        ends_at: starts_at.plus_ms(3_600_000),
        spent: Credits::from_units(((n % 1_000) as i64 + 1) * 1_000),
        billable_gpu_ms: 3_600_000,
        acked_windows: 60,
        disputed_windows: 0,
        stopped_at_cap: false,
        escrowed: Some(Credits::from_units(1_000_000)),
        agreement: None,
        ended: false,
        contested: None,
        finally_settled: true,
    }
}

fn status(response: &str) -> u16 {
    response[9..12].parse().unwrap()
}

fn body(response: &str) -> serde_json::Value {
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

fn credits(value: &serde_json::Value) -> Credits {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not an amount"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_customer_with_a_long_history_answers_its_budget_and_bids_without_reading_it_all() {
    common::logs();
    let dir = tempfile::tempdir().unwrap();
    let supplier = Keypair::from_seed([5; 32]);
    let mut total = Credits::ZERO;
    {
        let records = CustomerRecords::open(&dir.path().join("customer")).unwrap();
        for n in 0..LEASES {
            let record = lease(n, &supplier);
            total = total.checked_add(record.spent).unwrap();
            records.put_lease(&record).unwrap();
        }
        let first = lease(0, &supplier);
        for seq in 0..WINDOWS {
            let window = WindowRecord {
                seq,
                attestation: Id([seq as u8; 32]),
                window_start: first.starts_at.plus_ms(seq * 60_000),
                window_end: first.starts_at.plus_ms((seq + 1) * 60_000),
                billable_gpu_ms: 60_000,
                charge: Credits::from_units(16_666),
                status: WindowStatus::Acked,
            };
            records.put_window(&first, &window).unwrap();
        }
        records
            .put_caps(&Caps {
                account: Some(total.checked_add(Credits::from_units(5_000_000)).unwrap()),
                leases: [(lease_id(1), Credits::from_units(3_000_000))].into(),
            })
            .unwrap();
        records.flush().unwrap();
    }

    let config = common::customer_node(dir.path());
    let node = rigmesh_node::node::start(config).await.unwrap();
    let records = node.customer_records.clone().unwrap();
    let api = node.customer_api.unwrap();
    let token = read_token(dir.path(), Bootstrap::Customer).unwrap();

    // The budget: the account's spend is every stored lease's, to the
    // micro-credit; the capped lease's spend is its own.
    let r = common::http_get(api, "/v1/budget", Some(&token)).await;
    assert_eq!(status(&r), 200, "{r}");
    // Answered once the leases were resumed: from here on, only the
    // account report may read them all.
    let read_at_start = records.leases_read();
    assert_eq!(
        read_at_start, LEASES,
        "the one read at open: finally settled leases are not read back to be watched"
    );
    let budget = body(&r);
    assert_eq!(credits(&budget["account"]["spent"]), total, "{budget}");
    assert_eq!(
        credits(&budget["account"]["remaining"]),
        Credits::from_units(5_000_000)
    );
    assert_eq!(budget["leases"][0]["lease"], lease_id(1).to_string());
    assert_eq!(
        credits(&budget["leases"][0]["spent"]),
        lease(1, &supplier).spent
    );

    // A lease's usage, with the account's spend beside it.
    let r = common::http_get(api, &format!("/v1/usage/{}", lease_id(0)), Some(&token)).await;
    assert_eq!(status(&r), 200, "{r}");
    let usage = body(&r);
    assert_eq!(usage["windows"].as_array().unwrap().len(), WINDOWS as usize);
    assert_eq!(credits(&usage["budget"]["account"]["spent"]), total);

    // A cap lowered below what the history cost: a bid is refused before
    // any GPU is taken, with what the account has committed.
    let lowered = total.checked_sub(Credits::from_units(1_000_000)).unwrap();
    let r = common::http(
        api,
        "PUT",
        "/v1/budget",
        &token,
        Some(&format!(r#"{{"account":"{lowered}"}}"#)),
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(credits(&body(&r)["account"]["spent"]), total);
    assert_eq!(credits(&body(&r)["account"]["cap"]), lowered);
    let bid = r#"{"gpu":"NVIDIA A100-SXM4-80GB","count":1,"max_price":"2.00","hours":1}"#;
    let r = common::http_post(api, "/v1/bid", &token, bid).await;
    let reason = body(&r)["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains(&format!(
            "budget cap {lowered} is taken by what other leases escrowed or spent ({total})"
        )),
        "{r}"
    );
    // Raised again: the bid passes the cap and finds no offer.
    let raised = total.checked_add(Credits::from_units(1_000_000)).unwrap();
    let r = common::http(
        api,
        "PUT",
        "/v1/budget",
        &token,
        Some(&format!(r#"{{"account":"{raised}"}}"#)),
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    let r = common::http_post(api, "/v1/bid", &token, bid).await;
    assert_eq!(status(&r), 404, "{r}");

    assert_eq!(
        records.leases_read(),
        read_at_start,
        "no budget, usage, cap change or bid read the stored leases"
    );

    // The account report lists the 100 leases that started last, latest
    // first, and reads those only; the spend is every lease's.
    let r = common::http_get(api, "/v1/account", Some(&token)).await;
    assert_eq!(status(&r), 200, "{}", &r[..r.len().min(500)]);
    let account = body(&r);
    let listed = account["leases"].as_array().unwrap();
    assert_eq!(listed.len(), 100);
    assert_eq!(account["leases_total"], LEASES);
    for (i, l) in listed.iter().enumerate() {
        assert_eq!(
            l["lease"].as_str().unwrap(),
            lease_id(LEASES - 1 - i as u64).to_string()
        );
    }
    assert_eq!(credits(&account["spent"]), total);
    assert_eq!(account["active_leases"], 0);
    assert_eq!(records.leases_read(), read_at_start + 100);

    // Eight at once, each asking for more than the most one lists: as
    // many as are read at once are answered, with 10,000 leases each, the
    // rest are told the node is busy rather than queued without bound.
    let burst = futures::future::join_all(
        (0..8).map(|_| common::http_get(api, "/v1/account?leases=1000000", Some(&token))),
    )
    .await;
    let answered = burst.iter().filter(|r| status(r) == 200).count();
    let busy: Vec<&String> = burst.iter().filter(|r| status(r) == 503).collect();
    assert_eq!(answered + busy.len(), 8);
    assert!(answered >= REPORTS_AT_ONCE, "{answered} answered");
    assert!(!busy.is_empty(), "none of 8 reports at once was refused");
    assert_eq!(body(busy[0])["error"], "busy", "{}", busy[0]);
    let most = burst.iter().find(|r| status(r) == 200).unwrap();
    assert_eq!(body(most)["leases"].as_array().unwrap().len(), 10_000);
    assert_eq!(
        records.leases_read(),
        read_at_start + 100 + 10_000 * answered as u64
    );

    let metrics = common::http_get(node.monitoring, "/metrics", None).await;
    let sample = |name: &str| common::sample(&metrics, name);
    assert_eq!(
        sample("rigmesh_customer_reports_busy_total"),
        busy.len() as f64
    );
    assert_eq!(sample("rigmesh_customer_reports_reading"), 0.0);
    // None of it, the start included, held the executor up.
    let lag = sample("rigmesh_executor_lag_max_seconds");
    eprintln!("largest executor lateness: {:.1} ms", lag * 1e3);
    assert!(
        lag < MAX_EXECUTOR_LAG_SECS,
        "the executor was held up {lag:.3} s: something heavy ran on it"
    );
    node.stop().await.unwrap();
}
