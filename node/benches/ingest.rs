//! Ingest throughput on one node: a mix of gossiped message kinds (offers,
//! bids, usage attestations and acks of 500 running leases, window after
//! window, and settlement certificates, in the proportions of a busy
//! market) pushed through the node's real
//! ingest queue and task ([`rigmesh_node::network::ingest::run`]: bounded
//! queue, frame, decode, field and time checks, batched signature
//! verification of every signature, certificates' votes included,
//! ledger checks, one batched sled write per batch, a verdict per message
//! back to the sender's queue). Beside it, the raw ed25519 batch
//! verification of every signature those same messages carry, measured in
//! the same run: the physical limit here. Target: ratio >= 0.7.
//!
//! The signatures the pipeline checked are counted in the verification
//! path ([`rigmesh_protocol::crypto::signature_checks`]) and printed, so
//! any single checks show beside the batched ones.
//!
//! The raw baseline is the batch equation of the protocol's rule (ZIP-215,
//! ed25519-zebra's) with each key parsed from its bytes, as a verifier
//! meeting it for the first time does (the node keeps keys it parsed
//! lately); ed25519-dalek's cofactorless batch equation over the same
//! signatures is printed beside it. More lines tell where the
//! pipeline's time goes: the raw verification on every core at once (how
//! much the overlap of the pipeline's two steps can add on this machine),
//! each step alone on one thread (the slower step bounds the pipeline),
//! and the commit step alone again while another core verifies signatures
//! without pause, as the check step keeps it busy in the pipeline. Last,
//! the run's certificates are brought again once stored, as catch-up
//! sync brings a node what it holds (ignored as held before their votes
//! are checked), against the batch checks of their signatures that a
//! certificate the node does not hold takes, in the same run.
//!
//! Run: `cargo bench -p rigmesh-node --bench ingest`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Instant;

#[path = "support/mod.rs"]
mod support;

use libp2p::PeerId;
use rigmesh_ledger::MarketStore;
use rigmesh_node::network::ingest::{self, Ingest, IngestItem, Outcome};
use rigmesh_node::network::metrics::NetworkMetrics;
use rigmesh_node::network::NetworkConfig;
use rigmesh_protocol::crypto::{self, VerifyItem};
use rigmesh_protocol::messages::settlement::Certificate;
use rigmesh_protocol::rpc::GossipFrame;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    samples, Bid, Carrier, Credits, Id, Keypair, Offer, Signed, UnixMillis, UsageAck,
    PROTOCOL_VERSION,
};

const MESSAGES: usize = 20_000;

/// The running leases whose usage the attestations and acks report. A
/// lease sends an attestation and its customer an ack every window, so, as
/// in a busy market, most evidence names a lease seen a window before:
/// here 8 attestations and 6 acks a lease.
const LEASES: usize = 500;

fn lease(index: usize) -> Id {
    Id::hardware_fingerprint(&[format!("bench-lease-{}", index % LEASES)])
}

/// Of every 20 messages: 8 offers, 4 bids, 4 attestations, 3 acks and one
/// settlement certificate (a certificate per few windows settled).
fn message(n: usize, now: UnixMillis, keys: &[Keypair]) -> WireMessage {
    let key = &keys[n % keys.len()];
    let unique = Id::hardware_fingerprint(&[format!("bench-{n}")]);
    match n % 20 {
        0..=7 => WireMessage::Offer(
            Signed::sign(
                Offer {
                    version: PROTOCOL_VERSION,
                    supplier: key.public(),
                    sequence: 1,
                    gpu_model: "NVIDIA H100 80GB HBM3".into(),
                    gpu_memory_mib: 81_559,
                    gpu_count: 8,
                    price_per_gpu_hour: Credits::from_units(2_000_000 + n as i64),
                    min_hours: 1,
                    max_hours: 24,
                    region: "eu-west".into(),
                    hardware_fingerprint: unique,
                    created_at: now,
                    expires_at: now.plus_ms(3_600_000),
                },
                key,
            )
            .unwrap(),
        ),
        8..=11 => WireMessage::Bid(
            Signed::sign(
                Bid {
                    version: PROTOCOL_VERSION,
                    customer: key.public(),
                    gpu_model: "NVIDIA H100 80GB HBM3".into(),
                    min_memory_mib: 80_000,
                    gpu_count: 2,
                    max_price_per_gpu_hour: Credits::from_units(2_750_000 + n as i64),
                    hours: 4,
                    region: Some("eu-west".into()),
                    created_at: now,
                    expires_at: now.plus_ms(600_000),
                },
                key,
            )
            .unwrap(),
        ),
        12..=15 => {
            let index = n / 20 * 4 + (n % 20 - 12);
            WireMessage::UsageAttestation(attestation(lease(index), index / LEASES, now))
        }
        16..=18 => {
            let index = n / 20 * 3 + (n % 20 - 16);
            let a = attestation(lease(index), index / LEASES, now);
            WireMessage::UsageAck(
                Signed::sign(
                    UsageAck {
                        version: PROTOCOL_VERSION,
                        lease: a.body.lease,
                        customer: samples::customer().public(),
                        attestation: a.id().unwrap(),
                        seq: a.body.seq,
                        created_at: now,
                    },
                    &samples::customer(),
                )
                .unwrap(),
            )
        }
        _ => {
            let mut request = samples::settlement_request_at(now).unwrap().body;
            request.lease = unique;
            request.created_at = now;
            let request = Signed::sign(request, &samples::supplier()).unwrap();
            let votes: Vec<_> = samples::coordinators()
                .iter()
                .take(3)
                .map(|k| {
                    Signed::sign(Certificate::vote_for(&request, k.public()).unwrap(), k).unwrap()
                })
                .collect();
            WireMessage::SettlementCertificate(Certificate::assemble(request, &votes).unwrap())
        }
    }
}

/// Window `seq` of a lease named `lease`, made at `now`.
fn attestation(
    lease: Id,
    seq: usize,
    now: UnixMillis,
) -> Signed<rigmesh_protocol::UsageAttestation> {
    let mut body = samples::usage_attestation_at(now.minus_ms(120_000))
        .unwrap()
        .body;
    body.lease = lease;
    body.seq = seq as u64;
    body.prev = if seq == 0 {
        Id::ZERO
    } else {
        Id::hardware_fingerprint(&[format!("window-{seq}")])
    };
    body.created_at = now;
    Signed::sign(body, &samples::supplier()).unwrap()
}

/// Msg/s of the ingest's check step alone over `batches`, then of its
/// commit step alone into a fresh store on disk; `committed` is called
/// when the commit step is done.
fn steps_alone(batches: &[Vec<IngestItem>], committed: impl FnOnce()) -> (f64, f64) {
    let messages: usize = batches.iter().map(Vec::len).sum();
    let dir = tempfile::tempdir().unwrap();
    let alone = Ingest::new(
        Arc::new(MarketStore::open(dir.path()).unwrap()),
        Some(samples::coordinator_set().unwrap()),
    );
    let clock = rigmesh_protocol::Clock::system();
    let start = Instant::now();
    let checked: Vec<_> = batches.iter().map(|b| alone.check(b, &clock)).collect();
    let check_rate = messages as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut stored = 0;
    for c in checked {
        stored += alone.commit(c, &clock).1.len();
    }
    let commit_rate = messages as f64 / start.elapsed().as_secs_f64();
    committed();
    assert_eq!(stored, messages, "every message is new and valid");
    (check_rate, commit_rate)
}

/// A batch as raw verification takes it: the signed bytes, the
/// signatures, and the keys as 32 bytes each.
type RawBatch = (Vec<Vec<u8>>, Vec<[u8; 64]>, Vec<[u8; 32]>);

/// Every signature `message` carries: a signed message's own (and any
/// inside it), a certificate's message and each of its votes.
fn signatures(message: &WireMessage) -> Vec<VerifyItem> {
    message.signature_items().unwrap()
}

fn main() {
    let now = UnixMillis::now();
    // Enough authors that none passes its quota of live offers (64) or
    // bids (32): about 31 offers and 16 bids each.
    let keys: Vec<Keypair> = (0..=255u8).map(|i| Keypair::from_seed([i; 32])).collect();
    let messages: Vec<WireMessage> = (0..MESSAGES).map(|n| message(n, now, &keys)).collect();
    let limits = NetworkConfig::default().limits;
    let batch = limits.ingest_batch.max(1);

    // The raw limit: batch verification of exactly these signatures by
    // the protocol's rule (ed25519-zebra's batch equation), each key
    // parsed from its 32 bytes (as a verifier meeting it for the first
    // time does), the signed bytes built beforehand.
    let items: Vec<VerifyItem> = messages.iter().flat_map(signatures).collect();
    let chunks: Vec<RawBatch> = items
        .chunks(batch)
        .map(|chunk| {
            (
                chunk
                    .iter()
                    .map(|i| crypto::signing_bytes(i.kind, &i.body))
                    .collect(),
                chunk.iter().map(|i| i.signature.0).collect(),
                chunk.iter().map(|i| i.signer.0).collect(),
            )
        })
        .collect();
    let raw_pass = || {
        for (signed, signatures, keys) in &chunks {
            let mut verifier = ed25519_zebra::batch::Verifier::new();
            for ((signed, signature), key) in signed.iter().zip(signatures).zip(keys) {
                verifier.queue((
                    ed25519_zebra::VerificationKeyBytes::from(*key),
                    ed25519_zebra::Signature::from_bytes(signature),
                    signed,
                ));
            }
            verifier.verify(rand::rng()).unwrap();
        }
    };
    let start = Instant::now();
    raw_pass();
    let raw = MESSAGES as f64 / start.elapsed().as_secs_f64();
    // ed25519-dalek's cofactorless batch equation over the same
    // signatures, for comparison (not the protocol's rule).
    let start = Instant::now();
    for (signed, signatures, keys) in &chunks {
        let keys: Vec<ed25519_dalek::VerifyingKey> = keys
            .iter()
            .map(|k| ed25519_dalek::VerifyingKey::from_bytes(k).unwrap())
            .collect();
        let signatures: Vec<ed25519_dalek::Signature> = signatures
            .iter()
            .map(ed25519_dalek::Signature::from_bytes)
            .collect();
        let signed: Vec<&[u8]> = signed.iter().map(Vec::as_slice).collect();
        ed25519_dalek::verify_batch(&signed, &signatures, &keys).unwrap();
    }
    let raw_dalek = MESSAGES as f64 / start.elapsed().as_secs_f64();
    // The same on every core at once: how much more than one core this
    // machine gives when the pipeline's two steps overlap.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..cores {
            scope.spawn(raw_pass);
        }
    });
    let raw_all = (cores * MESSAGES) as f64 / start.elapsed().as_secs_f64();

    // The pipeline: the node's ingest task over its bounded queue,
    // persisting to sled on disk.
    let frames: Vec<IngestItem> = messages
        .iter()
        .map(|m| {
            let Carrier::Topic(topic) = m.kind().carrier() else {
                panic!("{} is not gossiped", m.kind());
            };
            IngestItem {
                source: PeerId::random(),
                message_id: None,
                topic: topic.to_string(),
                data: GossipFrame::encode(m.kind(), &m.to_bytes().unwrap()),
                received: Instant::now(),
            }
        })
        .collect();
    // The same frames in batches, for each step alone below.
    let batches: Vec<Vec<IngestItem>> = frames.chunks(batch).map(<[_]>::to_vec).collect();
    // The certificates among them, to bring again once stored.
    let certificates: Vec<IngestItem> = frames
        .iter()
        .filter(|f| f.topic == rigmesh_protocol::kind::TOPIC_CERTS)
        .cloned()
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MarketStore::open(dir.path()).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let checks_before = crypto::signature_checks();
    let (pipeline, cores_busy, accepted) = runtime.block_on(async {
        let (queue_tx, queue_rx) = tokio::sync::mpsc::channel(limits.ingest_queue.max(1));
        let (verdict_tx, mut verdict_rx) = tokio::sync::mpsc::channel(64);
        let (accepted_tx, _) = tokio::sync::broadcast::channel(1024);
        let mut registry = prometheus_client::registry::Registry::default();
        let task = tokio::spawn(ingest::run(
            Ingest::new(store.clone(), Some(samples::coordinator_set().unwrap())),
            queue_rx,
            verdict_tx,
            accepted_tx,
            batch,
            NetworkMetrics::register(&mut registry),
        ));
        let start = Instant::now();
        let cpu = support::cpu_seconds();
        let producer = tokio::spawn(async move {
            for item in frames {
                queue_tx.send(item).await.unwrap();
            }
        });
        let mut accepted = 0usize;
        let mut answered = 0usize;
        while answered < MESSAGES {
            let verdicts = verdict_rx.recv().await.unwrap();
            answered += verdicts.len();
            accepted += verdicts
                .iter()
                .filter(|v| v.outcome == Outcome::Accept)
                .count();
        }
        store.flush().unwrap();
        let elapsed = start.elapsed().as_secs_f64();
        let cores = (support::cpu_seconds() - cpu) / elapsed;
        producer.await.unwrap();
        task.await.unwrap();
        (MESSAGES as f64 / elapsed, cores, accepted)
    });
    let checks = crypto::signature_checks().since(checks_before);
    assert_eq!(accepted, MESSAGES, "every message is new and valid");
    assert_eq!(
        store.count(rigmesh_protocol::Kind::Offer),
        MESSAGES * 8 / 20
    );

    // The certificates again, as catch-up sync brings a node what it holds
    // already, through the pipeline's stages on one thread; against the
    // checks of their signatures (request and votes) in batches, which a
    // certificate the node does not hold takes.
    let again = Ingest::new(store.clone(), Some(samples::coordinator_set().unwrap()));
    let clock = rigmesh_protocol::Clock::system();
    let start = Instant::now();
    for chunk in certificates.chunks(batch) {
        let outcomes = again.process(chunk, &clock);
        assert!(outcomes.iter().all(|o| *o == Outcome::Ignore("duplicate")));
    }
    let held_rate = certificates.len() as f64 / start.elapsed().as_secs_f64();
    let certified: Vec<VerifyItem> = messages
        .iter()
        .filter(|m| m.is_certificate())
        .flat_map(signatures)
        .collect();
    let start = Instant::now();
    for chunk in certified.chunks(batch) {
        assert!(crypto::verify_batch(chunk).iter().all(Result::is_ok));
    }
    let checked_rate = certificates.len() as f64 / start.elapsed().as_secs_f64();

    // Each of the pipeline's two steps alone, one batch after another on
    // one thread, into a fresh store: the slower one bounds the pipeline.
    // The commit step once more while another thread verifies signatures
    // without pause, as the check step keeps the other core busy in the
    // pipeline.
    let (check_rate, commit_rate) = steps_alone(&batches, || ());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let busy_commit_rate = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                raw_pass();
            }
        });
        let (_, rate) = steps_alone(&batches, || {
            stop.store(true, std::sync::atomic::Ordering::Relaxed)
        });
        rate
    });

    println!(
        "ingest of {MESSAGES} gossiped messages (40 % offers, 20 % bids, 20 % usage attestations, 15 % acks, 5 % settlement certificates) through the ingest queue, batches of up to {batch}:"
    );
    println!(
        "  signatures: {} in the messages; the pipeline checked {} batched and {} one by one",
        items.len(),
        checks.batched,
        checks.single
    );
    println!(
        "  raw ed25519 batch verify: {raw:>9.0} msg/s (one core; ZIP-215, the protocol's rule)"
    );
    println!(
        "  (ed25519-dalek's cofactorless batch: {raw_dalek:.0} msg/s, {:.2} times the protocol's)",
        raw_dalek / raw
    );
    println!(
        "  raw on {cores} cores at once: {raw_all:>9.0} msg/s ({:.2} times one core: the most the pipeline's overlap can add)",
        raw_all / raw
    );
    println!(
        "  validated + persisted:    {pipeline:>9.0} msg/s (the process kept {cores_busy:.2} cores busy)"
    );
    println!(
        "  ratio pipeline/raw = {:.2} (target >= 0.7)",
        pipeline / raw
    );
    println!(
        "  each step alone on one thread: check (decode, fields, signatures) {check_rate:.0} msg/s = {:.2} of raw; commit (ledger checks, sled batch) {commit_rate:.0} msg/s = {:.2} of raw",
        check_rate / raw,
        commit_rate / raw
    );
    println!(
        "  commit step alone while another core verifies signatures: {busy_commit_rate:.0} msg/s = {:.2} of raw",
        busy_commit_rate / raw
    );
    println!(
        "  the {} certificates again, as catch-up sync brings what a node holds: {held_rate:.0} msg/s, ignored as held before their votes are checked; {checked_rate:.0} msg/s checks of their signatures in batches ({:.1} times)",
        certificates.len(),
        held_rate / checked_rate
    );
}
