//! The ingest pipeline every gossiped (or synced) message goes through:
//! frame and decode -> size, field and time checks -> signatures in batches
//! -> checks against the ledger (known, stale, replayed) -> one batched
//! write -> a verdict per message for gossipsub.
//!
//! It runs behind a bounded queue; the swarm task never waits for it, and
//! a full queue drops messages (with a metric) instead of growing. The
//! stages run on blocking threads, never on the async executors, in two
//! steps that overlap: while one batch is checked against the store and
//! written ([`Ingest::commit`]), the next is decoded and its signatures
//! verified ([`Ingest::check`]), which needs no store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use libp2p::gossipsub::MessageId;
use libp2p::PeerId;
use rigmesh_ledger::market::{quota_author, quota_of, TOMBSTONE_KEPT_MS};
use rigmesh_protocol::crypto::{self, VerifyItem};
use rigmesh_protocol::rpc::GossipFrame;
use rigmesh_protocol::wire::WireMessage;
use rigmesh_protocol::{
    CheckedCertificates, Clock, CoordinatorSet, Error as ProtocolError, Id, Kind, PublicKey,
};
use tokio::sync::mpsc;

use super::metrics::NetworkMetrics;
use super::store::{AcceptedMessage, MessageStore};

/// A message waiting for validation.
#[derive(Debug, Clone)]
pub struct IngestItem {
    /// The peer it came from.
    pub source: PeerId,
    /// Gossipsub's id, to report the verdict; `None` for synced messages.
    pub message_id: Option<MessageId>,
    /// The topic it arrived on (sync uses the kind's own topic).
    pub topic: String,
    /// The gossip frame.
    pub data: Vec<u8>,
    /// When it arrived.
    pub received: Instant,
}

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Valid and new: stored, and forwarded by gossipsub.
    Accept,
    /// Invalid: not stored, not forwarded, counted against the sender.
    Reject(&'static str),
    /// Valid but not useful (duplicate, stale, unknown epoch) or not
    /// checkable now: not stored, not forwarded, not held against anyone.
    Ignore(&'static str),
}

impl Outcome {
    /// `accept`, `reject` or `ignore`.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Accept => "accept",
            Outcome::Reject(_) => "reject",
            Outcome::Ignore(_) => "ignore",
        }
    }

    /// The reason label (`ok` when accepted).
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Accept => "ok",
            Outcome::Reject(r) | Outcome::Ignore(r) => r,
        }
    }
}

/// The verdict on one [`IngestItem`].
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The peer it came from.
    pub source: PeerId,
    /// Gossipsub's id, if it came by gossip.
    pub message_id: Option<MessageId>,
    /// What became of it.
    pub outcome: Outcome,
    /// When it arrived.
    pub received: Instant,
}

/// The validation stages, independent of the task that drives them (so the
/// benchmark can drive them directly).
pub struct Ingest {
    store: Arc<dyn MessageStore>,
    coordinators: Option<CoordinatorSet>,
    /// Each author's stored messages of a quota kind, as last counted in
    /// the store plus what ingest accepted since: a count well under the
    /// quota spares the count in the store; one near it is counted again
    /// (expiry and pruning only ever make the store's count smaller).
    quota_counts: std::sync::Mutex<HashMap<(Kind, PublicKey), usize>>,
    /// The node's record of certificates checked in full, shared with
    /// what it publishes, its compaction and a coordinator's books: the
    /// same bytes are not checked again.
    checked: Option<Arc<CheckedCertificates>>,
}

/// Authors whose counts are remembered at most; past it the memory starts
/// afresh.
const QUOTA_COUNTS_KEPT: usize = 65_536;

/// How far under its quota a remembered count must be to be trusted.
const QUOTA_MARGIN: usize = 8;

/// A batch past the checks that need no store: the outcomes so far and
/// the messages left to check against the store.
pub struct Checked {
    outcomes: Vec<Outcome>,
    staged: Vec<Staged>,
}

struct Staged {
    index: usize,
    message: WireMessage,
    bytes: Vec<u8>,
    id: Id,
    signatures: Vec<VerifyItem>,
    /// A certificate's own bytes' id, for the node's record of checked
    /// certificates once its signatures pass.
    remember: Option<Id>,
}

fn rejection(err: &ProtocolError) -> Outcome {
    match err {
        // Without the epoch's coordinator set a certificate cannot be
        // judged here; that is not the sender's fault.
        ProtocolError::CoordinatorSet(_) => Outcome::Ignore("no_coordinator_set"),
        other => Outcome::Reject(other.code()),
    }
}

impl Ingest {
    /// A pipeline writing to `store` and checking certificates against
    /// `coordinators` (certificates are ignored without one).
    pub fn new(store: Arc<dyn MessageStore>, coordinators: Option<CoordinatorSet>) -> Self {
        Ingest {
            store,
            coordinators,
            quota_counts: std::sync::Mutex::new(HashMap::new()),
            checked: None,
        }
    }

    /// Checks certificates through `checked` (the node's record, shared
    /// with a coordinator's books), so that bytes that passed there, or
    /// here, are not checked again; its set replaces the one given to
    /// [`Ingest::new`].
    pub fn checking_once(mut self, checked: Option<Arc<CheckedCertificates>>) -> Self {
        if let Some(c) = &checked {
            self.coordinators = Some(c.set().clone());
        }
        self.checked = checked;
        self
    }

    /// True if the store holds a message of `kind` with `id`; a failed
    /// read counts as not held (the commit step reads again).
    fn holds(&self, kind: Kind, id: &Id) -> bool {
        matches!(self.store.contains(kind, id), Ok(true))
    }

    /// Runs every stage over a batch and returns one verdict per item, in
    /// order.
    pub fn process(&self, items: &[IngestItem], clock: &Clock) -> Vec<Outcome> {
        self.process_batch(items, clock).0
    }

    /// [`Ingest::process`], also returning the messages it stored.
    pub fn process_batch(
        &self,
        items: &[IngestItem],
        clock: &Clock,
    ) -> (Vec<Outcome>, Vec<AcceptedMessage>) {
        self.commit(self.check(items, clock), clock)
    }

    /// The stages before the store is written: frame, decode, fields,
    /// time, and every signature of the batch, certificates' votes
    /// included, in one batch verification (whose answer is the single
    /// check's: specs/protocol.md 4.4).
    /// A certificate the store holds already (by the id of what it
    /// certifies) is ignored as a duplicate before its votes are checked:
    /// its signatures are a quorum and more, and catch-up sync brings a
    /// node up to 10,000 certificates from every peer it connects to,
    /// most of which it holds. The stored copy passed every check, and a
    /// copy with the same id changes nothing, whatever its votes. The
    /// store's filter of absent keys answers for a new certificate without
    /// a read. Signed kinds are checked first and looked up at commit, as
    /// before: their signatures cost little in a batch, and a read here
    /// (one in a hundred new messages, the filter's false positives) would
    /// wait while the commit step applies its batch. Ingest skips the
    /// checks of a certificate whose exact bytes the node checked already
    /// (a coordinator's books, or ingest itself: [`Ingest::checking_once`]).
    pub fn check(&self, items: &[IngestItem], clock: &Clock) -> Checked {
        let mut outcomes = vec![Outcome::Ignore("unprocessed"); items.len()];
        // Stage 1: frame, decode, fields, time (no signatures yet).
        let mut staged = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let checked = GossipFrame::decode(&item.topic, &item.data).and_then(|frame| {
                let message = WireMessage::decode(frame.kind, frame.bytes)?;
                let mut remember = None;
                let (id, signatures) = if message.is_certificate() {
                    let id = message.id()?;
                    if self.holds(frame.kind, &id) {
                        return Ok(None);
                    }
                    // Decoding is canonical, so these are the bytes the
                    // node's record of checked certificates knows.
                    let exact = Id::of(message.kind(), frame.bytes);
                    match self.checked.as_deref() {
                        Some(checked) if checked.passed(&exact) => (id, Vec::new()),
                        checked => {
                            message.check_unsigned(clock, self.coordinators.as_ref())?;
                            remember = checked.map(|_| exact);
                            (id, message.signature_items()?)
                        }
                    }
                } else {
                    message.check_unsigned(clock, None)?;
                    message.id_and_signatures(frame.bytes)?
                };
                Ok(Some(Staged {
                    index,
                    bytes: frame.bytes.to_vec(),
                    message,
                    id,
                    signatures,
                    remember,
                }))
            });
            match checked {
                Ok(Some(s)) => staged.push(s),
                Ok(None) => set(&mut outcomes, index, Outcome::Ignore("duplicate")),
                Err(err) => set(&mut outcomes, index, rejection(&err)),
            }
        }
        // Stage 2: every signature of the batch in one batch verification.
        let mut sig_items: Vec<VerifyItem> = Vec::new();
        let mut owners: Vec<usize> = Vec::new();
        for (pos, s) in staged.iter_mut().enumerate() {
            owners.extend(std::iter::repeat_n(pos, s.signatures.len()));
            sig_items.append(&mut s.signatures);
        }
        let mut bad: HashSet<usize> = HashSet::new();
        for (result, owner) in crypto::verify_batch(&sig_items).into_iter().zip(owners) {
            if result.is_err() {
                bad.insert(owner);
            }
        }
        let mut good = Vec::with_capacity(staged.len());
        for (pos, s) in staged.into_iter().enumerate() {
            if bad.contains(&pos) {
                set(&mut outcomes, s.index, Outcome::Reject("bad_signature"));
            } else {
                if let (Some(exact), Some(checked)) = (s.remember, self.checked.as_deref()) {
                    checked.remember(exact);
                }
                good.push(s);
            }
        }
        Checked {
            outcomes,
            staged: good,
        }
    }

    /// The stages against the store, in batch order: known, compacted,
    /// stale, over quota; then one write for the whole batch. Returns the
    /// outcome of every item of the batch and the messages stored.
    pub fn commit(&self, checked: Checked, clock: &Clock) -> (Vec<Outcome>, Vec<AcceptedMessage>) {
        let Checked {
            mut outcomes,
            staged,
        } = checked;
        // Stage 3: against the ledger and the rest of the batch.
        let mut accepted: Vec<AcceptedMessage> = Vec::new();
        let mut accepted_index: Vec<usize> = Vec::new();
        let mut batch_ids: HashSet<Id> = HashSet::new();
        let mut newest_offer: HashMap<(PublicKey, Id), (u64, usize)> = HashMap::new();
        let mut by_author: HashMap<(Kind, PublicKey), usize> = HashMap::new();
        for s in staged {
            if matches!(outcomes.get(s.index), Some(Outcome::Reject(_))) {
                continue;
            }
            let kind = s.message.kind();
            // An offer's exact replay has the same sequence as the live one,
            // so the sequence check below covers it with one read less.
            let is_offer = matches!(s.message, WireMessage::Offer(_));
            let known = if is_offer {
                Ok(false)
            } else {
                self.store.contains(kind, &s.id)
            };
            match known {
                Ok(true) => {
                    set(&mut outcomes, s.index, Outcome::Ignore("duplicate"));
                    continue;
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(%err, "ledger read failed during ingest");
                    set(&mut outcomes, s.index, Outcome::Ignore("store_error"));
                    continue;
                }
            }
            if let Some(refused) = self.after_compaction(&s.message, clock) {
                set(&mut outcomes, s.index, refused);
                continue;
            }
            if !batch_ids.insert(s.id) {
                set(&mut outcomes, s.index, Outcome::Ignore("duplicate"));
                continue;
            }
            // A new offer for a device set already offered replaces it, so
            // it takes no more of its supplier's quota.
            let mut replaces = false;
            if let WireMessage::Offer(offer) = &s.message {
                let key = (offer.body.supplier, offer.body.hardware_fingerprint);
                let stored = match self.store.offer_sequence(&key.0, &key.1) {
                    Ok(seq) => seq,
                    Err(err) => {
                        tracing::warn!(%err, "ledger read failed during ingest");
                        set(&mut outcomes, s.index, Outcome::Ignore("store_error"));
                        continue;
                    }
                };
                let in_batch = newest_offer.get(&key).map(|(seq, _)| *seq);
                replaces = stored.is_some() || in_batch.is_some();
                let newest = stored.max(in_batch);
                if newest.is_some_and(|n| offer.body.sequence <= n) {
                    // An older or equal re-publication: a replay of old state.
                    set(&mut outcomes, s.index, Outcome::Ignore("stale"));
                    continue;
                }
                if let Some((_, older)) =
                    newest_offer.insert(key, (offer.body.sequence, accepted.len()))
                {
                    // A newer offer for the same devices in the same batch
                    // replaces the older one before anything is written.
                    if let (Some(old), Some(index)) =
                        (accepted.get_mut(older), accepted_index.get(older))
                    {
                        old.bytes.clear();
                        set(&mut outcomes, *index, Outcome::Ignore("stale"));
                    }
                }
            }
            if let Some(over) = self.over_quota(&s.message, replaces, &mut by_author) {
                set(&mut outcomes, s.index, over);
                continue;
            }
            accepted_index.push(s.index);
            accepted.push(AcceptedMessage {
                id: s.id,
                bytes: s.bytes,
                message: s.message,
            });
        }
        let mut writes: Vec<AcceptedMessage> = Vec::with_capacity(accepted.len());
        let mut write_index: Vec<usize> = Vec::with_capacity(accepted.len());
        for (message, index) in accepted.into_iter().zip(accepted_index) {
            if !message.bytes.is_empty() {
                writes.push(message);
                write_index.push(index);
            }
        }
        // Stage 4: one write for the whole batch.
        let outcome = match self.store.store(&writes) {
            Ok(()) => Outcome::Accept,
            Err(err) => {
                tracing::warn!(%err, "ledger write failed during ingest");
                Outcome::Ignore("store_error")
            }
        };
        for index in write_index {
            set(&mut outcomes, index, outcome);
        }
        if outcome == Outcome::Accept {
            // The remembered counts take in what the batch stored.
            let mut counts = self
                .quota_counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (key, n) in by_author {
                if let Some(count) = counts.get_mut(&key) {
                    *count = count.saturating_add(n);
                }
            }
        } else {
            writes.clear();
        }
        (outcomes, writes)
    }
}

impl Ingest {
    /// `None` unless `message` is usage evidence that compaction has done
    /// with (specs/protocol.md 9.1): of a lease whose evidence this node
    /// compacted, or older than a compacted lease's tombstone is kept; or
    /// a certificate of a lease this node keeps none of (not its own,
    /// compacted or that old). A replay of what is done with, not held
    /// against the peer that forwards it.
    fn after_compaction(&self, message: &WireMessage, clock: &Clock) -> Option<Outcome> {
        if let Some((lease, supplier, customer, created_at)) =
            rigmesh_ledger::market::lease_parties(message)
        {
            return match self.store.certificate_refused(
                message.kind(),
                &lease,
                (&supplier, &customer),
                created_at,
                clock.now,
            ) {
                Ok(None) => None,
                Ok(Some(reason)) => Some(Outcome::Ignore(reason)),
                Err(err) => {
                    tracing::warn!(%err, "ledger read failed during ingest");
                    Some(Outcome::Ignore("store_error"))
                }
            };
        }
        let (lease, created_at) = match message {
            WireMessage::UsageAttestation(m) => (m.body.lease, m.body.created_at),
            WireMessage::UsageAck(m) => (m.body.lease, m.body.created_at),
            WireMessage::UsageDispute(m) => (m.body.lease, m.body.created_at),
            WireMessage::LeaseTermination(m) => (m.body.lease, m.body.created_at),
            _ => return None,
        };
        if created_at.0.saturating_add(TOMBSTONE_KEPT_MS) < clock.now.0 {
            return Some(Outcome::Ignore("too_old"));
        }
        match self.store.lease_compacted(&lease) {
            Ok(false) => None,
            Ok(true) => Some(Outcome::Ignore("compacted")),
            Err(err) => {
                tracing::warn!(%err, "ledger read failed during ingest");
                Some(Outcome::Ignore("store_error"))
            }
        }
    }

    /// `None` when `message` fits its author's quota (counting what this
    /// batch already took, in `by_author`), else the verdict: an offer,
    /// bid, binding or alert beyond what one author may have stored is
    /// not kept and not forwarded. Coordinators are not held to it, and
    /// an offer that replaces a live one takes nothing more.
    fn over_quota(
        &self,
        message: &WireMessage,
        replaces: bool,
        by_author: &mut HashMap<(Kind, PublicKey), usize>,
    ) -> Option<Outcome> {
        let kind = message.kind();
        let (Some(quota), Some(author)) = (quota_of(kind), quota_author(message)) else {
            return None;
        };
        if replaces
            || self
                .coordinators
                .as_ref()
                .is_some_and(|set| set.contains(&author))
        {
            return None;
        }
        let in_batch = by_author.entry((kind, author)).or_default();
        let mut counts = self
            .quota_counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let remembered = counts
            .get(&(kind, author))
            .copied()
            .filter(|n| n.saturating_add(*in_batch).saturating_add(QUOTA_MARGIN) < quota);
        let stored = match remembered {
            Some(n) => n,
            None => match self.store.author_count(kind, &author, quota) {
                Ok(n) => {
                    if counts.len() >= QUOTA_COUNTS_KEPT {
                        counts.clear();
                    }
                    // The batch's own messages are not in the store yet.
                    counts.insert((kind, author), n);
                    n
                }
                Err(err) => {
                    tracing::warn!(%err, "ledger read failed during ingest");
                    return Some(Outcome::Ignore("store_error"));
                }
            },
        };
        if stored.saturating_add(*in_batch) >= quota {
            return Some(Outcome::Ignore("over_quota"));
        }
        *in_batch += 1;
        None
    }
}

fn set(outcomes: &mut [Outcome], index: usize, outcome: Outcome) {
    if let Some(slot) = outcomes.get_mut(index) {
        *slot = outcome;
    }
}

/// Where an item came from and when, for its verdict.
type Origin = (PeerId, Option<MessageId>, Instant);

/// The ingest task: takes up to `batch` queued items at a time, checks
/// them and commits them on blocking threads (the next batch is checked
/// while one commits), and sends the verdicts back to the swarm task. Ends
/// when the queue closes.
pub async fn run(
    ingest: Ingest,
    mut queue: mpsc::Receiver<IngestItem>,
    verdicts: mpsc::Sender<Vec<Verdict>>,
    accepted: tokio::sync::broadcast::Sender<AcceptedMessage>,
    batch: usize,
    metrics: NetworkMetrics,
) {
    let ingest = Arc::new(ingest);
    // One checked batch waits for the commit at most: the queue in front
    // stays the one place that holds (and drops) what is not taken yet.
    let (checked_tx, mut checked_rx) = mpsc::channel::<(Vec<Origin>, Checked)>(1);
    let checker = {
        let ingest = ingest.clone();
        tokio::spawn(async move {
            loop {
                let mut items = Vec::with_capacity(batch.max(1));
                if queue.recv_many(&mut items, batch.max(1)).await == 0 {
                    return;
                }
                metrics
                    .ingest_queue_depth
                    .set(i64::try_from(queue.len()).unwrap_or(i64::MAX));
                let ingest = ingest.clone();
                let checked = tokio::task::spawn_blocking(move || {
                    let checked = ingest.check(&items, &Clock::system());
                    let origins: Vec<Origin> = items
                        .into_iter()
                        .map(|item| (item.source, item.message_id, item.received))
                        .collect();
                    (origins, checked)
                })
                .await;
                let Ok(checked) = checked else {
                    tracing::error!("an ingest batch's checks panicked");
                    return;
                };
                if checked_tx.send(checked).await.is_err() {
                    return;
                }
            }
        })
    };
    while let Some((origins, checked)) = checked_rx.recv().await {
        let ingest = ingest.clone();
        let committed =
            tokio::task::spawn_blocking(move || ingest.commit(checked, &Clock::system())).await;
        let Ok((outcomes, stored)) = committed else {
            tracing::error!("an ingest batch's commit panicked");
            break;
        };
        for message in stored {
            // Subscribers that fall behind lose old messages (bounded),
            // and a send with no subscriber is not an error worth a log.
            let _ = accepted.send(message);
        }
        let out: Vec<Verdict> = origins
            .into_iter()
            .zip(outcomes)
            .map(|((source, message_id, received), outcome)| Verdict {
                source,
                message_id,
                outcome,
                received,
            })
            .collect();
        if verdicts.send(out).await.is_err() {
            break;
        }
    }
    checker.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigmesh_ledger::MarketStore;
    use rigmesh_protocol::{samples, Keypair, Signed, UnixMillis};

    /// `message` as it arrives by gossip, on its kind's topic.
    pub(super) fn item(message: &WireMessage) -> IngestItem {
        let rigmesh_protocol::Carrier::Topic(topic) = message.kind().carrier() else {
            panic!("{} is not gossiped", message.kind());
        };
        IngestItem {
            source: PeerId::random(),
            message_id: None,
            topic: topic.into(),
            data: GossipFrame::encode(message.kind(), &message.to_bytes().unwrap()),
            received: Instant::now(),
        }
    }

    /// An attestation of `lease` made at `at`.
    fn attestation(lease: Id, seq: u64, at: UnixMillis) -> WireMessage {
        let mut body = samples::usage_attestation_at(at.minus_ms(120_000))
            .unwrap()
            .body;
        body.lease = lease;
        body.seq = seq;
        body.prev = if seq == 0 { Id::ZERO } else { Id([1; 32]) };
        body.created_at = at;
        WireMessage::UsageAttestation(Signed::sign(body, &samples::supplier()).unwrap())
    }

    /// The final settlement certificate of `lease`, made at `at` by the
    /// sample supplier and customer, certified by three of the four
    /// sample coordinators.
    fn final_settlement(lease: Id, at: UnixMillis) -> WireMessage {
        let mut request = samples::settlement_request_at(at).unwrap().body;
        request.lease = lease;
        request.final_settlement = true;
        let request = Signed::sign(request, &samples::supplier()).unwrap();
        let votes: Vec<_> = samples::coordinators()
            .iter()
            .take(3)
            .map(|key| {
                Signed::sign(
                    rigmesh_protocol::Certificate::vote_for(&request, key.public()).unwrap(),
                    key,
                )
                .unwrap()
            })
            .collect();
        WireMessage::SettlementCertificate(
            rigmesh_protocol::Certificate::assemble(request, &votes).unwrap(),
        )
    }

    fn cert_item(certificate: &WireMessage) -> IngestItem {
        let mut item = item(certificate);
        item.topic = rigmesh_protocol::kind::TOPIC_CERTS.into();
        item
    }

    /// A certificate's votes are checked in the batch with every other
    /// signature: a broken vote fails the batch's equation, and the
    /// checks one by one that follow condemn its certificate alone, so
    /// everything else of the batch is taken. (That the votes were in the
    /// batch shows in the ingest bench's counts: none checked one by one.)
    #[test]
    fn a_broken_vote_in_a_batch_condemns_only_its_certificate() {
        let store = Arc::new(MarketStore::temporary().unwrap());
        let ingest = Ingest::new(store.clone(), Some(samples::coordinator_set().unwrap()));
        let now = UnixMillis::now();
        let clock = Clock::at(now);
        let offer = |n: u8| {
            let key = Keypair::from_seed([n; 32]);
            let mut body = samples::offer_at(now).unwrap().body;
            body.supplier = key.public();
            item(&WireMessage::Offer(Signed::sign(body, &key).unwrap()))
        };
        let mut items: Vec<IngestItem> = (1..=40).map(offer).collect();
        let mut broken = final_settlement(Id([4; 32]), now);
        if let WireMessage::SettlementCertificate(c) = &mut broken {
            c.votes[2].signature.0[5] ^= 1;
        }
        items.insert(10, cert_item(&final_settlement(Id([3; 32]), now)));
        items.insert(20, cert_item(&broken));
        let outcomes = ingest.process(&items, &clock);
        for (n, outcome) in outcomes.iter().enumerate() {
            let expected = if n == 20 {
                Outcome::Reject("bad_signature")
            } else {
                Outcome::Accept
            };
            assert_eq!(*outcome, expected, "item {n}");
        }
        assert_eq!(store.count(Kind::Offer), 40);
        assert_eq!(store.count(Kind::SettlementCertificate), 1);
    }

    #[test]
    fn a_certificate_the_node_holds_is_not_checked_again_one_it_does_not_hold_is() {
        let store = Arc::new(MarketStore::temporary().unwrap());
        let ingest = Ingest::new(store.clone(), Some(samples::coordinator_set().unwrap()));
        let now = UnixMillis::now();
        let clock = Clock::at(now);
        // A copy of `certificate` whose first vote no longer verifies.
        let broken = |certificate: &WireMessage| {
            let WireMessage::SettlementCertificate(mut c) = certificate.clone() else {
                panic!("a settlement certificate");
            };
            c.votes[0].signature.0[0] ^= 1;
            WireMessage::SettlementCertificate(c)
        };
        let held = final_settlement(Id([1; 32]), now);
        assert_eq!(
            ingest.process(&[cert_item(&held)], &clock),
            vec![Outcome::Accept]
        );
        // Again, as catch-up sync or another peer brings it: ignored before
        // its votes are checked, so a broken copy is no different.
        assert_eq!(
            ingest.process(&[cert_item(&held), cert_item(&broken(&held))], &clock),
            vec![Outcome::Ignore("duplicate"), Outcome::Ignore("duplicate")]
        );
        // A certificate it does not hold has its votes checked.
        let new = final_settlement(Id([2; 32]), now);
        let outcomes = ingest.process(&[cert_item(&broken(&new))], &clock);
        assert!(
            matches!(outcomes[..], [Outcome::Reject(_)]),
            "a broken vote is refused: {outcomes:?}"
        );
        assert_eq!(
            ingest.process(&[cert_item(&new)], &clock),
            vec![Outcome::Accept]
        );
        assert_eq!(store.count(Kind::SettlementCertificate), 2);
    }

    #[test]
    fn a_coordinator_does_not_check_again_the_bytes_its_books_checked() {
        let set = samples::coordinator_set().unwrap();
        let checked = Arc::new(CheckedCertificates::new(set.clone(), 64));
        let store = Arc::new(MarketStore::temporary().unwrap());
        let ingest = Ingest::new(store.clone(), None).checking_once(Some(checked.clone()));
        let now = UnixMillis::now();
        let clock = Clock::at(now);
        // The certificate handed to the coordinator: its books check it.
        let handed = final_settlement(Id([1; 32]), now);
        let WireMessage::SettlementCertificate(c) = &handed else {
            panic!("a settlement certificate");
        };
        checked.verify(c, &set).unwrap();
        // Its gossiped copy, byte for byte the same: stored (to forward
        // and serve) without a second check.
        assert_eq!(
            ingest.process(&[cert_item(&handed)], &clock),
            vec![Outcome::Accept]
        );
        assert_eq!(checked.skipped(), 1);
        // A copy of another certificate with a broken vote is checked and
        // refused, every time.
        let mut broken = final_settlement(Id([2; 32]), now);
        if let WireMessage::SettlementCertificate(c) = &mut broken {
            c.votes[0].signature.0[0] ^= 1;
        }
        for _ in 0..2 {
            let outcomes = ingest.process(&[cert_item(&broken)], &clock);
            assert!(matches!(outcomes[..], [Outcome::Reject(_)]), "{outcomes:?}");
        }
        // A certificate gossiped first is checked here, and the books'
        // check of the same bytes handed over later is skipped.
        let gossiped = final_settlement(Id([3; 32]), now);
        assert_eq!(
            ingest.process(&[cert_item(&gossiped)], &clock),
            vec![Outcome::Accept]
        );
        assert_eq!(checked.skipped(), 1);
        let WireMessage::SettlementCertificate(c) = &gossiped else {
            panic!("a settlement certificate");
        };
        checked.verify(c, &set).unwrap();
        assert_eq!(checked.skipped(), 2);
        assert_eq!(store.count(Kind::SettlementCertificate), 2);
    }

    #[test]
    fn certificates_of_leases_a_node_drops_are_ignored_once_dropped_or_that_old() {
        let set = samples::coordinator_set().unwrap();
        let now = UnixMillis::now();
        let clock = Clock::at(now);
        let (settled, other) = (Id([1; 32]), Id([2; 32]));
        let certificate = final_settlement(settled, now);
        let ancient = final_settlement(other, now.minus_ms(TOMBSTONE_KEPT_MS + 3_600_000));
        use rigmesh_ledger::CertificatesKept;
        // A node party to neither lease, a store that keeps every lease's
        // certificates, and a coordinator's (its books keep them).
        let kinds = [
            CertificatesKept::Of(vec![PublicKey([9; 32])]),
            CertificatesKept::All,
            CertificatesKept::Books,
        ];
        for kept in kinds {
            let store = Arc::new(MarketStore::temporary().unwrap());
            store.keep_certificates(kept.clone());
            if kept == CertificatesKept::Books {
                store.keep_unapplied();
            }
            let ingest = Ingest::new(store.clone(), Some(set.clone()));
            assert_eq!(
                ingest.process(&[cert_item(&certificate)], &clock),
                vec![Outcome::Accept]
            );
            let compact = || {
                store
                    .compact_settled(&set, None, now, rigmesh_ledger::EvidenceGrace::all(0), 100)
                    .unwrap()
            };
            if kept == CertificatesKept::Books {
                // Not before the books have had it.
                assert_eq!(compact().compacted, 0);
                store
                    .applied(Kind::SettlementCertificate, &certificate.id().unwrap())
                    .unwrap();
            }
            assert_eq!(compact().compacted, 1, "{kept:?}");
            let outcomes = ingest.process(&[cert_item(&certificate), cert_item(&ancient)], &clock);
            let stored = store.count(Kind::SettlementCertificate);
            match kept {
                CertificatesKept::All => {
                    assert_eq!(
                        outcomes,
                        vec![Outcome::Ignore("duplicate"), Outcome::Accept]
                    );
                    assert_eq!(stored, 2);
                }
                // Dropped with the lease's evidence, and not taken again;
                // a coordinator takes a certificate of any age.
                CertificatesKept::Books => {
                    assert_eq!(
                        outcomes,
                        vec![Outcome::Ignore("compacted"), Outcome::Accept]
                    );
                    assert_eq!(stored, 1);
                }
                CertificatesKept::Of(_) => {
                    assert_eq!(
                        outcomes,
                        vec![Outcome::Ignore("compacted"), Outcome::Ignore("too_old")]
                    );
                    assert_eq!(stored, 0);
                }
            }
        }
    }

    #[test]
    fn evidence_of_a_compacted_lease_or_older_than_its_tombstone_is_ignored_not_stored() {
        let store = Arc::new(MarketStore::temporary().unwrap());
        let set = samples::coordinator_set().unwrap();
        let ingest = Ingest::new(store.clone(), Some(set.clone()));
        let now = UnixMillis::now();
        let clock = Clock::at(now);
        let (settled, running) = (Id([1; 32]), Id([2; 32]));
        let first = attestation(settled, 0, now);
        assert_eq!(
            ingest.process(&[item(&first)], &clock),
            vec![Outcome::Accept]
        );
        // The lease settles finally; the node compacts it.
        let certificate = final_settlement(settled, now);
        assert_eq!(
            ingest.process(&[cert_item(&certificate)], &clock),
            vec![Outcome::Accept]
        );
        let done = store
            .compact_settled(&set, None, now, rigmesh_ledger::EvidenceGrace::all(0), 100)
            .unwrap();
        assert_eq!(done.removed, 1);

        // A replay of its attestation, and a later one, are ignored; a
        // running lease's attestation is taken; one made longer ago than a
        // tombstone is kept is ignored whatever its lease.
        let later = attestation(settled, 1, now);
        let fresh = attestation(running, 0, now);
        let ancient = attestation(running, 1, now.minus_ms(TOMBSTONE_KEPT_MS + 1));
        let outcomes = ingest.process(
            &[item(&first), item(&later), item(&fresh), item(&ancient)],
            &clock,
        );
        assert_eq!(
            outcomes,
            vec![
                Outcome::Ignore("compacted"),
                Outcome::Ignore("compacted"),
                Outcome::Accept,
                Outcome::Ignore("too_old"),
            ]
        );
        assert_eq!(store.count(Kind::UsageAttestation), 1);
        assert!(store
            .contains(Kind::UsageAttestation, &fresh.id().unwrap())
            .unwrap());
    }
}

#[cfg(test)]
mod quota_tests {
    use super::*;
    use rigmesh_ledger::MarketStore;
    use rigmesh_protocol::{samples, Keypair, Signed, UnixMillis};

    /// The sample offer, of `key`'s device set `n`, made at `now`.
    fn offer(key: &Keypair, n: usize, now: UnixMillis, expires_at: UnixMillis) -> IngestItem {
        let mut body = samples::offer_at(now).unwrap().body;
        body.supplier = key.public();
        body.hardware_fingerprint = Id::hardware_fingerprint(&[format!("GPU-{n}")]);
        body.expires_at = expires_at;
        super::tests::item(&WireMessage::Offer(Signed::sign(body, key).unwrap()))
    }

    /// A device set's live-offer entry outlives the offer it names by a
    /// day: an older offer replayed meanwhile is stale, and by the time
    /// the entry goes the older offer has expired and the time rule
    /// refuses it, so a replaced offer never comes back.
    #[test]
    fn an_older_offer_of_a_device_set_never_comes_back_after_its_successor_is_pruned() {
        use rigmesh_ledger::market::OFFER_SLOT_KEPT_MS;
        use rigmesh_protocol::messages::market::OFFER_MAX_TTL_MS;
        let store = Arc::new(MarketStore::temporary().unwrap());
        let ingest = Ingest::new(store.clone(), None);
        let key = Keypair::from_seed([0x32; 32]);
        let now = UnixMillis::now();
        let body = samples::offer_at(now).unwrap().body;
        let devices = body.hardware_fingerprint;
        let signed = |sequence: u64, expires_at: UnixMillis| {
            let mut body = body.clone();
            body.supplier = key.public();
            body.sequence = sequence;
            body.expires_at = expires_at;
            super::tests::item(&WireMessage::Offer(Signed::sign(body, &key).unwrap()))
        };
        let older = signed(1, now.plus_ms(OFFER_MAX_TTL_MS));
        let newer = signed(2, now.plus_ms(600_000));
        let at = |t: UnixMillis, item: &IngestItem| {
            ingest.process(std::slice::from_ref(item), &Clock::at(t))
        };
        assert_eq!(at(now, &older), [Outcome::Accept]);
        assert_eq!(at(now, &newer), [Outcome::Accept]);
        // The newer offer expires and is pruned; the older one, replayed
        // within its own lifetime, is still refused.
        let later = now.plus_ms(1_200_000);
        assert_eq!(store.prune_expired(later, usize::MAX).unwrap(), 1);
        assert_eq!(at(later, &older), [Outcome::Ignore("stale")]);
        assert_eq!(
            store.offer_sequence(&key.public(), &devices).unwrap(),
            Some(2)
        );
        // A day after the newer one expired its entry goes, and the older
        // offer is past its expiry by then.
        let day_after = now.plus_ms(600_000 + OFFER_SLOT_KEPT_MS + 1);
        assert_eq!(store.prune_expired(day_after, usize::MAX).unwrap(), 0);
        assert_eq!(store.offer_sequence(&key.public(), &devices).unwrap(), None);
        assert_eq!(at(day_after, &older), [Outcome::Reject("expired")]);
        assert_eq!(store.count(Kind::Offer), 0);
    }

    /// The quota holds across batches although most batches are judged on
    /// the remembered count, and room made by expiry is found again.
    #[test]
    fn an_author_s_quota_holds_across_batches_and_frees_up_as_offers_expire() {
        let store = Arc::new(MarketStore::temporary().unwrap());
        let ingest = Ingest::new(store.clone(), None);
        let key = Keypair::from_seed([0x31; 32]);
        let quota = quota_of(Kind::Offer).unwrap();
        let now = UnixMillis::now();
        let clock = Clock::at(now);
        // Half of them expire in a minute.
        let items: Vec<IngestItem> = (0..quota + 20)
            .map(|n| {
                let expires = if n % 2 == 0 { 60_000 } else { 3_600_000 };
                offer(&key, n, now, now.plus_ms(expires))
            })
            .collect();
        // Taken in `size` messages at a time, as ingest batches them.
        let accepted = |items: &[IngestItem], size: usize, clock: &Clock| -> usize {
            items
                .chunks(size)
                .flat_map(|chunk| ingest.process(chunk, clock))
                .filter(|o| *o == Outcome::Accept)
                .count()
        };
        assert_eq!(accepted(&items, 7, &clock), quota);
        let count = || {
            store
                .author_count(Kind::Offer, &key.public(), usize::MAX)
                .unwrap()
        };
        assert_eq!(count(), quota);

        // The short-lived half expires and is pruned: new device sets get
        // in again, up to the quota and no further.
        let later = now.plus_ms(120_000);
        let pruned = store.prune_expired(later, usize::MAX).unwrap();
        assert_eq!(pruned, quota / 2);
        let clock = Clock::at(later);
        let fresh: Vec<IngestItem> = (1_000..1_000 + quota)
            .map(|n| offer(&key, n, later, later.plus_ms(3_600_000)))
            .collect();
        assert_eq!(accepted(&fresh, 5, &clock), quota / 2);
        assert_eq!(count(), quota);
    }
}
