//! Certified settlements per second with 4 coordinator nodes (f = 1) on
//! loopback, each with its own sled books (flushed before anything is
//! acknowledged, concurrent writes sharing a flush by group commit), and a
//! client node that funds leases and settles them through the quorum
//! client exactly as a supplier's settlement worker does
//! (`node/src/supplier/settle.rs`): each request goes with its bundle, the
//! lease's escrow certificate, the attestations (the previous one first)
//! with the customer's acks and, after the first, the lease's earlier
//! settlement certificate. Each lease is settled twice: a partial
//! settlement of its first window, then the final one of its second. Each
//! settlement is one request to every coordinator (vote), a certificate
//! assembled from 3 votes, and the certificate handed to every
//! coordinator and gossiped (apply).
//!
//! Three cases: one lease at a time (16 leases), 8 at once (64 leases)
//! and 64 at once (256 leases); a lease starts settling as soon as
//! another finishes, so that many are in flight throughout, as with a
//! supplier's worker settling leases as they come due. Printed for each:
//! certified settlements per second, p50 and p99 certificate latency
//! (from sending the request to the certificate applied at a quorum),
//! the signature verifications per settlement as counted in the
//! verification path ([`rigmesh_protocol::crypto::signature_checks`],
//! counted by every node of the bench), and the ratio against
//! the raw signature budget: raw ed25519 verifies/s (one by one, by the
//! protocol's rule) measured in the same run divided by those
//! verifications per settlement (a certificate's are checked in one
//! batch, which costs less than as many single checks). Target: >= 0.5 for 8 and 64 at
//! once. Also printed: the writes of the coordinators' books and the
//! flushes that made them durable, to show how far the group commit
//! shares flushes, and the cores the bench's nodes kept busy (on this
//! machine's cores).
//!
//! With `-- --books N`, the cases run once more on 4 other coordinators
//! whose books already hold `N` finished leases of 1,000 customers and 100
//! suppliers, as a market leaves them after a while: each lease's escrow
//! order and final settlement voted on by every coordinator's own rules,
//! its certificates assembled from 3 votes and applied by all 4, without the
//! network (growing 100,000 takes minutes). `--books-dir DIR` keeps the
//! grown books in `DIR` and later runs with the same `N` start from a
//! copy of them. On those books the cases run three times over, so that
//! the later passes show what a coordinator's warmer caches change.
//! Printed beside the cases: how long the coordinators took to start on
//! those books, how long after the deposit the nodes fell idle (the
//! coordinators' first rounds done; each phase's cases wait for it), and
//! the nodes' resident memory (with the coordinators in this process,
//! what growing the books left in it too).
//!
//! With `-- --processes`, each coordinator runs in a process of its own
//! (this binary started again with `--member I --dir DIR`), as
//! production runs them, and the client in this one: sled guards every
//! database of a process with one lock, so four coordinators in one
//! process hold each other up where four processes do not. Each member
//! answers the bench's reads of its signature checks, flushes, CPU time
//! and memory over its standard input and output; the figures printed are
//! the sums over the five processes.
//!
//! Run: `cargo bench -p rigmesh-node --bench settlement`, or
//! `cargo bench -p rigmesh-node --bench settlement -- --books 100000
//! --books-dir /var/tmp/grown-books`, either with `--processes`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use futures::StreamExt;

use rigmesh_ledger::billing::{self, FeeRate};
use rigmesh_node::config::{CoordinatorsConfig, NodeConfig, Role};
use rigmesh_node::node::RunningNode;
use rigmesh_node::quorum::Quorum;
use rigmesh_protocol::rpc::{CertificateFrame, CoordinatorRequest, SettlementBundle};

use rigmesh_protocol::{
    crypto, Credits, Deposit, EscrowCertificate, EscrowOrder, GpuUsage, Id, Keypair, Kind,
    LeaseAgreement, LeaseProposal, PublicKey, SettlementCertificate, SettlementRequest, Signed,
    UnixMillis, UsageAck, UsageAttestation, PROTOCOL_VERSION,
};

/// The cases: leases settled at once, and how many leases in all.
const CASES: [(usize, usize); 3] = [(1, 16), (8, 64), (64, 256)];
/// Windows per lease, each settled on its own (a partial, then the final).
const WINDOWS: u64 = 2;
const PRICE: &str = "2.49";
const ESCROW: &str = "2.49";
const WINDOW_MS: u64 = 60_000;

fn seed(i: usize) -> [u8; 32] {
    [0x70 + i as u8; 32]
}

fn set_config() -> CoordinatorsConfig {
    let mut c = CoordinatorsConfig::new(
        1,
        (0..4)
            .map(|i| Keypair::from_seed(seed(i)).public())
            .collect(),
    );
    c.admin = Some(admin().public());
    c
}

async fn start(role: Role, dir: &std::path::Path, member: Option<usize>) -> RunningNode {
    if let Some(i) = member {
        rigmesh_node::keyfile::write_seed(&dir.join("account.key"), &seed(i)).unwrap();
    }
    let mut network = rigmesh_node::network::NetworkConfig::loopback();
    network.discovery = false;
    // The client stands for every supplier that settles with the set, so
    // the per-peer budget of coordinator requests (there for one peer's
    // flood, not for a set's throughput) is off.
    network.limits.requests.coordinator.per_second = 0;
    rigmesh_node::node::start(NodeConfig {
        role,
        data_dir: dir.to_path_buf(),
        network,
        monitoring: "127.0.0.1:0".parse().unwrap(),
        customer_api: "127.0.0.1:0".parse().unwrap(),
        supplier_api: "127.0.0.1:0".parse().unwrap(),
        public_api: "127.0.0.1:0".parse().unwrap(),
        analytics_api: "127.0.0.1:0".parse().unwrap(),
        operator_api: "127.0.0.1:0".parse().unwrap(),
        coordinators: Some(set_config()),
        ..NodeConfig::default()
    })
    .await
    .unwrap()
}

fn signed<T: rigmesh_protocol::Message>(body: T, key: &Keypair) -> Signed<T> {
    Signed::sign(body, key).unwrap()
}

/// A one-hour, one-GPU lease whose first windows have ended.
fn lease(customer: &Keypair, supplier: &Keypair, nonce: u64) -> Signed<LeaseAgreement> {
    let t = UnixMillis::now().minus_ms((WINDOWS + 1) * WINDOW_MS);
    let proposal = signed(
        LeaseProposal {
            version: PROTOCOL_VERSION,
            customer: customer.public(),
            supplier: supplier.public(),
            offer: Id([9; 32]),
            gpu_count: 1,
            price_per_gpu_hour: "2.49".parse().unwrap(),
            hours: 1,
            window_secs: 60,
            nonce,
            created_at: t,
            expires_at: t.plus_ms(60_000),
        },
        customer,
    );
    signed(
        LeaseAgreement {
            version: PROTOCOL_VERSION,
            supplier: supplier.public(),
            proposal,
            gpu_indices: vec![0],
            hardware_fingerprint: Id([7; 32]),
            starts_at: t,
            ends_at: t.plus_ms(3_600_000),
            created_at: t,
        },
        supplier,
    )
}

/// Raw verifies/s on one core by the protocol's rule (ZIP-215,
/// ed25519-zebra's single check) of a signature from its bytes (the key
/// parsed from its 32 bytes each time, as a verifier meeting it for the
/// first time does; the message built beforehand).
fn raw_verify_rate() -> f64 {
    let key = Keypair::from_seed([1; 32]);
    let body = b"rigmesh settlement bench".to_vec();
    let signature = key.sign(Kind::Vote, &body);
    let message = crypto::signing_bytes(Kind::Vote, &body);
    let signature = ed25519_zebra::Signature::from_bytes(&signature.0);
    let public = key.public().0;
    let n = 4_000;
    let start = Instant::now();
    for _ in 0..n {
        let key = ed25519_zebra::VerificationKey::try_from(public).unwrap();
        key.verify(&signature, &message).unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The set's admin, who signs deposits.
fn admin() -> Keypair {
    Keypair::from_seed([0x7f; 32])
}

/// A deposit of `amount` credits to `account`, signed by the admin.
fn deposit(account: PublicKey, amount: &str, reference: String) -> Signed<Deposit> {
    let admin = admin();
    signed(
        Deposit {
            version: PROTOCOL_VERSION,
            epoch: 1,
            admin: admin.public(),
            account,
            amount: amount.parse().unwrap(),
            reference,
            created_at: UnixMillis::now(),
        },
        &admin,
    )
}

/// `customer`'s escrow order (its debit `seq`) for the lease `agreement`.
fn escrow_order(
    customer: &Keypair,
    agreement: &Signed<LeaseAgreement>,
    seq: u64,
    now: UnixMillis,
) -> Signed<EscrowOrder> {
    signed(
        EscrowOrder {
            version: PROTOCOL_VERSION,
            account: customer.public(),
            seq,
            epoch: 1,
            lease: agreement.id().unwrap(),
            supplier: agreement.body.supplier,
            amount: ESCROW.parse().unwrap(),
            created_at: now,
            expires_at: now.plus_ms(600_000),
        },
        customer,
    )
}

/// The supplier's attestation of window `seq` of the lease `agreement`
/// (after the attestation `prev`), and the customer's ack of it.
fn metered(
    agreement: &Signed<LeaseAgreement>,
    (supplier, customer): (&Keypair, &Keypair),
    seq: u64,
    prev: Id,
    now: UnixMillis,
) -> (Signed<UsageAttestation>, Signed<UsageAck>) {
    let lease = agreement.id().unwrap();
    let window_start = agreement.body.starts_at.plus_ms(seq * WINDOW_MS);
    let attestation = signed(
        UsageAttestation {
            version: PROTOCOL_VERSION,
            lease,
            supplier: supplier.public(),
            customer: customer.public(),
            seq,
            prev,
            window_start,
            window_end: window_start.plus_ms(WINDOW_MS),
            gpus: vec![GpuUsage {
                gpu_index: 0,
                billable_ms: WINDOW_MS,
                mean_util_bp: 9_000,
                peak_util_bp: 10_000,
                peak_memory_mib: 1_000,
                // 600 W for the 60 s window: what an H100 at 90 % draws.
                energy_mj: 36_000_000,
            }],
            billable_gpu_ms: WINDOW_MS,
            created_at: window_start.plus_ms(WINDOW_MS),
        },
        supplier,
    );
    let ack = signed(
        UsageAck {
            version: PROTOCOL_VERSION,
            lease,
            customer: customer.public(),
            attestation: attestation.id().unwrap(),
            seq,
            created_at: now,
        },
        customer,
    );
    (attestation, ack)
}

/// The supplier's request settling window `window` of the lease
/// `agreement` (escrowed by the order `escrow`, its attestation `head`)
/// with `payout`.
fn settlement_request(
    supplier: &Keypair,
    agreement: &Signed<LeaseAgreement>,
    escrow: Id,
    window: u64,
    head: Id,
    payout: &rigmesh_ledger::Payout,
    last: bool,
) -> Signed<SettlementRequest> {
    signed(
        SettlementRequest {
            version: PROTOCOL_VERSION,
            lease: agreement.id().unwrap(),
            supplier: supplier.public(),
            customer: agreement.body.proposal.body.customer,
            settlement_seq: window,
            epoch: 1,
            escrow,
            first_window: window,
            last_window: window,
            attestation_head: head,
            billable_gpu_ms: WINDOW_MS,
            supplier_amount: payout.supplier,
            fee: payout.fee,
            refund: payout.refund,
            held: payout.held,
            final_settlement: last,
            created_at: UnixMillis::now(),
        },
        supplier,
    )
}

/// A funded lease with its windows attested and acked: what the
/// supplier's settlement worker holds.
struct Funded {
    agreement: Signed<LeaseAgreement>,
    escrow: EscrowCertificate,
    attestations: Vec<Signed<UsageAttestation>>,
    acks: Vec<Signed<UsageAck>>,
}

/// Funds lease number `nonce` (the customer's debit `seq`) through the
/// quorum, as the customer's node does, and meters its windows.
async fn fund(
    quorum: &Quorum,
    customer: &Keypair,
    supplier: &Keypair,
    nonce: u64,
    seq: u64,
) -> Funded {
    let agreement = lease(customer, supplier, nonce);
    let now = UnixMillis::now();
    let order = escrow_order(customer, &agreement, seq, now);
    let escrow = quorum
        .certify(
            &order,
            &CoordinatorRequest::Escrow {
                order: order.clone(),
                agreement: Box::new(agreement.clone()),
                missing: Vec::new(),
            },
        )
        .await
        .unwrap();
    quorum
        .deliver(CertificateFrame::Escrow(Box::new(escrow.clone())))
        .await;
    let mut attestations: Vec<Signed<UsageAttestation>> = Vec::new();
    let mut acks = Vec::new();
    for seq in 0..WINDOWS {
        let prev = attestations.last().map_or(Id::ZERO, |a| a.id().unwrap());
        let (attestation, ack) = metered(&agreement, (supplier, customer), seq, prev, now);
        attestations.push(attestation);
        acks.push(ack);
    }
    Funded {
        agreement,
        escrow,
        attestations,
        acks,
    }
}

/// Settles every window of a lease, one request per window, the way the
/// supplier's worker builds and sends them; the latency of each
/// certificate.
async fn settle(quorum: Quorum, supplier: Keypair, lease: Funded) -> Vec<Duration> {
    let fee = FeeRate::new("0.01".parse().unwrap()).unwrap();
    let escrowed: Credits = ESCROW.parse().unwrap();
    let mut paid = Credits::ZERO;
    let mut earlier: Option<SettlementCertificate> = None;
    let mut latencies = Vec::with_capacity(WINDOWS as usize);
    for window in 0..WINDOWS {
        let last = window + 1 == WINDOWS;
        let payout = billing::payout(
            PRICE.parse().unwrap(),
            WINDOW_MS,
            escrowed.checked_sub(paid).unwrap(),
            fee,
            last,
        )
        .unwrap();
        let request = settlement_request(
            &supplier,
            &lease.agreement,
            lease.escrow.subject().unwrap(),
            window,
            lease.attestations[window as usize].id().unwrap(),
            &payout,
            last,
        );
        // As the supplier's settlement worker bundles it: the previous window's
        // attestation first, the range's acks, the escrow certificate and
        // the lease's last settlement certificate.
        let first = (window as usize).saturating_sub(1);
        let bundle = SettlementBundle {
            request: request.clone(),
            agreement: lease.agreement.clone(),
            escrow: Some(lease.escrow.clone()),
            attestations: lease.attestations[first..=window as usize].to_vec(),
            acks: vec![lease.acks[window as usize].clone()],
            disputes: Vec::new(),
            earlier: earlier.iter().cloned().collect(),
        };
        let began = Instant::now();
        let cert = quorum
            .certify(&request, &CoordinatorRequest::Settle(Box::new(bundle)))
            .await
            .unwrap();
        let applied = quorum
            .deliver(CertificateFrame::Settlement(Box::new(cert.clone())))
            .await;
        latencies.push(began.elapsed());
        assert!(applied >= 3, "a quorum applies the certificate");
        paid = paid
            .checked_add(payout.supplier)
            .and_then(|p| p.checked_add(payout.fee))
            .unwrap();
        earlier = Some(cert);
    }
    latencies
}

/// Flushes and writes of the coordinators' books so far, all together.
fn group_commits(coordinators: &[RunningNode]) -> (u64, u64) {
    coordinators
        .iter()
        .filter_map(|c| c.coordinator.as_ref())
        .map(|role| role.ledger.group_commit_stats())
        .fold((0, 0), |(f, w), s| (f + s.flushes, w + s.writes))
}

/// What the bench reads of its processes, summed over them.
#[derive(Clone, Copy, Default)]
struct Totals {
    /// Signatures checked (every node's verification path).
    checks: u64,
    /// Flushes and writes of the coordinators' books.
    flushes: u64,
    writes: u64,
    /// CPU time used, seconds.
    cpu: f64,
    /// Resident memory, MB.
    resident_mb: f64,
}

impl Totals {
    /// This process's own figures, with `coordinators` running in it.
    fn here(coordinators: &[RunningNode]) -> Totals {
        let (flushes, writes) = group_commits(coordinators);
        Totals {
            checks: crypto::signature_checks().total(),
            flushes,
            writes,
            cpu: support::cpu_seconds(),
            resident_mb: support::resident_mb(),
        }
    }

    fn add(self, other: Totals) -> Totals {
        Totals {
            checks: self.checks + other.checks,
            flushes: self.flushes + other.flushes,
            writes: self.writes + other.writes,
            cpu: self.cpu + other.cpu,
            resident_mb: self.resident_mb + other.resident_mb,
        }
    }

    /// One line of a member process's answer to `stats`.
    fn line(&self) -> String {
        format!(
            "stats {} {} {} {} {}",
            self.checks, self.flushes, self.writes, self.cpu, self.resident_mb
        )
    }

    fn parse(line: &str) -> Totals {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.first(), Some(&"stats"), "a member answered {line:?}");
        Totals {
            checks: f[1].parse().unwrap(),
            flushes: f[2].parse().unwrap(),
            writes: f[3].parse().unwrap(),
            cpu: f[4].parse().unwrap(),
            resident_mb: f[5].parse().unwrap(),
        }
    }
}

/// A coordinator running in a process of its own: this bench's binary
/// started again with `--member I --dir DIR`.
struct Member {
    process: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    addr: libp2p::Multiaddr,
}

impl Member {
    fn spawn(i: usize, dir: &std::path::Path) -> Member {
        use std::io::BufRead;
        let mut process = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--member")
            .arg(i.to_string())
            .arg("--dir")
            .arg(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = process.stdin.take().unwrap();
        let mut stdout = std::io::BufReader::new(process.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("member {i} said {line:?}"))
            .trim()
            .parse()
            .unwrap();
        Member {
            process,
            stdin,
            stdout,
            addr,
        }
    }

    fn totals(&mut self) -> Totals {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "stats").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        Totals::parse(&line)
    }

    fn stop(mut self) {
        drop(self.stdin);
        assert!(self.process.wait().unwrap().success(), "a member failed");
    }
}

/// The member process: one coordinator on `dir`, its address on the
/// first line of its output, then a line of [`Totals`] for each `stats`
/// it reads, until its input ends.
fn member(i: usize, dir: &std::path::Path) {
    use std::io::BufRead;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = runtime.block_on(start(Role::Coordinator, dir, Some(i)));
    let addr = node.listen_addrs[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(node.peer_id));
    println!("ready {addr}");
    for line in std::io::stdin().lock().lines() {
        if line.unwrap() != "stats" {
            break;
        }
        println!("{}", Totals::here(std::slice::from_ref(&node)).line());
    }
    runtime.block_on(node.stop()).unwrap();
}

/// The four coordinators of a phase: nodes of this process, or one
/// process each, as production runs them.
enum Set {
    Here(Vec<RunningNode>),
    Apart(Vec<Member>),
}

impl Set {
    async fn start(dirs: &[std::path::PathBuf], apart: bool) -> Set {
        if apart {
            Set::Apart(
                dirs.iter()
                    .enumerate()
                    .map(|(i, dir)| Member::spawn(i, dir))
                    .collect(),
            )
        } else {
            let mut nodes = Vec::new();
            for (i, dir) in dirs.iter().enumerate() {
                nodes.push(start(Role::Coordinator, dir, Some(i)).await);
            }
            Set::Here(nodes)
        }
    }

    fn addrs(&self) -> Vec<libp2p::Multiaddr> {
        match self {
            Set::Here(nodes) => nodes
                .iter()
                .map(|c| {
                    c.listen_addrs[0]
                        .clone()
                        .with(libp2p::multiaddr::Protocol::P2p(c.peer_id))
                })
                .collect(),
            Set::Apart(members) => members.iter().map(|m| m.addr.clone()).collect(),
        }
    }

    /// Every process's figures, this one's included (the client's).
    fn totals(&mut self) -> Totals {
        match self {
            Set::Here(nodes) => Totals::here(nodes),
            Set::Apart(members) => members
                .iter_mut()
                .fold(Totals::here(&[]), |sum, m| sum.add(m.totals())),
        }
    }

    async fn stop(self) {
        match self {
            Set::Here(nodes) => {
                for node in nodes {
                    node.stop().await.unwrap();
                }
            }
            Set::Apart(members) => members.into_iter().for_each(Member::stop),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The finished leases `--books N` grows each coordinator's books by, as
/// the accounts of a market that has run for a while: this many customers
/// (each funded by a deposit, its escrow orders in sequence) and suppliers.
const GROWN_CUSTOMERS: usize = 1_000;
const GROWN_SUPPLIERS: usize = 100;

/// The key of grown account `i` of a role (`tag`).
fn grown_key(tag: u8, i: usize) -> Keypair {
    let mut seed = [tag; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Keypair::from_seed(seed)
}

/// The value after `flag` among the bench's arguments.
fn arg(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// What a grown lease's parties sign, before any coordinator has seen it.
struct Grown {
    agreement: Signed<LeaseAgreement>,
    order: Signed<EscrowOrder>,
    attestation: Signed<UsageAttestation>,
    ack: Signed<UsageAck>,
    request: Signed<SettlementRequest>,
}

/// Lease number `n` of the grown books: customer `n % GROWN_CUSTOMERS`
/// (its debit `n / GROWN_CUSTOMERS`) with supplier `n % GROWN_SUPPLIERS`,
/// one window metered, acked and settled finally.
fn grown_lease(n: usize, rules: &rigmesh_ledger::CoordinatorConfig) -> Grown {
    let customer = grown_key(0xc1, n % GROWN_CUSTOMERS);
    let supplier = grown_key(0x51, n % GROWN_SUPPLIERS);
    let agreement = lease(&customer, &supplier, n as u64);
    let now = UnixMillis::now();
    let order = escrow_order(&customer, &agreement, (n / GROWN_CUSTOMERS) as u64, now);
    let (attestation, ack) = metered(&agreement, (&supplier, &customer), 0, Id::ZERO, now);
    let payout = billing::payout(
        PRICE.parse().unwrap(),
        WINDOW_MS,
        ESCROW.parse().unwrap(),
        rules.fee_rate,
        true,
    )
    .unwrap();
    let request = settlement_request(
        &supplier,
        &agreement,
        order.id().unwrap(),
        0,
        attestation.id().unwrap(),
        &payout,
        true,
    );
    Grown {
        agreement,
        order,
        attestation,
        ack,
        request,
    }
}

/// Runs `step` for each coordinator at once, each on a thread of its own
/// with the rules over its books, and returns what each gave.
fn at_each<T: Send>(
    books: &[rigmesh_ledger::Ledger<rigmesh_ledger::SledStore>],
    rules: &rigmesh_ledger::CoordinatorConfig,
    step: impl Fn(&rigmesh_ledger::Coordinator<'_, rigmesh_ledger::SledStore>) -> T + Sync,
) -> Vec<T> {
    let keys: Vec<Keypair> = (0..books.len())
        .map(|i| Keypair::from_seed(seed(i)))
        .collect();
    std::thread::scope(|scope| {
        let running: Vec<_> = books
            .iter()
            .zip(&keys)
            .map(|(ledger, key)| {
                let step = &step;
                scope.spawn(move || step(&rigmesh_ledger::Coordinator::new(ledger, key, rules)))
            })
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// The certificate of each of `messages`, assembled from the votes of
/// the first three coordinators (`votes[c][i]`: coordinator `c`'s vote on
/// message `i`).
fn from_three<'a, T: rigmesh_protocol::messages::settlement::Certifiable + 'a>(
    messages: impl Iterator<Item = &'a Signed<T>>,
    votes: &[Vec<Signed<rigmesh_protocol::Vote>>],
) -> Vec<rigmesh_protocol::Certificate<T>> {
    messages
        .enumerate()
        .map(|(i, message)| {
            let three: Vec<_> = votes.iter().take(3).map(|v| v[i].clone()).collect();
            rigmesh_protocol::Certificate::assemble(message.clone(), &three).unwrap()
        })
        .collect()
}

/// Grows the books in `dirs` (one coordinator's data directory each, in
/// member order) by `leases` finished leases through the coordinators'
/// own rules, as the network would have: each coordinator votes on every
/// escrow order and settlement request, each certificate is assembled
/// from three votes and applied by all four. Nothing is flushed until the
/// end (the books are written as a node would have written them, over
/// time; only their content matters here).
fn grow_books(dirs: &[std::path::PathBuf], leases: usize) {
    let rules = set_config().rules().unwrap();
    let books: Vec<_> = dirs
        .iter()
        .map(|d| {
            rigmesh_ledger::Ledger::open_with(
                &d.join("books"),
                rigmesh_ledger::Durability::Buffered,
            )
            .unwrap()
        })
        .collect();
    let deposits: Vec<Signed<Deposit>> = (0..GROWN_CUSTOMERS.min(leases))
        .map(|i| deposit(grown_key(0xc1, i).public(), "1000", format!("grown {i}")))
        .collect();
    at_each(&books, &rules, |c| {
        for d in &deposits {
            assert!(matches!(
                c.apply_deposit(d, UnixMillis::now()),
                Ok(rigmesh_ledger::Applied::Applied)
            ));
        }
    });
    let mut done = 0;
    while done < leases {
        // A customer's orders go in sequence: one lease of each a round.
        let round: Vec<usize> = (done..leases.min(done + GROWN_CUSTOMERS)).collect();
        let half = round.len().div_ceil(2);
        let grown: Vec<Grown> = std::thread::scope(|scope| {
            let parts: Vec<_> = round
                .chunks(half.max(1))
                .map(|part| {
                    let rules = &rules;
                    scope.spawn(move || {
                        part.iter()
                            .map(|n| grown_lease(*n, rules))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts.into_iter().flat_map(|t| t.join().unwrap()).collect()
        });
        let votes = at_each(&books, &rules, |c| {
            grown
                .iter()
                .map(|g| {
                    c.vote_escrow(&g.order, &g.agreement, UnixMillis::now())
                        .unwrap()
                })
                .collect::<Vec<_>>()
        });
        let escrows: Vec<EscrowCertificate> = from_three(grown.iter().map(|g| &g.order), &votes);
        let votes = at_each(&books, &rules, |c| {
            grown
                .iter()
                .zip(&escrows)
                .map(|(g, escrow)| {
                    assert!(matches!(
                        c.apply_escrow(escrow, UnixMillis::now()),
                        Ok(rigmesh_ledger::Applied::Applied)
                    ));
                    let evidence = rigmesh_ledger::SettlementEvidence {
                        request: &g.request,
                        agreement: &g.agreement,
                        attestations: std::slice::from_ref(&g.attestation),
                        previous: None,
                        acks: std::slice::from_ref(&g.ack),
                        disputes: &[],
                        terminations: &[],
                    };
                    c.vote_settlement(&evidence, UnixMillis::now()).unwrap()
                })
                .collect::<Vec<_>>()
        });
        let settlements: Vec<SettlementCertificate> =
            from_three(grown.iter().map(|g| &g.request), &votes);
        at_each(&books, &rules, |c| {
            for certificate in &settlements {
                assert!(matches!(
                    c.apply_settlement(certificate, UnixMillis::now()),
                    Ok(rigmesh_ledger::Applied::Applied)
                ));
            }
        });
        done += round.len();
        if done % 10_000 == 0 {
            eprintln!("  grown by {done} leases");
        }
    }
    for ledger in &books {
        ledger.flush().unwrap();
    }
}

/// Bytes under `dir`, every file below it.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => disk_bytes(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}

/// Starts 4 coordinators on the data directories `dirs` (their books as
/// they are) and a client node, funds the bench's customer and runs the
/// cases.
async fn run_cases(dirs: &[std::path::PathBuf], passes: usize, apart: bool) {
    // Measured before any node of the phase runs: a coordinator starting
    // on large books is busy for a while.
    let raw = raw_verify_rate();
    let client_dir = tempfile::tempdir().unwrap();
    let began = Instant::now();
    let mut coordinators = Set::start(dirs, apart).await;
    let started = began.elapsed();
    let client = start(Role::Relay, client_dir.path(), None).await;
    for addr in coordinators.addrs() {
        client.handle.dial(addr).await.unwrap();
    }
    while client.store.count(Kind::NodeBinding) < 4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quorum = client.quorum.clone().unwrap();
    let customer = Keypair::from_seed([0x21; 32]);
    let supplier = Keypair::from_seed([0x12; 32]);
    let deposit = deposit(customer.public(), "1000000", "bench".into());
    let resident = coordinators.totals().resident_mb;
    // Delivered until all four have it: a coordinator busy opening large
    // books may not answer the first time.
    let funding = Instant::now();
    let mut tries = 1;
    while quorum
        .deliver(CertificateFrame::Deposit(deposit.clone()))
        .await
        < 4
    {
        assert!(
            funding.elapsed() < Duration::from_secs(120),
            "deposit not applied by all four"
        );
        tries += 1;
    }
    // What the coordinators do once at start (their first rounds) done:
    // the processes idle for a quarter of a second.
    let settling = Instant::now();
    loop {
        let cpu = coordinators.totals().cpu;
        tokio::time::sleep(Duration::from_millis(250)).await;
        if coordinators.totals().cpu - cpu < 0.025 || settling.elapsed() > Duration::from_secs(120)
        {
            break;
        }
    }
    let settled = settling.elapsed();
    println!(
        "  the 4 coordinators started in {:.2} s (resident then: {resident:.0} MB); the deposit applied by all four in {:.2} s ({tries} deliveries); idle {:.2} s later; raw ed25519 verify: {raw:.0}/s (one core, before the phase's nodes started)",
        started.as_secs_f64(),
        funding.elapsed().as_secs_f64(),
        settled.as_secs_f64(),
    );
    let mut seq = 0u64;
    // The cases `passes` times over, on the same books.
    for (at_once, leases) in (0..passes).flat_map(|pass| {
        if pass > 0 {
            println!("  again, on the same books:");
        }
        CASES
    }) {
        let mut funded = Vec::with_capacity(leases);
        for _ in 0..leases {
            funded.push(fund(&quorum, &customer, &supplier, seq, seq).await);
            seq += 1;
        }
        let before = coordinators.totals();
        let began = Instant::now();
        let mut latencies = Vec::new();
        // A new lease starts settling as soon as one finishes, so
        // `at_once` leases are in flight until the last ones drain.
        let mut running = futures::stream::iter(funded)
            .map(|lease| settle(quorum.clone(), supplier.clone(), lease))
            .buffer_unordered(at_once);
        while let Some(done) = running.next().await {
            latencies.extend(done);
        }
        let elapsed = began.elapsed().as_secs_f64();
        let after = coordinators.totals();
        let cores = (after.cpu - before.cpu) / elapsed;
        let settlements = latencies.len();
        let verifications = (after.checks - before.checks) as f64 / settlements as f64;
        let rate = settlements as f64 / elapsed;
        let flushes = after.flushes - before.flushes;
        let writes = after.writes - before.writes;
        let budget = raw / verifications;
        latencies.sort();
        println!(
            "  {at_once:>2} at once: {rate:7.1} certified settlements/s ({settlements} in {elapsed:.2} s), latency p50 {:.2} ms, p99 {:.2} ms; {verifications:.1} verifications per settlement, budget {budget:.1}/s, ratio {:.3}",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            rate / budget,
        );
        println!(
            "            books: {writes} writes in {flushes} flushes at the 4 coordinators, {:.2} writes per flush; CPU busy {cores:.2} cores on average",
            writes as f64 / flushes.max(1) as f64
        );
    }
    println!(
        "  resident after the cases: {:.0} MB",
        coordinators.totals().resident_mb
    );
    client.stop().await.unwrap();
    coordinators.stop().await;
}

/// Four coordinators' data directories whose books hold `leases` grown
/// leases: grown here, or copied from `kept` if an earlier run grew them
/// there (`kept` then gets a copy of what is grown here). Prints how.
fn grown_dirs(leases: usize, kept: Option<&std::path::Path>) -> Vec<tempfile::TempDir> {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<_> = dirs.iter().map(|d| d.path().to_path_buf()).collect();
    let marker = kept.map(|k| k.join(format!("grown-{leases}")));
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success(), "copying {}", from.display());
    };
    let (kept, marker) = match (kept, marker) {
        (Some(kept), Some(marker)) if marker.exists() => {
            for (i, path) in paths.iter().enumerate() {
                copy(&kept.join(format!("coordinator-{i}")).join("books"), path);
            }
            println!(
                "on books grown by {leases} finished leases by an earlier run (copied from {}):",
                kept.display()
            );
            return dirs;
        }
        other => other,
    };
    let began = Instant::now();
    grow_books(&paths, leases);
    println!(
        "on books grown by {leases} finished leases of {} customers and {} suppliers (each voted, certified and applied by the coordinators' rules; {:.0} s to grow, {:.1} MB on disk a coordinator):",
        GROWN_CUSTOMERS.min(leases),
        GROWN_SUPPLIERS.min(leases),
        began.elapsed().as_secs_f64(),
        disk_bytes(&paths[0].join("books")) as f64 / 1e6,
    );
    if let (Some(kept), Some(marker)) = (kept, marker) {
        for (i, path) in paths.iter().enumerate() {
            let to = kept.join(format!("coordinator-{i}"));
            std::fs::create_dir_all(&to).unwrap();
            copy(&path.join("books"), &to);
        }
        std::fs::write(marker, b"").unwrap();
    }
    dirs
}

fn main() {
    if let Some(i) = arg("--member") {
        let dir = arg("--dir").expect("--member takes --dir");
        member(
            i.parse().expect("--member takes a member's number"),
            std::path::Path::new(&dir),
        );
        return;
    }
    let grown: usize =
        arg("--books").map_or(0, |n| n.parse().expect("--books takes a number of leases"));
    let kept = arg("--books-dir").map(std::path::PathBuf::from);
    let apart = std::env::args().any(|a| a == "--processes");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "settlement: 4 coordinators on loopback ({}), sled books flushed before any answer (group commit), {WINDOWS} one-window settlements per lease with the bundles a supplier sends",
        if apart {
            "each in a process of its own, the client in this one"
        } else {
            "the coordinators and the client in this process"
        }
    );
    // The cases `passes` times over on the coordinators' data directories.
    let run = |dirs: &[tempfile::TempDir], passes| {
        let paths: Vec<_> = dirs.iter().map(|d| d.path().to_path_buf()).collect();
        runtime.block_on(run_cases(&paths, passes, apart));
    };
    let fresh: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    println!("on books that start empty:");
    run(&fresh, 1);
    drop(fresh);
    if grown > 0 {
        run(&grown_dirs(grown, kept.as_deref()), 3);
    }
    println!("  target: ratio >= 0.5 with 8 and with 64 at once");
}
