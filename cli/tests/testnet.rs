//! The market as separate processes: `testnet/start.sh` runs 4 coordinators,
//! 3 simulated suppliers and 2 customers, each a `rigmesh node run` of this
//! build, on loopback ports found free at the start (a start on a busy port
//! is refused first, leaving nothing behind). Customers are funded and lease GPUs
//! through the CLI; the test checks every coordinator's books to the unit
//! against what the suppliers were paid. Then a coordinator and the
//! supplier of a running lease are killed with SIGKILL, the supplier comes
//! back from its files, and the three live coordinators certify the final
//! settlement of what was metered before the crash.
//!
//! Every node is stopped by `testnet/stop.sh` when the guard drops, also
//! when the test fails; on failure the directory with the node logs is
//! kept and its path printed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rigmesh_protocol::Credits;
use serde_json::Value;

const RIGMESH: &str = env!("CARGO_BIN_EXE_rigmesh");

const H100: &str = "NVIDIA H100 80GB HBM3";
const A100: &str = "NVIDIA A100-SXM4-40GB";
const RTX4090: &str = "NVIDIA GeForce RTX 4090";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testnet")
        .join(name)
}

fn credits(text: &str) -> Credits {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not an amount: {e}"))
}

fn sum(amounts: impl IntoIterator<Item = Credits>) -> Credits {
    amounts
        .into_iter()
        .fold(Credits::ZERO, |a, b| a.checked_add(b).unwrap())
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Polls `check` every 250 ms until it returns `Some`, for at most `secs`.
fn eventually<T>(secs: u64, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: not within {secs} s; last: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// One line of `nodes.tsv`.
#[derive(Debug, Clone)]
struct Node {
    name: String,
    role: String,
    account: String,
    customer_api: String,
    supplier_api: String,
    gpu_model: String,
}

/// One coordinator's view of an account (`rigmesh admin balances --json`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    balance: Credits,
    escrowed: Credits,
    next_seq: u64,
}

/// A running testnet; dropping it stops every node.
struct Testnet {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let stopped = Command::new(script("stop.sh"))
            .args(["--dir".as_ref(), self.dir.as_os_str()])
            .env("RIGMESH", RIGMESH)
            .output();
        match &stopped {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("testnet/stop.sh failed: {}", text(out)),
            Err(e) => eprintln!("testnet/stop.sh did not run: {e}"),
        }
        if std::thread::panicking() {
            eprintln!("testnet kept for inspection in {}", self.dir.display());
            for node in &self.nodes {
                let log = self.dir.join(&node.name).join("node.log");
                let lines = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = lines.lines().rev().take(15).collect();
                eprintln!("--- {} (last lines of {})", node.name, log.display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A base port for `nodes` testnet nodes (ports base + 10k + 0..=3) where
/// every port is free now, searched from a start that differs between
/// runs, below the kernel's range for outgoing connections.
fn free_base_port(nodes: u16) -> u16 {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let blocks = (32_000 - 20_000) / (10 * nodes);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id();
    (0..blocks)
        .map(|i| 20_000 + ((seed as u16).wrapping_add(i) % blocks) * 10 * nodes)
        .find(|base| (0..nodes).all(|k| (0..4).all(|o| free(base + 10 * k + o))))
        .expect("no free block of ports between 20000 and 32000")
}

impl Testnet {
    /// Runs `testnet/start.sh` in a fresh directory on free ports, after
    /// checking that a start on a busy port is refused and leaves the
    /// directory as it was.
    fn start() -> Testnet {
        let dir = tempfile::Builder::new()
            .prefix("rigmesh-testnet-")
            .tempdir()
            .unwrap()
            .keep();
        // The guard exists before any node does, so nothing outlives a
        // failed start.
        let mut testnet = Testnet {
            dir,
            nodes: Vec::new(),
        };
        // A block whose ports were free when looked at can lose one before
        // this test holds it (another process of the machine binds it in
        // between): a block whose port cannot be held is passed over.
        let (base_port, held) = (0..5)
            .find_map(|_| {
                let base = free_base_port(9);
                std::net::TcpListener::bind(("127.0.0.1", base + 12))
                    .ok()
                    .map(|held| (base, held))
            })
            .expect("no block of free ports could be held");
        {
            // Node 1's customer API port, held by someone else.
            let busy = base_port + 12;
            let _held = held;
            let out = Command::new(script("start.sh"))
                .arg("--dir")
                .arg(&testnet.dir)
                .args(["--base-port", &base_port.to_string()])
                .env("RIGMESH", RIGMESH)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(&format!(
                    "port {busy} (for node 1) is in use; pick another --base-port"
                )),
                "{}",
                text(&out)
            );
            assert_eq!(
                std::fs::read_dir(&testnet.dir).unwrap().count(),
                0,
                "nothing written"
            );
        }
        let out = testnet.script(
            "start.sh",
            &[
                "--coordinators",
                "4",
                "--suppliers",
                "3",
                "--customers",
                "2",
                "--base-port",
                &base_port.to_string(),
            ],
        );
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        let table = std::fs::read_to_string(testnet.dir.join("nodes.tsv")).unwrap();
        testnet.nodes = table
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                Node {
                    name: f[0].into(),
                    role: f[1].into(),
                    account: f[2].into(),
                    customer_api: f[5].into(),
                    supplier_api: f[6].into(),
                    gpu_model: f[7].into(),
                }
            })
            .collect();
        testnet
    }

    /// Runs a testnet script with `--dir` and this build; it must succeed.
    fn script(&self, name: &str, args: &[&str]) -> Output {
        let out = Command::new(script(name))
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .env("RIGMESH", RIGMESH)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "testnet/{name} {args:?}: {}",
            text(&out)
        );
        out
    }

    fn rigmesh(&self, args: &[&str]) -> Output {
        Command::new(RIGMESH).args(args).output().unwrap()
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn data_dir(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn role(&self, role: &str) -> Vec<Node> {
        self.nodes
            .iter()
            .filter(|n| n.role == role)
            .cloned()
            .collect()
    }

    /// Every answering coordinator's view of each account, by account.
    fn balances(&self, accounts: &[&str]) -> Result<BTreeMap<String, Vec<View>>, String> {
        let config = self.dir.join("admin.toml").display().to_string();
        let admin_key = self.dir.join("admin.key").display().to_string();
        let mut args = vec![
            "admin",
            "balances",
            "--config",
            &config,
            "--admin-key",
            &admin_key,
            "--json",
        ];
        args.extend(accounts);
        let out = self.rigmesh(&args);
        if !out.status.success() {
            return Err(text(&out));
        }
        let rows: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let mut map = BTreeMap::new();
        for row in rows.as_array().ok_or("not a list")? {
            let views = row["coordinators"]
                .as_array()
                .ok_or("no coordinators")?
                .iter()
                .map(|c| View {
                    balance: credits(c["balance"].as_str().unwrap()),
                    escrowed: credits(c["escrowed"].as_str().unwrap()),
                    next_seq: c["next_seq"].as_u64().unwrap(),
                })
                .collect();
            map.insert(row["account"].as_str().unwrap().to_string(), views);
        }
        Ok(map)
    }

    /// The account's state, once exactly `coordinators` coordinators
    /// answer and all of them agree.
    fn agreed(&self, account: &str, coordinators: usize) -> Result<View, String> {
        let views = self
            .balances(&[account])?
            .remove(account)
            .ok_or("account missing from the answer")?;
        if views.len() != coordinators {
            return Err(format!(
                "{} of {coordinators} coordinators answered",
                views.len()
            ));
        }
        if views.iter().any(|v| *v != views[0]) {
            return Err(format!("coordinators disagree: {views:?}"));
        }
        Ok(views[0].clone())
    }

    /// The supplier's `GET /v1/leases`, with its supplier token.
    fn supplier_leases(&self, name: &str) -> Result<Vec<Value>, String> {
        let token = std::fs::read_to_string(self.dir.join(name).join("api/supplier.token"))
            .map_err(|e| e.to_string())?;
        let url = format!("http://{}/v1/leases", self.node(name).supplier_api);
        let mut response = ureq::get(&url)
            .header("Authorization", &format!("Bearer {}", token.trim()))
            .call()
            .map_err(|e| format!("{url}: {e}"))?;
        response
            .body_mut()
            .read_json::<Vec<Value>>()
            .map_err(|e| e.to_string())
    }

    fn supplier_lease(&self, name: &str, lease: &str) -> Result<Value, String> {
        self.supplier_leases(name)?
            .into_iter()
            .find(|l| l["lease"] == lease)
            .ok_or_else(|| format!("{name} does not list lease {lease}"))
    }

    /// `rigmesh bid` from a customer; retried while the market is still
    /// settling in (bindings and offers travel by gossip).
    fn bid(&self, customer: &str, gpu: &str, window_secs: u32, budget: Credits) -> Value {
        let data_dir = self.data_dir(customer);
        let api = self.node(customer).customer_api.clone();
        let budget = budget.to_string();
        let window = window_secs.to_string();
        eventually(30, &format!("{customer} leases a {gpu}"), || {
            let out = self.rigmesh(&[
                "bid",
                "--data-dir",
                &data_dir,
                "--api",
                &api,
                "--gpu",
                gpu,
                "--count",
                "1",
                "--max-price",
                "3.29",
                "--hours",
                "1",
                "--window-secs",
                &window,
                "--budget",
                &budget,
                "--json",
            ]);
            if !out.status.success() {
                return Err(text(&out));
            }
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
        })
    }
}

/// Credits per GPU-hour of each model, as customer-0 sees the offers.
fn prices(net: &Testnet) -> BTreeMap<String, (Credits, String)> {
    let out = net.rigmesh(&[
        "offers",
        "--data-dir",
        &net.data_dir("customer-0"),
        "--api",
        &net.node("customer-0").customer_api,
        "--json",
    ]);
    assert!(out.status.success(), "rigmesh offers: {}", text(&out));
    let offers: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    offers
        .iter()
        .map(|o| {
            let b = &o["body"];
            (
                b["gpu_model"].as_str().unwrap().to_string(),
                (
                    credits(b["price_per_gpu_hour"].as_str().unwrap()),
                    b["supplier"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// What `windows` metering windows of `seconds` cost on one GPU at `price`
/// (rounded down to the unit): a budget that ends a lease after about
/// that many windows.
fn budget_for(price: Credits, windows: i64, seconds: i64) -> Credits {
    Credits::from_units(price.units() * windows * seconds / 3600)
}

#[test]
fn a_multi_process_testnet_settles_to_the_unit_and_survives_a_crash() {
    let started = Instant::now();
    let net = Testnet::start();
    // Its ports are its own: another --base-port for it is refused, not
    // silently ignored.
    let out = Command::new(script("start.sh"))
        .arg("--dir")
        .arg(&net.dir)
        .args(["--base-port", "20001"])
        .env("RIGMESH", RIGMESH)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--base-port 20001 cannot change it"),
        "{}",
        text(&out)
    );
    let coordinators = net.role("coordinator").len();
    let customers = net.role("customer");
    let suppliers = net.role("supplier");
    assert_eq!((coordinators, suppliers.len(), customers.len()), (4, 3, 2));

    // Funding: every coordinator credits each customer.
    let deposit = credits("20");
    net.script("fund.sh", &["--amount", "20"]);
    for c in &customers {
        let view = eventually(20, "the deposit on every coordinator", || {
            net.agreed(&c.account, 4)
        });
        assert_eq!((view.balance, view.escrowed), (deposit, Credits::ZERO));
    }

    // One deposit per admin key and reference: the same reference again
    // is refused with its own exit code and credits nothing more.
    let outsider = "cd".repeat(32);
    let config = net.dir.join("admin.toml").display().to_string();
    let admin_key = net.dir.join("admin.key").display().to_string();
    let deposit_args = [
        "admin",
        "deposit",
        "--config",
        &config,
        "--admin-key",
        &admin_key,
        "--account",
        &outsider,
        "--amount",
        "3",
        "--reference",
        "wire once",
    ];
    let first = net.rigmesh(&deposit_args);
    assert!(first.status.success(), "{}", text(&first));
    let again = net.rigmesh(&deposit_args);
    assert_eq!(again.status.code(), Some(5), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is already used"),
        "{}",
        text(&again)
    );
    let view = eventually(20, "the outsider's one deposit everywhere", || {
        net.agreed(&outsider, 4)
    });
    assert_eq!(view.balance, credits("3"));

    // Phase 1: a lease of each model through the CLI, each ending at its
    // budget cap after about five 2 s windows.
    let prices = prices(&net);
    assert_eq!(prices.len(), 3, "one offer per supplier: {prices:?}");
    let plan = [
        ("customer-0", H100),
        ("customer-0", RTX4090),
        ("customer-1", A100),
    ];
    let mut leases = Vec::new();
    for (customer, gpu) in plan {
        let (price, supplier) = prices[gpu].clone();
        let lease = net.bid(customer, gpu, 2, budget_for(price, 5, 2));
        assert_eq!(lease["supplier"], supplier.as_str(), "the only {gpu} offer");
        assert_eq!(
            credits(lease["escrowed"].as_str().unwrap()),
            budget_for(price, 5, 2),
            "the budget cap is escrowed, not the whole hour"
        );
        let supplier_name = suppliers
            .iter()
            .find(|s| s.gpu_model == gpu)
            .unwrap()
            .name
            .clone();
        leases.push((
            customer,
            supplier_name,
            lease["lease"].as_str().unwrap().to_string(),
        ));
    }
    // Right after the bids, before any window can be settled, each
    // customer's escrow is locked on every coordinator.
    for c in &customers {
        let locked = sum(plan
            .iter()
            .filter(|(customer, _)| *customer == c.name)
            .map(|(_, gpu)| budget_for(prices[*gpu].0, 5, 2)));
        let view = net.agreed(&c.account, 4).unwrap();
        assert_eq!(view.escrowed, locked, "{} escrow", c.name);
        assert_eq!(view.balance, deposit.checked_sub(locked).unwrap());
    }

    // Every lease ends at its cap and gets its final settlement.
    let mut settled = Vec::new();
    for (customer, supplier, lease) in &leases {
        let entry = eventually(90, &format!("the final settlement of {lease}"), || {
            let entry = net.supplier_lease(supplier, lease)?;
            if entry["settled"]["closed"] == true {
                Ok(entry)
            } else {
                Err(entry.to_string())
            }
        });
        let s = &entry["settled"];
        assert!(s["windows"].as_u64().unwrap() >= 3, "several windows: {s}");
        let earned = credits(s["earned"].as_str().unwrap());
        let fees = credits(s["fees"].as_str().unwrap());
        let refunded = credits(s["refunded"].as_str().unwrap());
        assert!(earned > Credits::ZERO && fees > Credits::ZERO, "{s}");
        let escrowed = budget_for(
            prices[&*suppliers
                .iter()
                .find(|n| &n.name == supplier)
                .unwrap()
                .gpu_model]
                .0,
            5,
            2,
        );
        assert_eq!(
            sum([earned, fees, refunded]),
            escrowed,
            "the escrow is paid out or refunded, to the unit: {s}"
        );
        eprintln!("{customer} <- {supplier}: {s}");
        settled.push((*customer, supplier.clone(), earned, fees));
    }
    let out = net.rigmesh(&[
        "leases",
        "--data-dir",
        &net.data_dir("customer-0"),
        "--api",
        &net.node("customer-0").customer_api,
        "--json",
    ]);
    let mine: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|l| l["stopped_at_cap"] == true), "{mine:?}");

    // The books of all four coordinators, to the unit.
    for s in &suppliers {
        let earned = sum(settled.iter().filter(|x| x.1 == s.name).map(|x| x.2));
        let view = eventually(
            20,
            &format!("{}'s pay on every coordinator", s.name),
            || {
                let view = net.agreed(&s.account, 4)?;
                if view.balance == earned {
                    Ok(view)
                } else {
                    Err(format!("{view:?}, expected balance {earned}"))
                }
            },
        );
        assert_eq!(view.escrowed, Credits::ZERO);
    }
    for c in &customers {
        let paid = sum(settled
            .iter()
            .filter(|x| x.0 == c.name)
            .flat_map(|x| [x.2, x.3]));
        let expected = deposit.checked_sub(paid).unwrap();
        eventually(
            20,
            &format!("{}'s books on every coordinator", c.name),
            || {
                let view = net.agreed(&c.account, 4)?;
                if view.balance == expected && view.escrowed == Credits::ZERO {
                    Ok(())
                } else {
                    Err(format!(
                        "{view:?}, expected balance {expected} and no escrow"
                    ))
                }
            },
        );
    }
    // In text, as the customer reads it: each lease's state and what
    // settlement paid and refunded; every coordinator's view and the
    // receipts behind the balance.
    let (data, api) = (
        net.data_dir("customer-0"),
        net.node("customer-0").customer_api.clone(),
    );
    let leases = eventually(20, "customer-0's final settlements in `leases`", || {
        let out = net.rigmesh(&["leases", "--data-dir", &data, "--api", &api]);
        let shown = String::from_utf8_lossy(&out.stdout).to_string();
        if shown.matches("refunded (final)").count() == 2 {
            Ok(shown)
        } else {
            Err(shown)
        }
    });
    assert_eq!(
        leases
            .matches("state      stopped at the budget cap")
            .count(),
        2,
        "{leases}"
    );
    let out = net.rigmesh(&["account", "--data-dir", &data, "--api", &api]);
    let account = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(account.contains("at the coordinators"), "{account}");
    let c0 = &net.node("coordinator-0").account[..12];
    assert!(account.contains(&format!("  {c0}  ")), "{account}");
    for kind in ["deposit", "escrow_certificate", "settlement_certificate"] {
        assert!(account.contains(&format!("  {kind} ")), "{kind}: {account}");
    }
    assert!(
        !account.contains(" NO\n"),
        "every receipt verifies: {account}"
    );
    eprintln!("phase 1 done after {:?}", started.elapsed());

    // Phase 1b: a lease its customer disputes as not delivered. The
    // disputed windows' charge is held on every coordinator, neither paid
    // nor refunded, until an operator resolves the case through the CLI.
    let disputer = net.node("customer-1").clone();
    let (a100_price, _) = prices[A100].clone();
    let a100 = suppliers
        .iter()
        .find(|s| s.gpu_model == A100)
        .unwrap()
        .clone();
    let before = net.agreed(&disputer.account, 4).unwrap();
    let lease = net.bid(&disputer.name, A100, 2, budget_for(a100_price, 20, 2));
    let disputed = lease["lease"].as_str().unwrap().to_string();
    let (data, api) = (net.data_dir(&disputer.name), disputer.customer_api.clone());
    let out = net.rigmesh(&[
        "dispute",
        "--data-dir",
        &data,
        "--api",
        &api,
        &disputed,
        "--reason",
        "not-delivered",
        "--detail",
        "the job never started on the rig",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    eventually(40, "four attested windows", || {
        let entry = net.supplier_lease(&a100.name, &disputed)?;
        match entry["windows_attested"].as_u64() {
            Some(n) if n >= 4 => Ok(()),
            _ => Err(entry.to_string()),
        }
    });
    let out = net.rigmesh(&["end", "--data-dir", &data, "--api", &api, &disputed]);
    assert!(out.status.success(), "{}", text(&out));
    let entry = eventually(60, "the disputed lease's final settlement", || {
        let entry = net.supplier_lease(&a100.name, &disputed)?;
        if entry["settled"]["closed"] == true {
            Ok(entry)
        } else {
            Err(entry.to_string())
        }
    });
    let s = &entry["settled"];
    let paid = sum([
        credits(s["earned"].as_str().unwrap()),
        credits(s["fees"].as_str().unwrap()),
    ]);
    let cases = eventually(30, "the held cases on the review queue", || {
        let out = net.rigmesh(&["admin", "disputes", "list", "--config", &config, "--json"]);
        if !out.status.success() {
            return Err(text(&out));
        }
        let rows: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let ours: Vec<Value> = rows
            .as_array()
            .ok_or("not a list")?
            .iter()
            .filter(|c| c["lease"] == disputed.as_str() && c["held_by"] == 4)
            .cloned()
            .collect();
        if ours.is_empty() {
            Err(rows.to_string())
        } else {
            Ok(ours)
        }
    });
    let held = sum(cases.iter().map(|c| credits(c["held"].as_str().unwrap())));
    assert!(held > Credits::ZERO, "{cases:?}");
    // The customer paid for what it did not dispute, and what it disputed
    // is held: its balance shows neither the refund nor the payout of it.
    let view = net.agreed(&disputer.account, 4).unwrap();
    assert_eq!(view.escrowed, Credits::ZERO);
    let escrowed = budget_for(a100_price, 20, 2);
    assert_eq!(
        view.balance,
        before
            .balance
            .checked_sub(paid)
            .and_then(|b| b.checked_sub(held))
            .unwrap(),
        "held {held}, paid {paid} of {escrowed}"
    );
    let case = cases[0]["case"].as_str().unwrap().to_string();
    let out = net.rigmesh(&["admin", "disputes", "show", "--config", &config, &case]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        shown.contains("NotDelivered: the job never started on the rig") && shown.contains("GPU 0"),
        "{shown}"
    );
    for c in &cases {
        let out = net.rigmesh(&[
            "admin",
            "disputes",
            "resolve",
            "--config",
            &config,
            "--admin-key",
            &admin_key,
            c["case"].as_str().unwrap(),
            "--decision",
            "for-customer",
            "--note",
            "the rig's logs show the job never started",
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let again = net.rigmesh(&[
        "admin",
        "disputes",
        "resolve",
        "--config",
        &config,
        "--admin-key",
        &admin_key,
        &case,
        "--decision",
        "for-supplier",
        "--note",
        "changed my mind",
    ]);
    assert!(
        !again.status.success(),
        "a case is decided once: {}",
        text(&again)
    );
    let expected = before.balance.checked_sub(paid).unwrap();
    eventually(
        20,
        "the held charge back to the customer everywhere",
        || {
            let view = net.agreed(&disputer.account, 4)?;
            if view.balance == expected {
                Ok(())
            } else {
                Err(format!("{view:?}, expected {expected}"))
            }
        },
    );
    eprintln!("phase 1b done after {:?}", started.elapsed());

    // Phase 2: a lease with 4 s windows and no cap in reach; after three
    // windows a coordinator and the lease's supplier crash.
    let (price, _) = prices[H100].clone();
    let supplier = suppliers
        .iter()
        .find(|s| s.gpu_model == H100)
        .unwrap()
        .clone();
    let customer = net.node("customer-1").clone();
    let customer_before = net.agreed(&customer.account, 4).unwrap();
    let supplier_before = net.agreed(&supplier.account, 4).unwrap();
    let lease = net.bid(&customer.name, H100, 4, credits("1"));
    let id = lease["lease"].as_str().unwrap().to_string();
    // The cap (1) is below the hour's cost: the cap is escrowed.
    let escrowed = credits("1").min(price);
    assert_eq!(credits(lease["escrowed"].as_str().unwrap()), escrowed);
    let metered = eventually(40, "three attested windows", || {
        let entry = net.supplier_lease(&supplier.name, &id)?;
        match entry["windows_attested"].as_u64() {
            Some(n) if n >= 3 => Ok((n, entry)),
            _ => Err(entry.to_string()),
        }
    });
    // A partial settlement needs a fourth window (settle_every_windows = 3
    // keeps the newest one back), so nothing is settled yet: everything
    // this lease pays is certified after the crash.
    assert_eq!(
        metered.1["settled"]["certificates"],
        serde_json::json!([]),
        "{}",
        metered.1
    );
    let windows_before = metered.0;
    // Let sled flush the last attestation (every 500 ms).
    std::thread::sleep(Duration::from_millis(700));
    net.script("node.sh", &["kill", "coordinator-3"]);
    net.script("node.sh", &["kill", &supplier.name]);
    net.script("node.sh", &["start", &supplier.name]);

    let entry = eventually(60, "the final settlement after the restart", || {
        let entry = net.supplier_lease(&supplier.name, &id)?;
        if entry["settled"]["closed"] == true {
            Ok(entry)
        } else {
            Err(entry.to_string())
        }
    });
    let s = &entry["settled"];
    eprintln!(
        "after the crash, {} <- {}: {s}",
        customer.name, supplier.name
    );
    let windows = s["windows"].as_u64().unwrap();
    assert!(
        (windows_before..=windows_before + 1).contains(&windows),
        "the {windows_before} windows metered before the crash are settled: {s}"
    );
    let earned = credits(s["earned"].as_str().unwrap());
    let fees = credits(s["fees"].as_str().unwrap());
    let refunded = credits(s["refunded"].as_str().unwrap());
    assert!(earned > Credits::ZERO, "{s}");
    assert_eq!(sum([earned, fees, refunded]), escrowed, "{s}");

    // The three live coordinators agree, to the unit.
    let expected_customer = customer_before
        .balance
        .checked_sub(earned)
        .and_then(|b| b.checked_sub(fees))
        .unwrap();
    let expected_supplier = supplier_before.balance.checked_add(earned).unwrap();
    eventually(
        20,
        "the final settlement on the 3 live coordinators",
        || {
            let c = net.agreed(&customer.account, 3)?;
            let p = net.agreed(&supplier.account, 3)?;
            if c.balance == expected_customer
                && c.escrowed == Credits::ZERO
                && p.balance == expected_supplier
            {
                Ok(())
            } else {
                Err(format!(
                "customer {c:?} (expected {expected_customer}), supplier {p:?} (expected {expected_supplier})"
            ))
            }
        },
    );
    // Every other account too: the live coordinators hold the same books.
    let all: Vec<&str> = net.nodes.iter().map(|n| n.account.as_str()).collect();
    let books = net.balances(&all).unwrap();
    for (account, views) in &books {
        assert_eq!(views.len(), 3, "{account}: {views:?}");
        assert!(views.iter().all(|v| *v == views[0]), "{account}: {views:?}");
        assert_eq!(views[0].escrowed, Credits::ZERO, "{account}");
    }
    eprintln!("done after {:?}", started.elapsed());
}

#[test]
fn the_scripts_refuse_what_they_cannot_do() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(script("stop.sh"))
        .arg("--dir")
        .arg(empty.path())
        .env("RIGMESH", RIGMESH)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no testnet"),
        "{}",
        text(&out)
    );
    let out = Command::new(script("start.sh"))
        .args(["--coordinators", "four", "--dir"])
        .arg(empty.path())
        .env("RIGMESH", RIGMESH)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--coordinators must be a whole number"),
        "{}",
        text(&out)
    );
    std::fs::write(empty.path().join("notes.txt"), "mine").unwrap();
    let out = Command::new(script("start.sh"))
        .arg("--dir")
        .arg(empty.path())
        .env("RIGMESH", RIGMESH)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("neither empty nor a testnet"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_dir(empty.path()).unwrap().count(),
        1,
        "nothing written"
    );
}
