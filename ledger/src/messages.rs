//! Signed messages the ledger keeps as evidence and receipts: bids, lease
//! agreements, usage attestations (by lease and sequence), certificates
//! (by kind and subject) and alerts (by time). Each is stored as its
//! canonical bytes under a typed key; reading one back decodes it with the
//! protocol codec, and bytes that no longer decode are reported as
//! corruption.
//!
//! A key holds one message: storing different bytes under a key already
//! taken (two attestations claiming the same window, a second certificate
//! for one subject) is not a write but a [`PutOutcome::Conflict`], which
//! the caller may keep as evidence elsewhere.

use std::ops::Bound;

use rigmesh_protocol::{
    Alert, Bid, Certifiable, Certificate, Id, Kind, LeaseAgreement, Signed, UnixMillis,
    UsageAttestation,
};

use crate::audit::Action;
use crate::codec::StoredMessage;
use crate::columns::{Alerts, Attestations, Bids, Certificates, Column, Leases, TypedStore};
use crate::error::{Error, Result};
use crate::keys::{Key, KeyReader};
use crate::ledger::{Cause, Ledger, MAX_PAGE};
use crate::store::{Batch, Direction, Store};

/// Which certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CertificateKind {
    /// An escrow certificate.
    Escrow,
    /// A settlement certificate.
    Settlement,
    /// A withdrawal certificate.
    Withdrawal,
    /// A deposit (signed by the coordinator set's admin key).
    Deposit,
    /// An escrow release certificate (a final settlement the customer
    /// asked for).
    Release,
    /// A dispute resolution certificate.
    Resolution,
}

impl CertificateKind {
    /// The kind of certificate a certified message becomes.
    pub fn of(kind: Kind) -> Result<Self> {
        match kind {
            Kind::EscrowCertificate => Ok(CertificateKind::Escrow),
            Kind::SettlementCertificate => Ok(CertificateKind::Settlement),
            Kind::ReleaseCertificate => Ok(CertificateKind::Release),
            Kind::ResolutionCertificate => Ok(CertificateKind::Resolution),
            other => Err(Error::corrupt("certificate kind", other.to_string())),
        }
    }

    /// Its key tag.
    pub fn tag(self) -> u8 {
        match self {
            CertificateKind::Escrow => 1,
            CertificateKind::Settlement => 2,
            CertificateKind::Withdrawal => 3,
            CertificateKind::Deposit => 4,
            CertificateKind::Release => 5,
            CertificateKind::Resolution => 6,
        }
    }
}

impl Key for CertificateKind {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.push(self.tag());
    }
    fn read_key(input: &mut KeyReader<'_>) -> Result<Self> {
        match u8::read_key(input)? {
            1 => Ok(CertificateKind::Escrow),
            2 => Ok(CertificateKind::Settlement),
            3 => Ok(CertificateKind::Withdrawal),
            4 => Ok(CertificateKind::Deposit),
            5 => Ok(CertificateKind::Release),
            6 => Ok(CertificateKind::Resolution),
            tag => Err(Error::corrupt(
                "certificate key",
                format!("unknown kind {tag}"),
            )),
        }
    }
}

/// What storing a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored.
    Stored,
    /// The same bytes were already stored; nothing written.
    Unchanged,
    /// Other bytes are stored under the same key; nothing written.
    Conflict,
}

fn decode<T>(
    what: &'static str,
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> rigmesh_protocol::Result<T>,
) -> Result<T> {
    decode(bytes).map_err(|e| Error::corrupt(what, e.to_string()))
}

impl<S: Store> Ledger<S> {
    /// Stores `bytes` under `key` of column `C` unless the key is taken.
    fn put_message<C>(
        &self,
        key: &C::Key,
        bytes: Vec<u8>,
        action: Action,
        detail: &str,
        cause: &Cause,
    ) -> Result<PutOutcome>
    where
        C: Column<Value = StoredMessage>,
    {
        let guard = self.lock();
        if let Some(existing) = self.store().get_in::<C>(key)? {
            return Ok(if existing.0 == bytes {
                PutOutcome::Unchanged
            } else {
                PutOutcome::Conflict
            });
        }
        let mut batch = Batch::new();
        batch.put_in::<C>(key, &StoredMessage(bytes))?;
        self.commit(guard, batch, action, detail, cause)?;
        Ok(PutOutcome::Stored)
    }

    /// Stores a bid.
    pub fn put_bid(&self, bid: &Signed<Bid>, cause: &Cause) -> Result<PutOutcome> {
        let id = bid.id()?;
        self.put_message::<Bids>(
            &id,
            bid.to_bytes()?,
            Action::BidStored,
            &format!("bid {id}"),
            cause,
        )
    }

    /// A stored bid.
    pub fn bid(&self, id: &Id) -> Result<Option<Signed<Bid>>> {
        self.store()
            .get_in::<Bids>(id)?
            .map(|m| decode("bid", &m.0, Signed::<Bid>::from_bytes))
            .transpose()
    }

    /// Stores a lease agreement under its id (the lease id), returned.
    pub fn put_lease(
        &self,
        agreement: &Signed<LeaseAgreement>,
        cause: &Cause,
    ) -> Result<(Id, PutOutcome)> {
        let id = agreement.id()?;
        let outcome = self.put_message::<Leases>(
            &id,
            agreement.to_bytes()?,
            Action::LeaseStored,
            &format!("lease {id}"),
            cause,
        )?;
        Ok((id, outcome))
    }

    /// A stored lease agreement.
    pub fn lease(&self, id: &Id) -> Result<Option<Signed<LeaseAgreement>>> {
        self.store()
            .get_in::<Leases>(id)?
            .map(|m| {
                decode(
                    "lease agreement",
                    &m.0,
                    Signed::<LeaseAgreement>::from_bytes,
                )
            })
            .transpose()
    }

    /// Stores a usage attestation under its lease and sequence.
    pub fn put_attestation(
        &self,
        attestation: &Signed<UsageAttestation>,
        cause: &Cause,
    ) -> Result<PutOutcome> {
        let key = (attestation.body.lease, attestation.body.seq);
        self.put_message::<Attestations>(
            &key,
            attestation.to_bytes()?,
            Action::AttestationStored,
            &format!("lease {} window {}", key.0, key.1),
            cause,
        )
    }

    /// The attestation of `lease` at `seq`.
    pub fn attestation(&self, lease: &Id, seq: u64) -> Result<Option<Signed<UsageAttestation>>> {
        self.store()
            .get_in::<Attestations>(&(*lease, seq))?
            .map(|m| decode("attestation", &m.0, Signed::<UsageAttestation>::from_bytes))
            .transpose()
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) attestations of `lease` from
    /// `from_seq` on, in sequence order.
    pub fn attestations(
        &self,
        lease: &Id,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Signed<UsageAttestation>>> {
        self.store()
            .rows_in::<Attestations>(
                Bound::Included(&(*lease, from_seq)),
                Bound::Included(&(*lease, u64::MAX)),
                Direction::Forward,
            )
            .take(limit.min(MAX_PAGE))
            .map(|row| {
                let (_, m) = row?;
                decode("attestation", &m.0, Signed::<UsageAttestation>::from_bytes)
            })
            .collect()
    }

    /// Stores a certificate (verified by the caller) under its subject.
    pub fn put_certificate<T>(
        &self,
        certificate: &Certificate<T>,
        cause: &Cause,
    ) -> Result<(Id, PutOutcome)>
    where
        T: Certifiable + bincode::Encode,
    {
        let kind = CertificateKind::of(T::CERTIFICATE)?;
        let subject = certificate.subject()?;
        let outcome = self.put_message::<Certificates>(
            &(kind, subject),
            certificate.to_bytes()?,
            Action::CertificateStored,
            &format!("{} for {subject}", T::CERTIFICATE),
            cause,
        )?;
        Ok((subject, outcome))
    }

    /// The certificate of `subject` of type `T`.
    pub fn certificate<T>(&self, subject: &Id) -> Result<Option<Certificate<T>>>
    where
        T: Certifiable + bincode::Decode<()>,
    {
        let kind = CertificateKind::of(T::CERTIFICATE)?;
        self.store()
            .get_in::<Certificates>(&(kind, *subject))?
            .map(|m| decode("certificate", &m.0, Certificate::<T>::from_bytes))
            .transpose()
    }

    /// Stores an alert under its time and id.
    pub fn put_alert(&self, alert: &Signed<Alert>, cause: &Cause) -> Result<PutOutcome> {
        let id = alert.id()?;
        self.put_message::<Alerts>(
            &(alert.body.created_at, id),
            alert.to_bytes()?,
            Action::AlertStored,
            &format!("alert {id} {}", alert.body.rule),
            cause,
        )
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) alerts raised at or after
    /// `since`, oldest first.
    pub fn alerts(&self, since: UnixMillis, limit: usize) -> Result<Vec<Signed<Alert>>> {
        self.store()
            .rows_in::<Alerts>(
                Bound::Included(&(since, Id::ZERO)),
                Bound::Unbounded,
                Direction::Forward,
            )
            .take(limit.min(MAX_PAGE))
            .map(|row| {
                let (_, m) = row?;
                decode("alert", &m.0, Signed::<Alert>::from_bytes)
            })
            .collect()
    }
}
