//! The analytics dashboard in a real browser: headless Chromium loads the
//! page of a real customer node (four days of spend history, an account
//! cap), with the token in the URL fragment, and the page must show the
//! node's own figures (the 24 h spend forecast, the cap's run-out hour,
//! the forecast alert) with no script or console error. A screenshot is
//! saved under the target directory (`target/tmp/dashboard.png`).
//!
//! Chromium is found as `$RIGMESH_CHROMIUM`, `chromium`,
//! `chromium-browser` or `google-chrome`; without one the test says so and
//! passes (CI installs Debian's `chromium`, see `.ci/run`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::eventually;
use rigmesh_forecast::Hour;
use rigmesh_node::api::tokens::{read_token, Bootstrap};
use rigmesh_node::config::{NodeConfig, Role};
use rigmesh_node::customer::records::{Caps, CustomerRecords};
use rigmesh_node::trends::{ForecastConfig, SeriesBook};
use rigmesh_protocol::UnixMillis;

/// Longest one browser run may take.
const BROWSER_LIMIT: Duration = Duration::from_secs(90);

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RIGMESH_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let dirs = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&dirs) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Runs the browser with `args`; its stdout and stderr. Killed past
/// [`BROWSER_LIMIT`].
fn browse(binary: &Path, profile: &Path, args: &[String]) -> (String, String) {
    let out = profile.join("out.txt");
    let err = profile.join("err.txt");
    let mut child = Command::new(binary)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.join("profile").display()
        ))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + BROWSER_LIMIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish in {BROWSER_LIMIT:?}: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (
        std::fs::read_to_string(out).unwrap_or_default(),
        std::fs::read_to_string(err).unwrap_or_default(),
    )
}

fn spend_at(hour: Hour) -> i64 {
    if hour.0.rem_euclid(24) < 8 {
        1_000_000
    } else {
        3_000_000
    }
}

/// The text of the `<tag id="id">` element in a dumped DOM, tags removed
/// and spaces collapsed; empty when there is none.
fn text_of(dom: &str, tag: &str, id: &str) -> String {
    let Some(start) = dom
        .find(&format!(" id=\"{id}\""))
        .and_then(|at| dom[..at].rfind(&format!("<{tag}")))
    else {
        return String::new();
    };
    let rest = &dom[start..];
    let end = rest.find(&format!("</{tag}>")).unwrap_or(rest.len());
    let mut text = String::new();
    let mut inside = false;
    for c in rest[..end].chars() {
        match c {
            '<' => inside = true,
            '>' => {
                inside = false;
                text.push(' ');
            }
            c if !inside => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_nodes_figures_in_a_browser() {
    let Some(binary) = chromium() else {
        println!(
            "skipping the dashboard browser test: no chromium binary found \
             (install Debian's chromium package, or set RIGMESH_CHROMIUM)"
        );
        return;
    };
    common::logs();
    let dir = tempfile::tempdir().unwrap();
    let now = Hour::containing((UnixMillis::now().0 / 1000) as i64);
    {
        let book = SeriesBook::open(&dir.path().join("series")).unwrap();
        for h in 1..=96 {
            book.add("spend", now.plus(-h), spend_at(now.plus(-h)))
                .unwrap();
        }
        book.flush().unwrap();
        CustomerRecords::open(&dir.path().join("customer"))
            .unwrap()
            .put_caps(&Caps {
                account: Some("30".parse().unwrap()),
                leases: Default::default(),
            })
            .unwrap();
    }
    let here: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let node = rigmesh_node::node::start(NodeConfig {
        role: Role::Customer,
        data_dir: dir.path().to_path_buf(),
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
    .unwrap();
    let api = node.analytics_api.unwrap();
    let token = read_token(dir.path(), Bootstrap::Customer).unwrap();
    // What the page must show, from the API itself.
    let body = |r: String| -> serde_json::Value {
        serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    };
    // The forecast moves as the node samples its spend (every second
    // here), so what the API says is read all along the page's render:
    // the page must show one of those.
    let forecast = {
        let token = token.clone();
        move || {
            let token = token.clone();
            async move {
                let report = body(
                    common::http_get(api, "/v1/forecast/spend?horizon=7d", Some(&token)).await,
                );
                let day_total = report["totals"][0]["value"].as_str().unwrap().to_string();
                let run_out = report["account_cap"]["run_out_at"].as_u64().unwrap();
                (day_total, Hour((run_out / 3_600_000) as i64).to_string())
            }
        }
    };
    let first = forecast().await;
    let said = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::from([
        first,
    ])));
    eventually(20, "the forecast.cap alert", || async {
        let account = body(common::http_get(api, "/v1/spend", Some(&token)).await);
        account["budget"]["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["rule"] == "forecast.cap"))
    })
    .await;

    let url = format!("http://{api}/dashboard#token={token}");
    let profile = tempfile::tempdir().unwrap();
    let reading = {
        let (said, forecast) = (said.clone(), forecast.clone());
        tokio::spawn(async move {
            loop {
                let seen = forecast().await;
                said.lock().unwrap().insert(seen);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    };
    let (dom, log) = {
        let (binary, profile, url) = (binary.clone(), profile.path().to_path_buf(), url.clone());
        tokio::task::spawn_blocking(move || {
            browse(
                &binary,
                &profile,
                &[
                    "--virtual-time-budget=20000".into(),
                    "--dump-dom".into(),
                    url,
                ],
            )
        })
        .await
        .unwrap()
    };
    assert!(dom.contains("<html"), "no page: {dom}\n{log}");
    assert_eq!(
        text_of(&dom, "pre", "errors"),
        "",
        "script errors on the page"
    );
    for line in log.lines() {
        assert!(
            !(line.contains("CONSOLE") && (line.contains("Uncaught") || line.contains("rror"))),
            "console error: {line}"
        );
    }
    assert!(
        text_of(&dom, "span", "status").starts_with("ready"),
        "status {:?}\n{log}",
        text_of(&dom, "span", "status")
    );
    reading.abort();
    let last = forecast().await;
    let said = {
        let mut said = said.lock().unwrap().clone();
        said.insert(last);
        said
    };
    let day = text_of(&dom, "tr", "total-24h");
    assert!(
        said.iter()
            .any(|(day_total, _)| day.contains(day_total.as_str())),
        "24 h row {day:?}, API says one of {said:?}"
    );
    let runout = text_of(&dom, "div", "runout-account");
    assert!(
        runout.contains("30 credits")
            && said
                .iter()
                .any(|(_, run_out)| runout.contains(run_out.as_str())),
        "run-out line {runout:?}, API says one of {said:?}"
    );
    assert!(dom.contains("forecast.cap"), "the alert is listed");
    assert!(dom.contains("id=\"band\""), "the forecast band is drawn");
    assert!(dom.contains("id=\"cap\""), "the cap line is drawn");
    assert!(!dom.contains(&token), "the token does not stay in the page");

    // A screenshot for people, kept as the test's artifact.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    {
        let (binary, profile, shot) = (binary, profile.path().to_path_buf(), shot.clone());
        tokio::task::spawn_blocking(move || {
            browse(
                &binary,
                &profile,
                &[
                    "--virtual-time-budget=20000".into(),
                    "--window-size=1280,1100".into(),
                    format!("--screenshot={}", shot.display()),
                    url,
                ],
            )
        })
        .await
        .unwrap();
    }
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        shot.display()
    );
    println!("dashboard screenshot: {}", shot.display());
    node.stop().await.unwrap();
}
