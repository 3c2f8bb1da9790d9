//! Migrations between schema versions. Each step takes the store from one
//! version to the next; its writes and the new version number land in one
//! atomic batch, so a crash mid-migration leaves either the old version
//! (and the step runs again) or the new one.
//!
//! Version 1 is the first release. A change to any key or record layout,
//! or a new column that must hold for what is already stored, adds a step
//! here and bumps [`crate::schema::SCHEMA_VERSION`]:
//!
//! - 1 → 2: the deposit references and the withdrawal destinations
//!   already used (specs/settlement.md 4.2 and 4.3), from the deposits and
//!   withdrawal certificates applied.
//! - 2 → 3: the indexes of open leases by customer and by supplier, from
//!   the lease books.
//! - 3 → 4: the index of open dispute cases, from the cases.
//! - 4 → 5: the leases finally settled whose vote locks and evidence are
//!   kept, from the lease books; their grace counts from the upgrade.

use crate::error::{Error, Result};
use crate::schema::version_write;
use crate::store::{Batch, Store};

/// One step from `from` to `from + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version it starts from.
    pub from: u32,
    /// What it changes, for the log.
    pub description: &'static str,
    /// Reads the store and returns the writes that upgrade it.
    pub run: fn(&dyn Store) -> Result<Batch>,
}

/// Every migration of this binary, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        from: 1,
        description: "deposit references and withdrawal destinations of what is applied",
        run: references_and_destinations,
    },
    Migration {
        from: 2,
        description: "open leases by customer and by supplier",
        run: open_lease_indexes,
    },
    Migration {
        from: 3,
        description: "open dispute cases",
        run: open_case_index,
    },
    Migration {
        from: 4,
        description: "closed leases whose vote locks and evidence are kept",
        run: closed_lease_index,
    },
];

/// 4 → 5: each closed lease that a coordinator kept vote locks or a
/// settled head for is listed as closed now, so that they are taken away
/// a grace after the upgrade.
fn closed_lease_index(store: &dyn Store) -> Result<Batch> {
    use crate::columns::{ClosedLeases, LeaseBooks, SettlementHeads, SettlementLocks, TypedStore};
    use crate::store::Direction;

    let now = rigmesh_protocol::UnixMillis::now();
    let mut batch = Batch::default();
    for row in store.rows::<LeaseBooks>(Direction::Forward) {
        let (lease, book) = row?;
        let voted = || -> Result<bool> {
            Ok(store.get_in::<SettlementHeads>(&lease)?.is_some()
                || store
                    .rows_with::<SettlementLocks, _>(&lease, Direction::Forward)
                    .next()
                    .is_some())
        };
        if book.closed && voted()? {
            let last = book.next_settlement_seq.saturating_sub(1);
            batch.put_in::<ClosedLeases>(&(now, lease), &last)?;
        }
    }
    Ok(batch)
}

/// 3 → 4: each dispute case without a resolution is listed as open.
fn open_case_index(store: &dyn Store) -> Result<Batch> {
    use crate::columns::{DisputeCases, OpenCases, TypedStore};
    use crate::store::Direction;

    let mut batch = Batch::default();
    for row in store.rows::<DisputeCases>(Direction::Forward) {
        let (key, case) = row?;
        if case.resolution.is_none() {
            batch.put_in::<OpenCases>(&key, &case.request)?;
        }
    }
    Ok(batch)
}

/// 2 → 3: each open lease book is listed under its customer and its
/// supplier.
fn open_lease_indexes(store: &dyn Store) -> Result<Batch> {
    use crate::columns::{LeaseBooks, OpenByCustomer, OpenBySupplier, TypedStore};
    use crate::store::Direction;

    let mut batch = Batch::default();
    for row in store.rows::<LeaseBooks>(Direction::Forward) {
        let (lease, book) = row?;
        if !book.closed {
            batch.put_in::<OpenByCustomer>(&(book.customer, lease), &book.order)?;
            batch.put_in::<OpenBySupplier>(&(book.supplier, lease), &book.order)?;
        }
    }
    Ok(batch)
}

/// 1 → 2: each applied deposit takes its `(admin, reference)` (the first
/// in id order when two share one), and each applied withdrawal records
/// its destination as used by its account.
fn references_and_destinations(store: &dyn Store) -> Result<Batch> {
    use rigmesh_protocol::{Deposit, Signed, WithdrawalCertificate};

    use crate::columns::{
        AppliedSubjects, Certificates, DepositReferences, KnownDestinations, TypedStore,
    };
    use crate::messages::CertificateKind;
    use crate::store::Direction;

    let mut batch = Batch::default();
    let mut taken = std::collections::BTreeSet::new();
    for row in store.rows_with::<Certificates, _>(&CertificateKind::Deposit, Direction::Forward) {
        let ((_, subject), bytes) = row?;
        if store.get_in::<AppliedSubjects>(&subject)?.is_none() {
            continue;
        }
        let deposit = Signed::<Deposit>::from_bytes(&bytes.0)?;
        let key = crate::review::reference_key(&deposit.body.admin, &deposit.body.reference);
        if taken.insert(key) {
            batch.put_in::<DepositReferences>(&key, &subject)?;
        }
    }
    for row in store.rows_with::<Certificates, _>(&CertificateKind::Withdrawal, Direction::Forward)
    {
        let ((_, subject), bytes) = row?;
        if store.get_in::<AppliedSubjects>(&subject)?.is_none() {
            continue;
        }
        let w = WithdrawalCertificate::from_bytes(&bytes.0)?.message.body;
        let key = (w.account, crate::review::destination_key(&w.destination));
        batch.put_in::<KnownDestinations>(&key, &subject)?;
    }
    Ok(batch)
}

/// Runs the steps of `list` from `found` up to `target`, flushing after
/// each. Fails, having changed nothing more, when a step is missing.
pub fn migrate(store: &dyn Store, found: u32, target: u32, list: &[Migration]) -> Result<()> {
    // The whole path must exist before the first step runs: a store left
    // half-way by a binary that cannot finish would be worse than refusing.
    let mut steps = Vec::new();
    for version in found..target {
        let step = list
            .iter()
            .find(|m| m.from == version)
            .ok_or(Error::NoMigration {
                found,
                supported: target,
            })?;
        steps.push(step);
    }
    let mut version = found;
    for step in steps {
        tracing::info!(
            from = version,
            step = step.description,
            "migrating ledger schema"
        );
        let mut batch = (step.run)(store)?;
        version += 1;
        version_write(&mut batch, version)?;
        store.write(&batch)?;
        store.flush()?;
    }
    Ok(())
}
